"""DDP training: the torchrun environment, sharding, the DDP-aware loop and the entry point.

Fast tests run an in-process gloo group of one rank (real DDP, real reducer) on toy models;
slow tests launch real torchrun jobs (``python -m torch.distributed.run``) on a small
prepared cohort built with the real synth + ingest code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import yaml
from fusion_toys import DIMS, make_encoders
from torch import nn
from torch.utils.data import DataLoader

from fusion import FusionConfig, HeadConfig, ModelConfig, build_model
from fusion.data import Batch
from fusion.distributed import (
    DistEnv,
    ShardSampler,
    all_gather_object,
    broadcast_object,
    distributed,
    is_main,
    wrap_ddp,
)
from fusion.run_folder import (
    ARTIFACT_FILE,
    FIT_FILE,
    RANKS_DIR,
    TEST_METRICS_FILE,
    TEST_PREDICTIONS_FILE,
    WEIGHTS_FILE,
    read_run_folder,
)
from fusion.tasks import cohort_task, evaluate
from fusion.train import Predictions, TrainConfig, fit, make_loader, seed_everything
from modalities.errors import ConfigError
from tests.model_recipes import load_recipe

REPO = Path(__file__).resolve().parents[2]
NAMES = ["a", "b"]


# --------------------------------------------------------------------------- environment
def test_dist_env_outside_torchrun_is_one_process() -> None:
    env = DistEnv.from_env({})
    assert (env.rank, env.world_size, env.local_rank, env.launched) == (0, 1, 0, False)
    assert env.is_main


def test_dist_env_reads_torchrun_variables() -> None:
    env = DistEnv.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    assert (env.rank, env.world_size, env.local_rank) == (3, 4, 1)
    assert (env.master_addr, env.master_port, env.launched) == ("127.0.0.1", 29500, True)
    assert not env.is_main


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "two"}, {"WORLD_SIZE": "2", "RANK": "2"},
                                 {"WORLD_SIZE": "0"}, {"WORLD_SIZE": "2", "LOCAL_RANK": "-1"}])
def test_dist_env_rejects_bad_values(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"torchrun|>= 0"):
        DistEnv.from_env(env)


def test_helpers_without_process_group_are_single_process() -> None:
    assert not distributed()
    assert is_main()
    assert all_gather_object({"x": 1}) == [{"x": 1}]
    assert broadcast_object(("a", 2)) == ("a", 2)


# --------------------------------------------------------------------------- sampler
def epoch_orders(loader: DataLoader, epochs: int) -> list[list[int]]:
    out = []
    for e in range(epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(e)
        out.append([int(i) for b in loader for i in b])
    return out


def test_one_rank_shard_sampler_draws_what_a_plain_shuffled_loader_draws() -> None:
    data = list(range(13))
    plain = DataLoader(data, batch_size=4, shuffle=True,
                       generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    sharded = DataLoader(data, batch_size=4, sampler=ShardSampler(data, g, 1, 0), generator=g)
    want = epoch_orders(plain, 3)
    assert epoch_orders(sharded, 3) == want
    assert want[0] != want[1]  # reshuffled each epoch


@pytest.mark.parametrize("n, world", [(12, 2), (13, 2), (10, 3), (2, 3)])
def test_shards_are_disjoint_cover_everything_and_pad_equally(n: int, world: int) -> None:
    data = list(range(n))
    per_rank = [ShardSampler(data, torch.Generator().manual_seed(1), world, r)
                for r in range(world)]
    for epoch in range(2):
        shards = []
        for s in per_rank:
            s.set_epoch(epoch)
            shards.append(list(s))
            assert list(s) == shards[-1]  # iterating twice in an epoch: same order
        size = -(-n // world)
        assert all(len(x) == size for x in shards)  # same step count on every rank
        flat = [i for x in shards for i in x]
        assert set(flat) == set(data)
        assert len(flat) - len(set(flat)) == size * world - n  # only padding repeats


# --------------------------------------------------------------------------- in-process DDP
@pytest.fixture
def one_rank_group(tmp_path: Path) -> Iterator[None]:
    """A real gloo process group with one rank, in this process."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def toy_model(modality_dropout: float = 0.0) -> nn.Module:
    cfg = ModelConfig(d_model=16, dropout=0.1, modality_dropout=modality_dropout,
                      fusion=FusionConfig(name="concat"), head=HeadConfig(name="binary"))
    return build_model(cfg, make_encoders(NAMES))


def toy_samples(n: int, seed: int) -> list[dict[str, Any]]:
    """Rows with ``a`` and/or ``b``; the label depends on ``a``'s first feature or on ``b``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        s: dict[str, Any] = {"patient": f"p{seed}-{i}"}
        has_a, has_b = i % 3 != 0, i % 3 != 1
        x = torch.randn(DIMS["a"][0], DIMS["a"][1], generator=g)
        ids = torch.randint(1, 20, (DIMS["b"][0],), generator=g)
        y = float(x[0, 0] > 0) if has_a else float(ids[0] > 10)
        if has_a:
            s["a"] = x
        if has_b:
            s["b"] = ids
        s["label"] = y
        out.append(s)
    return out


def toy_collate(samples: list[dict[str, Any]]) -> Batch:
    """Full-batch tensors; rows without a modality are masked out by ``present``."""
    n = len(samples)
    present = {m: torch.tensor([m in s for s in samples]) for m in NAMES}
    x = torch.stack([s.get("a", torch.zeros(DIMS["a"][0], DIMS["a"][1])) for s in samples])
    ids = torch.stack([s.get("b", torch.ones(DIMS["b"][0], dtype=torch.long)) for s in samples])
    inputs = {"a": {"x": x, "mask": torch.ones(n, DIMS["a"][0], dtype=torch.bool)},
              "b": {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)}}
    labels = torch.tensor([s["label"] for s in samples])
    return Batch(inputs, present, labels, [s["patient"] for s in samples])


def validate(pred: Predictions) -> dict[str, float]:
    return evaluate("binary", pred.labels, pred.probs, n_boot=0)


def run_fit(cfg: TrainConfig) -> tuple[nn.Module, Any, DataLoader, DataLoader]:
    """What ``train_variant`` does: seed, build, loaders via make_loader, fit."""
    seed_everything(cfg.seed)
    model = toy_model(modality_dropout=0.3)
    train = make_loader(toy_samples(22, 1), toy_collate, cfg, shuffle=True)
    val = make_loader(toy_samples(12, 2), toy_collate, cfg, shuffle=False)
    res = fit(model, train, val, cfg, "binary", validate)
    return model, res, train, val


def test_ddp_with_one_rank_equals_plain_fit(tmp_path: Path) -> None:
    cfg = TrainConfig(max_epochs=3, batch_size=4, lr=3e-3, patience=5, seed=5, device="cpu",
                      warmup_fraction=0.1)
    plain_model, plain, _, _ = run_fit(cfg)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        ddp_model, res, train, val = run_fit(cfg)
    finally:
        dist.destroy_process_group()
    assert isinstance(train.sampler, ShardSampler)  # training loader sharded...
    assert not isinstance(val.sampler, ShardSampler)  # ...evaluation loader whole
    assert not isinstance(ddp_model, nn.parallel.DistributedDataParallel)  # caller's module
    assert res.world_size == 1 and plain.world_size == 1
    assert res.best_epoch == plain.best_epoch
    assert res.train_samples == plain.train_samples == [22, 22, 22]
    for a, b in zip(res.history, plain.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_auroc"] == pytest.approx(b["val_auroc"], abs=1e-9)
    assert plain.best_state.keys() == res.best_state.keys()
    for k, v in plain.best_state.items():
        torch.testing.assert_close(res.best_state[k], v, rtol=1e-5, atol=1e-6)
    for (k, v), (_, w) in zip(plain_model.state_dict().items(),
                              ddp_model.state_dict().items(), strict=True):
        torch.testing.assert_close(w, v, rtol=1e-5, atol=1e-6, msg=k)
    # sanity: training moved the weights away from their initial values
    seed_everything(cfg.seed)
    init = toy_model(modality_dropout=0.3).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in plain.best_state.items())


def absent_b_batch() -> Batch:
    """A batch where modality ``b`` is absent in every row: its encoder does not run."""
    samples = [s for s in toy_samples(12, 3) if "b" not in s]
    assert samples
    return toy_collate(samples)


def ddp_steps(net: nn.Module, batches: list[Batch]) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for batch in batches:
        loss = net(batch.inputs, batch.present, batch.labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_absent_modality_needs_find_unused_parameters(one_rank_group: None) -> None:
    batches = [absent_b_batch(), toy_collate(toy_samples(6, 4))]
    torch.manual_seed(0)
    strict = nn.parallel.DistributedDataParallel(toy_model(), find_unused_parameters=False)
    with pytest.raises(RuntimeError, match="finished reduction"):
        ddp_steps(strict, batches)
    torch.manual_seed(0)
    model = toy_model()
    before = {k: v.clone() for k, v in model.encoders["b"].state_dict().items()}
    ddp_steps(wrap_ddp(model, torch.device("cpu")), batches * 2)
    after = model.encoders["b"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # b trained when present


# --------------------------------------------------------------------------- config
def tiny_config(tmp_path: Path, overrides: list[str]) -> Path:
    """A resolved config file, written the way `clinfuse train` writes one for its tasks."""
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(load_recipe("tiny", overrides).model_dump(mode="json")))
    return path




# --------------------------------------------------------------------------- torchrun
OVERRIDES = [
    "cohort.modalities.note.encoder.model=tiny-random",
    "train.max_epochs=2",
    "train.batch_size=4",
    "train.n_boot=0",
    "train.patience=5",
    "train.device=cpu",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """24 synthetic patients ingested with the tiny recipe, plus the resolved config."""
    from modalities.ingest import ingest_manifest
    from synth import synth_cohort

    root = tmp_path_factory.mktemp("ddp")
    synth = synth_cohort(root / "raw", patients=24, seed=9)
    cfg = load_recipe("tiny", OVERRIDES).cohort
    out = root / "prepared"
    ingest_manifest(synth.manifest_path, cfg, synth.out, out, chunk_size=8,
                    labels=cohort_task(cfg))
    return {"prepared": out, "config": tiny_config(root, OVERRIDES)}


def torchrun(nproc: int, prepared: dict[str, Path], out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", str(nproc), "-m", "workflows.train_worker",
           "--prepared", str(prepared["prepared"]), "--config", str(prepared["config"]),
           "--fusion", "concat", "--out", str(out)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.slow
def test_torchrun_two_ranks_trains_on_disjoint_shards(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = torchrun(2, prepared, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in (WEIGHTS_FILE, ARTIFACT_FILE, TEST_METRICS_FILE, FIT_FILE,
                 TEST_PREDICTIONS_FILE):
        assert (out / name).is_file(), name
    summary = json.loads((out / FIT_FILE).read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert summary["epochs"] == 2 and len(summary["history"]) == 2
    metrics = json.loads((out / TEST_METRICS_FILE).read_text())
    assert 0.0 <= metrics["auroc"] <= 1.0

    # the weights load strictly into a model rebuilt from the saved artifact alone; the only
    # tensors left out of the file are those of frozen packaged encoders
    run = read_run_folder(out)
    predictor = run.predictor()
    weights = load_weights(out / WEIGHTS_FILE)
    left_out = set(predictor.model.state_dict()) - set(weights)
    assert all(k.startswith(tuple(run.fit["frozen_prefixes"])) for k in left_out)
    for k, v in weights.items():
        torch.testing.assert_close(predictor.model.state_dict()[k], v, rtol=0, atol=0, msg=k)

    ranks = [json.loads((out / RANKS_DIR / f"rank{r}.json").read_text()) for r in (0, 1)]
    n_train = summary["splits"]["train"]
    per_rank = -(-n_train // 2)
    for r, info in enumerate(ranks):
        assert info["rank"] == r and info["world_size"] == 2
        assert info["train_samples_per_epoch"] == [per_rank, per_rank]
    a, b = (set(info["train_patients_last_epoch"]) for info in ranks)
    assert len(a | b) == n_train  # together the ranks saw the whole training split...
    assert len(a & b) <= per_rank * 2 - n_train  # ...and shared only the padding sample


@pytest.mark.slow
def test_torchrun_one_rank_equals_plain_training(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    from fusion.data import PreparedCohort
    from fusion.experiment import Variant, split_cohort, train_variant
    out = tmp_path / "out"
    proc = torchrun(1, prepared, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp_weights = read_run_folder(out).predictor().model.state_dict()
    ddp_metrics = json.loads((out / TEST_METRICS_FILE).read_text())

    cfg = load_recipe("tiny", OVERRIDES)  # what the resolved file holds
    cohort = PreparedCohort(prepared["prepared"], cfg.cohort)
    rows = split_cohort(cohort, cfg.train)
    variant = Variant("concat", "concat", tuple(sorted(cohort.mods)))
    plain = train_variant(cohort, rows, variant, cfg.model, cfg.train)
    state = plain.model.state_dict()
    assert set(state) == set(ddp_weights)
    for k, v in state.items():
        torch.testing.assert_close(ddp_weights[k], v.cpu(), rtol=1e-4, atol=1e-5, msg=k)
    assert ddp_metrics["auroc"] == pytest.approx(plain.test_metrics["auroc"], abs=1e-6)
    preds = pd.read_parquet(out / TEST_PREDICTIONS_FILE)
    np.testing.assert_allclose(preds["probability"].to_numpy(), plain.test.probs, atol=1e-5)


@pytest.mark.parametrize("text, match", [
    ("cohort: {modalities: {note: {}}}\ntrain: {batch_size: 0}\n", "train.batch_size"),
    ("- 1\n", "mapping"),
])
def test_entry_point_reports_config_errors_without_traceback(
    tmp_path: Path, text: str, match: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "workflows.train_worker", "--prepared", str(tmp_path),
         "--config", str(bad), "--fusion", "concat", "--out", str(tmp_path / "o")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert match in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
