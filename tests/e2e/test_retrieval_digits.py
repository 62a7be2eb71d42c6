"""Retrieval and zero-shot learn from pairing alone: synth -> ingest -> train, real CLI.

``clinfuse synth --task digits`` writes per sample a degraded handwritten digit, a noisy
spoken digit and a caption naming the digit and its image's looks (stroke, paper, box,
smudge). ``configs/digits_retrieval.yaml`` trains image, audio and caption towers with
InfoNCE on the pairing only (the label column is parsed for zero-shot evaluation and never
trained on). Read back from MLflow, on the held-out test split:

- image -> text and text -> image Recall@1 at least 10x chance (1 / n_test): the towers
  match a caption to its own image, not only to its class;
- zero-shot image accuracy from the prompts "a handwritten <digit>" (embedded by the
  trained text tower) with a bootstrap 95 % CI whose lower bound is above 0.2 (chance 0.1);
- `clinfuse score` with the registered model writes the zero-shot class of every image and
  audio row (zero_shot.parquet), and on the test split it agrees with the logged accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.e2e.conftest import clinfuse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

SAMPLES = 1000
EXPERIMENT = "digits-retrieval"


def test_retrieval_and_zero_shot_learn_from_pairing_alone(
    tmp_path: Path, mlflow_server: str
) -> None:
    from mlflow import MlflowClient

    data, prepared = tmp_path / "synth", tmp_path / "prepared"
    run = {"tracking_uri": mlflow_server, "cwd": tmp_path}
    clinfuse("synth", str(data), "--task", "digits", "--samples", str(SAMPLES), "--seed", "0",
             **run)
    clinfuse("ingest", str(data / "manifest.csv"), "--out", str(prepared), "--config",
             "digits_retrieval", "--no-progress", **run)
    res = clinfuse("train", str(prepared), "--config", "digits_retrieval", "--fusion",
                   "concat", "--experiment", EXPERIMENT, "--register", EXPERIMENT,
                   "--workdir", str(tmp_path), "--json", **run)
    summary = json.loads(res.stdout)
    assert not summary.get("failed"), summary

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "tags.`clinfuse.variant` = 'concat'")
    assert len(runs) == 1
    m = runs[0].data.metrics
    assert runs[0].data.params["task"] == "retrieval"
    n = m["test_n"]
    shown = {k: round(v, 3) for k, v in m.items() if "recall_at_1" in k or "zero_shot" in k}
    assert n >= 100, shown
    for key in ("test_image_to_text/recall_at_1", "test_text_to_image/recall_at_1"):
        assert m[key] >= 10 / n, (key, n, shown)
    assert m["test_zero_shot/image/n"] == n
    assert m["test_zero_shot/image/accuracy_ci_low"] > 0.2, shown

    # Zero-shot at scoring time: the registered model embeds the prompts with its text tower
    # and gives every image and audio row its nearest class (scoring.retrieval).
    clinfuse("score", str(prepared), "--out", str(tmp_path / "pred"), "--model",
             f"models:/{EXPERIMENT}/1", "--workdir", str(tmp_path), "--no-progress", **run)
    zs = pd.read_parquet(tmp_path / "pred" / "zero_shot.parquet")
    classes = [str(d) for d in range(10)]
    assert set(zs["tower"]) == {"image", "audio"}
    assert set(zs["prediction"]) <= set(classes)
    probs = zs[[f"probability_{c}" for c in classes]].to_numpy()
    assert abs(probs.sum(1) - 1).max() < 1e-4
    assert (zs["prediction"].to_numpy() == [classes[i] for i in probs.argmax(1)]).all()
    cohort = pd.read_parquet(prepared / "cohort.parquet")
    test = cohort[cohort["split"] == "test"].set_index("patient")["label"]
    image = zs[(zs["tower"] == "image") & zs["patient"].isin(test.index)]
    assert len(image) == n
    truth = [classes[int(v)] for v in test.loc[image["patient"]]]
    scored = float((image["prediction"].to_numpy() == truth).mean())
    # Same computation as training's evaluation; autocast at scoring may move a few ties.
    assert abs(scored - m["test_zero_shot/image/accuracy"]) <= 0.03, (scored, shown)
