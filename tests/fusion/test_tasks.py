"""The Task registry: every task's head, probabilities, decisions, columns, labels and
metrics; no task-name comparisons outside fusion/tasks; contrastive learns retrieval
through the one training loop."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from fusion.config import HeadConfig, ModelConfig
from fusion.data import Batch
from fusion.model import build_model
from fusion.tasks import EXPECTED_TASKS, cohort_task, get_task, task_names
from fusion.train import Predictions, TrainConfig, fit, make_loader, predict, seed_everything
from modalities.cohort import CohortConfig
from modalities.errors import ConfigError, InputRejected, UnknownNameError
from tests.fusion.fusion_toys import VectorTokens, all_present, make_batch, make_encoders

REPO = Path(__file__).resolve().parents[2]
B = 8

# Per task: cohort settings, manifest label cells (good, bad), the outputs' trailing shape.
CASES: dict[str, dict[str, Any]] = {
    "binary": {"labels": ["y"], "good": {"y": "yes"}, "parsed": [1.0], "bad": {"y": "maybe"},
               "y": np.array([0, 1] * (B // 2), float), "shape": ()},
    "multiclass": {"labels": ["y"], "classes": ["a", "b", "c"], "good": {"y": "c"},
                   "parsed": [2.0], "bad": {"y": "d"},
                   "y": np.array([0, 1, 2, 0, 1, 2, 0, 1], float), "shape": (3,)},
    "multilabel": {"labels": ["u", "v"], "good": {"u": "1", "v": "false"}, "parsed": [1.0, 0.0],
                   "bad": {"u": "1", "v": "2"},
                   "y": np.array([[0, 1], [1, 0], [1, 1], [0, 0]] * (B // 4), float),
                   "shape": (2,)},
    "contrastive": {"labels": [], "good": {"y": "1"}, "parsed": None, "bad": None, "y": None,
                    "shape": (2,)},  # (towers, proj_dim) checked below
}
CASES["retrieval"] = CASES["contrastive"]  # one class under two names
EMBEDS = ("contrastive", "retrieval")


def _cohort(task: str) -> CohortConfig:
    c = CASES[task]
    return CohortConfig(modalities={"a": {}, "c": {}}, labels=c["labels"], task=task,
                        classes=c.get("classes"))


def _model(task: str):
    t, cfg = get_task(task), _cohort(task)
    opts = t.head_options(cfg, {"proj_dim": 4} if task in EMBEDS else {}, CASES[task]["y"],
                          True)
    mcfg = ModelConfig(d_model=16, dropout=0.0, head=HeadConfig(name=t.head, options=opts))
    return build_model(mcfg, make_encoders(["a", "c"]))


def test_registry_lists_expected_tasks() -> None:
    assert task_names() == EXPECTED_TASKS


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="valid names: binary, contrastive, multiclass"):
        get_task("regression")
    with pytest.raises(ConfigError, match="two or more label columns"):
        cohort_task(CohortConfig(modalities={"a": {}}, labels=["y"], task="multilabel"))
    with pytest.raises(ConfigError, match="exactly one label column"):
        cohort_task(CohortConfig(modalities={"a": {}}, labels=["y", "z"], task="binary"))


@pytest.mark.parametrize("task", EXPECTED_TASKS)
def test_label_parsing(task: str) -> None:
    t, cfg, c = get_task(task), _cohort(task), CASES[task]
    assert t.parse_labels(pd.Series(c["good"]), cfg) == c["parsed"]
    assert t.parse_labels(pd.Series({lab: "" for lab in cfg.labels}), cfg) is None
    if c["bad"] is not None:
        with pytest.raises(InputRejected, match="label column"):
            t.parse_labels(pd.Series(c["bad"]), cfg)


@pytest.mark.parametrize("task", EXPECTED_TASKS)
def test_head_outputs_decisions_columns_and_metrics(task: str) -> None:
    torch.manual_seed(0)
    t, cfg, c = get_task(task), _cohort(task), CASES[task]
    model = _model(task).eval()
    labels = None if c["y"] is None else t.batch_labels(
        np.asarray(c["y"], np.float32).reshape(B, -1))
    with torch.no_grad():
        out = model(make_batch(["a", "c"], B), all_present(["a", "c"], B), labels)
    assert torch.isfinite(out["loss"])
    rows = t.outputs(out).numpy()
    assert rows.shape[0] == B and rows.shape[1:2] == c["shape"][:1]
    if task in EMBEDS:  # embeddings: one unit vector per tower
        assert np.allclose(np.linalg.norm(rows, axis=-1), 1.0, atol=1e-5)
        with pytest.raises(ConfigError, match="embeddings"):
            t.probability_columns(None, 2)
        m = t.evaluate(None, rows, present={"a": np.ones(B, bool), "c": np.ones(B, bool)})
        assert {"recall@1", "recall@5", "recall@10", "median_rank", "a_to_c/recall@1",
                "c_to_a/median_rank", "n"} <= set(m)
        frame = t.output_frame(pd.RangeIndex(B), rows, ["a", "c"], 0.5)
        assert list(frame.columns) == ["embedding_a", "embedding_c"]
        return
    assert (rows >= 0).all() and (rows <= 1).all()
    if task == "multiclass":
        assert np.allclose(rows.sum(1), 1.0, atol=1e-5)
    prior = t.prior(c["y"])
    filled = t.fill_missing(rows[1:], np.array([False] + [True] * (B - 1)), prior)
    assert filled.shape == rows.shape and np.allclose(filled[0], prior)
    assert np.allclose(filled[1:], rows[1:])
    p2 = rows.reshape(B, -1)
    cols, names = t.probability_columns(t.label_names(cfg), p2.shape[1])
    decisions = t.decide(p2, 0.5, names)
    frame = t.output_frame(pd.RangeIndex(B), rows, t.label_names(cfg), 0.5)
    assert list(frame.columns[: len(cols)]) == cols and "prediction" in frame
    expected = {
        "binary": lambda: (["probability"], (p2[:, 0] >= 0.5).astype(int)),
        "multiclass": lambda: (["probability_a", "probability_b", "probability_c"],
                               p2.argmax(1)),
        "multilabel": lambda: (["probability_u", "probability_v"],
                               [",".join(n for n, p in zip(["u", "v"], r, strict=True)
                                         if p >= 0.5) for r in p2]),
    }[task]()
    assert cols == expected[0]
    assert list(decisions) == list(expected[1])
    metrics = t.evaluate(c["y"], rows, threshold=0.5, n_boot=20,
                         label_names=t.label_names(cfg))
    assert t.monitor in metrics and f"{t.monitor}_ci_low" in metrics
    table = t.prediction_table([f"p{i}" for i in range(B)], rows, c["y"], 0.5,
                               {"a": np.ones(B, bool)})
    assert table.columns[0] == "patient" and table.columns[-1] == "present_a"


def test_class_weights_and_head_options() -> None:
    y = np.array([0, 0, 0, 1], float)
    assert get_task("binary").class_weight_options(y) == {"pos_weight": 3.0}
    mc = get_task("multiclass").head_options(_cohort("multiclass"), {}, CASES["multiclass"]["y"],
                                             True)
    assert mc["num_classes"] == 3 and len(mc["class_weights"]) == 3
    ml = get_task("multilabel").head_options(_cohort("multilabel"), {}, None, True)
    assert ml == {"labels": ["u", "v"]}


# Comparisons with a registered task's name, e.g. ``task == "binary"``,
# ``cohort.task != "multilabel"``, ``"multiclass" == t.task`` or ``task in ("binary", ...)``.
# (Other things called task, like ``clinfuse synth --task digits``, are not Tasks.)
_NAMES = "|".join(EXPECTED_TASKS)
_TASK_BRANCH = re.compile(
    rf"""\btask\s*(==|!=)\s*["']({_NAMES})["']|["']({_NAMES})["']\s*(==|!=)\s*[\w.]*task\b"""
    rf"""|\btask\s+(not\s+)?in\s+[(\[{{].*["']({_NAMES})["']"""
)


def test_no_task_branches_outside_fusion_tasks() -> None:
    offenders = []
    for pkg in ("fusion", "registry", "workflows", "modalities", "scoring"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith("fusion/tasks/"):
                continue
            for no, line in enumerate(path.read_text().splitlines(), 1):
                if _TASK_BRANCH.search(line.split("#")[0]):
                    offenders.append(f"{rel}:{no}: {line.strip()}")
    assert offenders == []


def test_the_branch_pattern_catches_what_it_must() -> None:
    for line in ('if task == "binary":', "x = a if cohort.task != 'multilabel' else b",
                 'if predictor.task == "multiclass":', 'if task in ("binary", "multilabel"):',
                 'if "contrastive" == cfg.task:'):
        assert _TASK_BRANCH.search(line), line
    for line in ("task = get_task(name)", 'if task != "clinical":', 'if task == "digits":'):
        assert not _TASK_BRANCH.search(line), line


# --------------------------------------------------------------------------- contrastive


def _views(n: int, seed: int, mix: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Three noisy views (a, b, c) of one latent per sample; c is missing in every 4th row."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        z = torch.randn(2, 4, generator=g)
        s: dict[str, Any] = {"patient": f"p{seed}-{i}", "label": np.zeros(0, np.float32)}
        for m, w in mix.items():
            if m == "c" and i % 4 == 0:
                continue
            s[m] = z @ w + 0.05 * torch.randn(2, w.shape[1], generator=g)
        out.append(s)
    return out


def _collate(samples: list[dict[str, Any]]) -> Batch:
    n = len(samples)
    present = {m: torch.tensor([m in s for s in samples]) for m in ("a", "b", "c")}
    inputs = {m: {"x": torch.stack([s.get(m, torch.zeros(2, 6)) for s in samples]),
                  "mask": torch.ones(n, 2, dtype=torch.bool)} for m in ("a", "b", "c")}
    return Batch(inputs, present, None, [s["patient"] for s in samples])


def test_contrastive_trains_through_the_one_loop_and_retrieves() -> None:
    """Recall@1 on held-out patients rises from about chance to far above it."""
    seed_everything(0)
    g = torch.Generator().manual_seed(7)
    mix = {m: torch.randn(4, 6, generator=g) for m in ("a", "b", "c")}
    task = get_task("contrastive")
    opts = task.head_options(_cohort("contrastive"), {"proj_dim": 16}, None, True)
    mcfg = ModelConfig(d_model=16, dropout=0.0, head=HeadConfig(name=task.head, options=opts))
    model = build_model(mcfg, {m: VectorTokens(6, 16) for m in ("a", "b", "c")})
    cfg = TrainConfig(max_epochs=12, batch_size=32, lr=3e-3, patience=12, n_boot=0,
                      device="cpu", warmup_fraction=0.0)
    train = make_loader(_views(256, 1, mix), _collate, cfg, shuffle=True)
    val = make_loader(_views(64, 2, mix), _collate, cfg, shuffle=False)
    test = make_loader(_views(64, 3, mix), _collate, cfg, shuffle=False)

    def validate(pred: Predictions) -> dict[str, float]:
        return task.evaluate(pred.labels, pred.probs, present=pred.present)

    device = torch.device("cpu")
    before = validate(predict(model, test, task, device))
    res = fit(model, train, val, cfg, "contrastive", validate)
    after = validate(predict(model, test, task, device))
    chance = 1 / 64
    assert "val_recall@1" in res.history[0]
    assert before["recall@1"] < 5 * chance
    assert after["recall@1"] > 0.5 and after["recall@1"] > 20 * chance
    assert after["median_rank"] < before["median_rank"]
    assert {"a_to_b/recall@1", "b_to_c/recall@5", "c_to_a/median_rank"} <= set(after)
    assert after["n"] == 64  # a-b pair: every row has both
