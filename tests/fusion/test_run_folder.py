"""ModelArtifact and the run folder: what a trained variant leaves on disk, read back.

The in-process path (``train_to_folder`` in this process) is tested here; the torchrun
path writes through the same function (tests/fusion/test_distributed.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.artifact import ModelArtifact
from fusion.predictor import Predictor
from fusion.run_folder import (
    ARTIFACT_FILE,
    EPOCHS_FILE,
    FIT_FILE,
    TEST_METRICS_FILE,
    TEST_PREDICTIONS_FILE,
    WEIGHTS_FILE,
    json_safe,
    read_run_folder,
    train_to_folder,
)
from modalities.errors import ConfigError
from tests.model_recipes import load_recipe

OVERRIDES = [
    "cohort.modalities.note.encoder.model=tiny-random",
    "train.max_epochs=2",
    "train.batch_size=4",
    "train.n_boot=10",
    "train.device=cpu",
]


def test_artifact_dumps_the_config_models_were_saved_with() -> None:
    """A config dict as training wrote it before ModelArtifact existed loads and dumps back
    unchanged (plus ``reference: null``), so registered models keep loading."""
    cfg = load_recipe("tiny")
    legacy = {
        "cohort": cfg.cohort.model_dump(mode="json"),
        "model": cfg.model.model_dump(mode="json"),
        "modalities": ["ct", "note"], "threshold": 0.4, "prior": 0.3, "label_names": None,
        "task": cfg.cohort.task,
    }
    artifact = ModelArtifact.from_config(legacy)
    assert artifact.to_config() == {**legacy, "reference": None}
    assert ModelArtifact.build(cfg.cohort, cfg.model, ["note", "ct"], threshold=0.4,
                               prior=0.3) == artifact
    assert Predictor(legacy, device="cpu").artifact == artifact


@pytest.mark.parametrize("change, match", [
    ({"threshhold": 0.5}, "threshhold"),
    ({"modalities": []}, "modalities"),
    ({"model": {"d_model": "wide"}}, "model.d_model"),
])
def test_artifact_rejects_a_bad_saved_config(change: dict, match: str) -> None:
    cfg = load_recipe("tiny")
    good = ModelArtifact.build(cfg.cohort, cfg.model, ["ct"]).to_config()
    with pytest.raises(ConfigError, match=match):
        ModelArtifact.from_config({**good, **change})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """20 synthetic patients, the tiny concat model trained in-process into a run folder."""
    from fusion.tasks import cohort_task
    from modalities.ingest import ingest_manifest
    from synth import synth_cohort

    root = tmp_path_factory.mktemp("runfolder")
    synth = synth_cohort(root / "raw", patients=20, seed=5)
    cfg = load_recipe("tiny", OVERRIDES)
    prepared = root / "prepared"
    ingest_manifest(synth.manifest_path, cfg.cohort, synth.out, prepared, chunk_size=10,
                    labels=cohort_task(cfg.cohort))
    out = root / "run"
    epochs: list[int] = []
    summary = train_to_folder(prepared, cfg.cohort, cfg.model, cfg.train, "concat", None, out,
                              on_epoch=lambda e, m: epochs.append(e))
    return {"prepared": prepared, "cfg": cfg, "out": out, "summary": summary,
            "epochs": epochs}


def test_in_process_training_writes_a_complete_run_folder(trained: dict) -> None:
    out, summary = trained["out"], trained["summary"]
    for name in (ARTIFACT_FILE, WEIGHTS_FILE, TEST_METRICS_FILE, TEST_PREDICTIONS_FILE,
                 EPOCHS_FILE, FIT_FILE):
        assert (out / name).is_file(), name
    run = read_run_folder(out)
    assert run.fit == json.loads(json.dumps(json_safe(summary)))  # NaN written as null
    assert run.variant.name == "concat" and run.variant.modalities == ("ct", "mri", "note")
    assert run.fit["world_size"] == 1 and run.fit["backend"] is None
    assert trained["epochs"] == [e["epoch"] for e in run.epochs()] == [0, 1]
    assert run.artifact.modalities == ["ct", "mri", "note"]
    assert run.artifact.threshold == pytest.approx(run.fit["threshold"])
    pred = run.predictions
    assert len(pred) == run.fit["splits"]["test"] == run.test_metrics["n"]
    assert {"patient", "label", "probability", "prediction", "threshold", "present_ct",
            "present_mri", "present_note"} <= set(pred.columns)
    assert (pred["prediction"] == (pred["probability"] >= run.artifact.threshold)).all()


def test_the_rebuilt_model_reproduces_the_logged_predictions(trained: dict) -> None:
    """Artifact + weights alone (frozen encoder from its package) give the same scores."""
    from fusion.data import PreparedCohort

    run = read_run_folder(trained["out"])
    predictor = run.predictor()
    frozen = tuple(run.fit["frozen_prefixes"])
    assert frozen == ("encoders.note.model.",)  # tiny-random BERT, frozen: by reference
    from safetensors.torch import load_file

    assert not any(k.startswith(frozen) for k in load_file(str(trained["out"] / WEIGHTS_FILE)))
    cohort = PreparedCohort(trained["prepared"], run.artifact.cohort)
    usable = cohort.usable(list(cohort.mods)).set_index("patient", drop=False)
    rows = usable.loc[run.predictions["patient"]].reset_index(drop=True)
    ds = cohort.dataset(rows, list(cohort.mods))
    with torch.inference_mode():
        probs = predictor.to_device().predict_samples([ds[i] for i in range(len(ds))])
    np.testing.assert_allclose(probs, run.predictions["probability"], atol=1e-5)


def test_a_folder_without_fit_json_did_not_finish(trained: dict, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / ARTIFACT_FILE).write_text((trained["out"] / ARTIFACT_FILE).read_text())
    with pytest.raises(ConfigError, match="did not finish"):
        read_run_folder(partial)


def test_unknown_modality_is_a_user_error(trained: dict, tmp_path: Path) -> None:
    cfg = trained["cfg"]
    with pytest.raises(ConfigError, match="audio"):
        train_to_folder(trained["prepared"], cfg.cohort, cfg.model, cfg.train, "concat",
                        ["audio"], tmp_path / "o")
