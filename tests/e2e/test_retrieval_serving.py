"""A retrieval model through the real CLI: train -> compare -> score, then resume.

Two tabular towers (labs, vitals: noisy views of one latent per patient, some patients
without vitals) train a contrastive model in seconds. ``compare`` ranks by the task's
metric (``test_recall_at_1``) and promotes it; ``score`` loads the champion with the
verified loader and writes per-row embeddings, the search export and the top-k neighbours.
A part file removed afterwards stands for a batch lost to an interruption: the next run
(in-process, with the same registered model, to spare CI a fourth CLI start) scores those
rows only and writes the same outputs. No raw ID reaches any file or output.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from fusion.tasks import cohort_task
from modalities.cohort import CohortConfig
from modalities.ingest import ingest_manifest
from registry.model import load_predictor
from scoring import score_cohort
from tests.e2e.conftest import clinfuse
from tests.scoring.retrieval_data import cohort_section, write_manifest
from tests.servers import sqlite_uri

pytestmark = pytest.mark.slow

N = 160
K = 5
MODEL = "e2e-retrieval"
RECIPE = {
    "name": "retrieval-e2e",
    "model": {"d_model": 32, "dropout": 0.0,
              "fusion": {"name": "concat", "layers": 1, "heads": 2},
              "head": {"name": "contrastive", "options": {"proj_dim": 32}}},
    "train": {"max_epochs": 8, "min_epochs": 1, "batch_size": 32, "lr": 0.003,
              "patience": 8, "num_workers": 0, "n_boot": 0},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("retrieval-e2e")
    recipe = work / "retrieval.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "cohort": cohort_section()}))
    manifest = write_manifest(work / "manifest.csv", N, seed=3)
    cohort = CohortConfig.model_validate(cohort_section())
    ingest_manifest(manifest, cohort, work, work / "prepared", labels=cohort_task(cohort))
    run = {"tracking_uri": sqlite_uri(work / "mlflow.db"), "cwd": work,
           "env": {"PREFECT_HOME": str(work / "prefect")}}
    common = ["--workdir", str(work), "--json"]
    train = clinfuse("train", str(work / "prepared"), "--config", str(recipe), "--fusion",
                     "concat", "--experiment", "retrieval", "--register", MODEL, *common, **run)
    compare = clinfuse("compare", "--experiment", "retrieval", "--promote", MODEL, *common,
                       **run)
    score = ["score", str(work / "prepared"), "--out", str(work / "pred"), "--model",
             f"models:/{MODEL}@champion", "--top-k", str(K), "--batch-size", "32", *common]
    first = clinfuse(*score, **run)
    outputs = {n: pd.read_parquet(work / "pred" / n)
               for n in ("predictions.parquet", "embeddings.parquet", "neighbours.parquet")}
    lost = sorted((work / "pred" / "parts").glob("part-*.parquet"))[0]
    lost_rows = len(pd.read_parquet(lost))
    lost.unlink()  # a batch that never reached the store
    predictor, name, version = load_predictor(f"models:/{MODEL}@champion", run["tracking_uri"])
    resumed = score_cohort(work / "prepared", predictor, work / "pred", name, version,
                           batch_size=32, top_k=K).to_dict()
    return {"work": work, "manifest": manifest, "outputs": outputs, "lost_rows": lost_rows,
            "runs": [train, compare, first],
            "summaries": [*(json.loads(r.stdout) for r in (train, compare, first)), resumed]}


def test_compare_ranks_by_recall_and_promotes(served: dict) -> None:
    _, compare, _, _ = served["summaries"]
    assert compare["metric"] == "test_recall_at_1"
    assert compare["champion"] == "1" and compare["promotion"] == "only_run"
    (best,) = compare["ranking"]
    assert best["test_recall_at_1"] > 10 / best["n_test"]  # ten times chance


def test_score_writes_embeddings_and_k_neighbours_with_partners_found(served: dict) -> None:
    first = served["summaries"][2]
    assert first["eligible"] == first["scored_now"] == N
    pred = served["outputs"]["predictions.parquet"]
    assert len(pred) == N and pred["patient"].is_unique
    assert (pred["embedding_vitals"].isna() == ~pred["present_vitals"]).all()
    emb = served["outputs"]["embeddings.parquet"]
    assert len(emb) == N + int(pred["present_vitals"].sum())
    assert {len(v) for v in emb["embedding"]} == {32}
    nb = served["outputs"]["neighbours.parquet"]
    sizes = nb.groupby(["query_patient", "query_tower", "gallery_tower"]).size()
    assert (sizes == K).all() and len(sizes) == len(emb)
    # The true partner (the same patient's other tower) is among the top K for most
    # queries: chance would be K / N = 3 %.
    hits = (nb["query_patient"] == nb["neighbour_patient"]).groupby(
        [nb["query_patient"], nb["query_tower"]]).any()
    assert hits.mean() > 0.8, hits.groupby(level=1).mean()
    recall = first["distribution"]["partner_recall"]
    assert recall["k"] == K and min(recall["labs_to_vitals"], recall["vitals_to_labs"]) > 0.8
    assert "skipped" in first["drift"]
    assert first["extras"]["neighbours_path"].endswith("neighbours.parquet")


def test_resume_scores_only_the_lost_batch_and_writes_the_same_outputs(served: dict) -> None:
    resumed = served["summaries"][3]
    assert resumed["scored_now"] == served["lost_rows"] > 0
    assert resumed["already_scored"] == N - served["lost_rows"]
    work = served["work"] / "pred"
    keys = {"predictions.parquet": ["patient"], "embeddings.parquet": ["patient", "tower"],
            "neighbours.parquet": ["query_patient", "query_tower", "gallery_tower", "rank"]}
    for name, key in keys.items():
        a = served["outputs"][name].sort_values(key).reset_index(drop=True)
        b = pd.read_parquet(work / name).sort_values(key).reset_index(drop=True)
        assert len(a) == len(b) and not b.duplicated(key).any(), name
        for c in key + [c for c in ("neighbour_patient",) if c in a]:
            assert a[c].equals(b[c]), (name, c)
        for c in [c for c in a if c.startswith("embedding") or c == "similarity"]:
            np.testing.assert_allclose(np.stack(a[c].dropna().to_list()),
                                       np.stack(b[c].dropna().to_list()), atol=1e-5)


def test_no_raw_id_reaches_any_output(served: dict) -> None:
    ids = set(pd.read_csv(served["manifest"])["patient_id"])
    skip = {served["manifest"]}
    blobs = {str(p): p.read_bytes() for p in served["work"].rglob("*")
             if p.is_file() and p not in skip}
    assert any(p.endswith("mlflow.db") for p in blobs)
    assert any(p.endswith("neighbours.parquet") for p in blobs)
    for i, r in enumerate(served["runs"]):
        blobs[f"cli{i}"] = (r.stdout + r.stderr).encode()
    leaks = [(i, k) for k, b in blobs.items() for i in ids if i.encode() in b]
    assert not leaks, leaks[:5]
