"""The one loop's knobs that decide whether a slow learner gets to learn: min_epochs,
smoothing, the weight average, learning-rate groups and per-part gradient norms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fusion.train import TrainConfig, WeightAverage, fit, make_loader, optimizer_groups
from tests.fusion.test_distributed import toy_collate, toy_model, toy_samples, validate


def _fit(cfg: TrainConfig, validate_fn=validate) -> tuple[nn.Module, object]:
    torch.manual_seed(cfg.seed)
    model = toy_model(modality_dropout=0.0)
    train = make_loader(toy_samples(22, 1), toy_collate, cfg, shuffle=True)
    val = make_loader(toy_samples(12, 2), toy_collate, cfg, shuffle=False)
    return model, fit(model, train, val, cfg, "binary", validate_fn)


def _constant(pred) -> dict[str, float]:
    return {"auroc": 0.5}  # never improves after the first epoch


def test_min_epochs_runs_before_early_stopping_may_stop() -> None:
    cfg = TrainConfig(max_epochs=12, patience=1, batch_size=8, n_boot=0)
    _, res = _fit(cfg, _constant)
    assert len(res.history) == 2 and res.stopped_early  # epoch 0 best, epoch 1 stale
    _, res = _fit(cfg.model_copy(update={"min_epochs": 7}), _constant)
    assert len(res.history) == 7 and res.stopped_early


def test_smoothing_averages_the_monitored_metric() -> None:
    values = iter([0.2, 1.0, 0.2, 0.2])

    def noisy(pred) -> dict[str, float]:
        return {"auroc": next(values)}

    cfg = TrainConfig(max_epochs=4, patience=10, batch_size=8, n_boot=0, smoothing=0.5)
    _, res = _fit(cfg, noisy)
    smoothed = [h["val_auroc_smoothed"] for h in res.history]
    assert smoothed == pytest.approx([0.2, 0.6, 0.4, 0.3])
    assert res.best_epoch == 1 and res.best_value == pytest.approx(0.6)


def test_weight_average_is_validated_and_kept() -> None:
    model = nn.Linear(3, 1)
    avg = WeightAverage(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    avg.update()
    with avg.applied():
        assert torch.allclose(model.weight, start + 1.0)  # halfway: decay 0.5
    assert torch.allclose(model.weight, start + 2.0)  # live weights restored
    cfg = TrainConfig(max_epochs=3, batch_size=8, n_boot=0, ema_decay=0.9)
    trained, res = _fit(cfg)
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in res.best_state.items())
    assert not math.isnan(res.history[-1]["val_auroc"])


def test_learning_rate_groups_and_grad_norms_per_part() -> None:
    model = toy_model(modality_dropout=0.0)
    model.encoders["a"].clinfuse_pretrained = True
    cfg = TrainConfig(lr=1e-3, lr_scale={"head": 2.0})
    groups = {g["lr_scale"]: g for g in optimizer_groups(model, cfg)}
    assert set(groups) == {0.1, 1.0, 2.0}
    pretrained = {id(p) for p in model.encoders["a"].parameters()}
    assert {id(p) for p in groups[0.1]["params"]} == pretrained
    assert groups[2.0]["lr"] == pytest.approx(2e-3)
    _, res = _fit(TrainConfig(max_epochs=1, batch_size=8, n_boot=0))
    parts = {k for k in res.history[0] if k.startswith("grad_norm/")}
    assert {"grad_norm/encoders.a", "grad_norm/encoders.b", "grad_norm/fusion",
            "grad_norm/head"} <= parts
    assert all(res.history[0][k] > 0 for k in parts)
