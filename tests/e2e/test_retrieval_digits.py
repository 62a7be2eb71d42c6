"""Retrieval and zero-shot through the real CLI: synth -> ingest -> train -> compare -> score.

``clinfuse synth --task digits`` writes per sample a degraded handwritten digit, a noisy
spoken digit and a caption naming the digit and its image's looks (stroke, paper, box,
smudge). ``configs/digits_retrieval.yaml`` trains image, audio and caption towers with
InfoNCE on the pairing only (the label column is parsed for zero-shot evaluation and never
trained on). One pipeline, shared by the tests below:

- learning, read back from MLflow on the held-out test split: image -> text and text ->
  image Recall@1 at least 10x chance (1 / n_test), so the towers match a caption to its
  own image, not only to its class; zero-shot image accuracy from the prompts "a
  handwritten <digit>" with a bootstrap 95 % CI whose lower bound is above 0.2 (chance 0.1);
- serving: ``compare`` ranks by the task's metric (``test_recall_at_1``) and promotes;
  ``score`` loads the champion with the verified loader and writes per-row embeddings, the
  search export, the top-k neighbours and the zero-shot class of every image and audio row;
  a part file removed afterwards stands for a batch lost to an interruption: the next run
  (in-process, with the same registered model) scores those rows only and writes the same
  outputs; no raw ID reaches any file or output.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from registry.model import load_predictor
from scoring import score_cohort
from tests.e2e.conftest import clinfuse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

SAMPLES = 1000
K = 5
MODEL = "digits-retrieval"
CLASSES = [str(d) for d in range(10)]
OUTPUTS = ("predictions.parquet", "embeddings.parquet", "neighbours.parquet",
           "zero_shot.parquet")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, mlflow_server_handle) -> dict:
    from mlflow import MlflowClient

    mlflow_server = mlflow_server_handle.url
    tmp = tmp_path_factory.mktemp("retrieval")
    data, prepared, pred = tmp / "synth", tmp / "prepared", tmp / "pred"
    run = {"tracking_uri": mlflow_server, "cwd": tmp}
    common = ["--workdir", str(tmp), "--json"]
    synth = clinfuse("synth", str(data), "--task", "digits", "--samples", str(SAMPLES),
                     "--seed", "0", **run)
    ingest = clinfuse("ingest", str(data / "manifest.csv"), "--out", str(prepared),
                      "--config", "digits_retrieval", "--no-progress", **run)
    train = clinfuse("train", str(prepared), "--config", "digits_retrieval", "--fusion",
                     "concat", "--experiment", MODEL, "--register", MODEL, *common, **run)
    compare = clinfuse("compare", "--experiment", MODEL, "--promote", MODEL, *common, **run)
    score = clinfuse("score", str(prepared), "--out", str(pred), "--model",
                     f"models:/{MODEL}@champion", "--top-k", str(K), *common, **run)
    outputs = {n: pd.read_parquet(pred / n) for n in OUTPUTS}
    lost = sorted((pred / "parts").glob("part-*.parquet"))[0]
    lost_rows = len(pd.read_parquet(lost))
    lost.unlink()  # a batch that never reached the store
    predictor, name, version = load_predictor(f"models:/{MODEL}@champion", mlflow_server)
    resumed = score_cohort(prepared, predictor, pred, name, version, top_k=K).to_dict()
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(MODEL)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "tags.`clinfuse.variant` = 'concat'")
    assert len(runs) == 1
    return {"tmp": tmp, "mlflow_root": mlflow_server_handle.log_path.parent, "data": data,
            "prepared": prepared, "pred": pred, "run": runs[0],
            "outputs": outputs, "lost_rows": lost_rows, "resumed": resumed,
            "cli": [synth, ingest, train, compare, score],
            "summaries": [json.loads(r.stdout) for r in (train, compare, score)]}


def _metrics(pipeline: dict) -> tuple[dict[str, float], dict[str, float]]:
    m = pipeline["run"].data.metrics
    return m, {k: round(v, 3) for k, v in m.items() if "recall_at_1" in k or "zero_shot" in k}


def test_retrieval_and_zero_shot_learn_from_pairing_alone(pipeline: dict) -> None:
    train = pipeline["summaries"][0]
    assert not train.get("failed"), train
    assert pipeline["run"].data.params["task"] == "retrieval"
    m, shown = _metrics(pipeline)
    n = m["test_n"]
    assert n >= 100, shown
    for key in ("test_image_to_text/recall_at_1", "test_text_to_image/recall_at_1"):
        assert m[key] >= 10 / n, (key, n, shown)
    assert m["test_zero_shot/image/n"] == n
    assert m["test_zero_shot/image/accuracy_ci_low"] > 0.2, shown


def test_compare_ranks_by_recall_and_promotes(pipeline: dict) -> None:
    compare = pipeline["summaries"][1]
    assert compare["metric"] == "test_recall_at_1"
    assert compare["champion"] == "1" and compare["promotion"] == "only_run"


def test_score_writes_embeddings_neighbours_and_zero_shot_classes(pipeline: dict) -> None:
    score = pipeline["summaries"][2]
    assert score["eligible"] == score["scored_now"] == SAMPLES
    pred = pipeline["outputs"]["predictions.parquet"]
    assert len(pred) == SAMPLES and pred["patient"].is_unique
    emb = pipeline["outputs"]["embeddings.parquet"]
    assert len(emb) == 3 * SAMPLES and set(emb["tower"]) == {"image", "audio", "text"}
    nb = pipeline["outputs"]["neighbours.parquet"]
    sizes = nb.groupby(["query_patient", "query_tower", "gallery_tower"]).size()
    assert (sizes == K).all() and len(sizes) == 2 * len(emb)
    # A caption finds its own image among the top K far above chance (K / n = 0.5 %).
    recall = score["distribution"]["partner_recall"]
    assert recall["k"] == K and min(recall["text_to_image"], recall["image_to_text"]) > 0.1
    assert "skipped" in score["drift"]
    # Zero-shot at scoring: the registered model embeds the prompts with its text tower
    # and gives every image and audio row its nearest class (scoring.retrieval).
    zs = pipeline["outputs"]["zero_shot.parquet"]
    assert set(zs["tower"]) == {"image", "audio"} and len(zs) == 2 * SAMPLES
    assert set(zs["prediction"]) <= set(CLASSES)
    probs = zs[[f"probability_{c}" for c in CLASSES]].to_numpy()
    assert abs(probs.sum(1) - 1).max() < 1e-4
    assert (zs["prediction"].to_numpy() == [CLASSES[i] for i in probs.argmax(1)]).all()
    cohort = pd.read_parquet(pipeline["prepared"] / "cohort.parquet")
    test = cohort[cohort["split"] == "test"].set_index("patient")["label"]
    image = zs[(zs["tower"] == "image") & zs["patient"].isin(test.index)]
    m, shown = _metrics(pipeline)
    assert len(image) == m["test_n"]
    truth = [CLASSES[int(v)] for v in test.loc[image["patient"]]]
    scored = float((image["prediction"].to_numpy() == truth).mean())
    # The computation training evaluates with; autocast at scoring may move a few ties.
    assert abs(scored - m["test_zero_shot/image/accuracy"]) <= 0.03, (scored, shown)


def test_resume_scores_only_the_lost_batch_and_writes_the_same_outputs(pipeline: dict) -> None:
    resumed = pipeline["resumed"]
    assert resumed["scored_now"] == pipeline["lost_rows"] > 0
    assert resumed["already_scored"] == SAMPLES - pipeline["lost_rows"]
    keys = {"predictions.parquet": ["patient"], "embeddings.parquet": ["patient", "tower"],
            "neighbours.parquet": ["query_patient", "query_tower", "gallery_tower", "rank"],
            "zero_shot.parquet": ["patient", "tower"]}
    for name, key in keys.items():
        a = pipeline["outputs"][name].sort_values(key).reset_index(drop=True)
        b = pd.read_parquet(pipeline["pred"] / name).sort_values(key).reset_index(drop=True)
        assert len(a) == len(b) and not b.duplicated(key).any(), name
        for c in key + [c for c in ("neighbour_patient", "prediction") if c in a]:
            assert a[c].equals(b[c]), (name, c)
        for c in [c for c in a if c.startswith("embedding") or c == "similarity"]:
            np.testing.assert_allclose(np.stack(a[c].dropna().to_list()),
                                       np.stack(b[c].dropna().to_list()), atol=1e-5)


def test_no_raw_id_reaches_any_output(pipeline: dict) -> None:
    manifest = pipeline["data"] / "manifest.csv"
    ids = set(pd.read_csv(manifest)["patient_id"])
    files = [*Path(pipeline["tmp"]).rglob("*"), *Path(pipeline["mlflow_root"]).rglob("*")]
    blobs = {str(p): p.read_bytes() for p in files
             if p.is_file() and not p.is_relative_to(pipeline["data"])}
    assert any(p.endswith("neighbours.parquet") for p in blobs)
    assert any(p.endswith("mlflow.db") for p in blobs)  # the tracking server's store
    for i, r in enumerate(pipeline["cli"][1:]):  # synth only prints where it wrote
        blobs[f"cli{i}"] = (r.stdout + r.stderr).encode()
    leaks = [(i, k) for k, b in blobs.items() for i in ids if i.encode() in b]
    assert not leaks, leaks[:5]
