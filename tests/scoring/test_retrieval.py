"""Batch scoring of a retrieval model: embeddings through the exactly-once store, the search
export, top-k neighbours of the scored cohort, resume, PostgreSQL, and the pyfunc outputs.

The model is an untrained contrastive model over two tabular towers (the outputs' shape and
bookkeeping do not depend on training; tests/e2e/test_retrieval_digits.py trains one).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from fusion.artifact import ModelArtifact
from fusion.config import ModelConfig
from fusion.predictor import Predictor, example_io
from fusion.tasks import cohort_task
from modalities.cohort import CohortConfig
from modalities.ingest import ingest_manifest
from scoring import score_cohort, score_into
from scoring.retrieval import (
    DRIFT_SKIPPED,
    Embeddings,
    ZeroShotPrompts,
    top_k,
    zero_shot_table,
)
from scoring.stores import ParquetStore
from scoring.stores.postgres import TABLE
from tests.scoring.retrieval_data import cohort_section, write_manifest

N = 30
DIM = 16
K = 3
PRED_COLUMNS = ["patient", "model_name", "model_version", "input_hash", "embedding_labs",
                "embedding_vitals", "present_labs", "present_vitals", "scored_at"]


class Interrupted(Exception):
    """Stands for a crash after some batches were written."""


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("retrieval")
    cfg = CohortConfig.model_validate(cohort_section())
    manifest = write_manifest(root / "manifest.csv", N)
    ingest_manifest(manifest, cfg, root, root / "prepared", labels=cohort_task(cfg))
    model = ModelConfig(d_model=32, head={"name": "contrastive", "options": {"proj_dim": DIM}})
    artifact = ModelArtifact.build(cfg, model, ["labs", "vitals"])
    torch.manual_seed(0)
    predictor = Predictor(artifact, device="cpu").to_device()
    return {"prepared": root / "prepared", "predictor": predictor, "artifact": artifact,
            "raw_ids": set(pd.read_csv(manifest)["patient_id"])}


def test_scoring_writes_embeddings_export_and_exactly_k_neighbours(
    retrieval: dict, tmp_path: Path
) -> None:
    s = score_cohort(retrieval["prepared"], retrieval["predictor"], tmp_path, "retr", "1",
                     batch_size=8, top_k=K)
    assert s.eligible == s.scored_now == N
    pred = pd.read_parquet(tmp_path / "predictions.parquet")
    assert list(pred.columns) == PRED_COLUMNS
    # A patient without vitals has no vitals embedding (null), never a vector of nothing.
    assert (pred["embedding_vitals"].isna() == ~pred["present_vitals"]).all()
    assert pred["embedding_labs"].notna().all()
    labs = np.stack(pred["embedding_labs"].to_list())
    assert labs.shape == (N, DIM)
    np.testing.assert_allclose(np.linalg.norm(labs, axis=1), 1.0, atol=1e-5)

    export = pq.read_table(tmp_path / "embeddings.parquet")
    assert export.column_names == ["patient", "tower", "embedding", "model_name",
                                   "model_version", "input_hash"]
    assert export.schema.field("embedding").type.list_size == DIM
    assert export.schema.metadata[b"clinfuse.towers"] == b"labs,vitals"
    ex = export.to_pandas()
    n_vitals = int(pred["present_vitals"].sum())
    assert (ex["tower"] == "vitals").sum() == n_vitals < N
    by_patient = pred.set_index("patient")
    for _, r in ex.iterrows():
        np.testing.assert_allclose(r["embedding"], by_patient.at[r["patient"],
                                                                 f"embedding_{r['tower']}"])

    nb = pd.read_parquet(tmp_path / "neighbours.parquet")
    assert list(nb.columns) == ["query_patient", "query_tower", "gallery_tower", "rank",
                                "neighbour_patient", "similarity", "model_name",
                                "model_version"]
    sizes = nb.groupby(["query_patient", "query_tower", "gallery_tower"]).size()
    assert (sizes == K).all()
    pairs = nb.groupby(["query_tower", "gallery_tower"])["query_patient"].nunique().to_dict()
    assert pairs == {("labs", "vitals"): N, ("vitals", "labs"): n_vitals}
    assert set(nb["rank"]) == set(range(1, K + 1))
    # Neighbours come from the gallery tower's patients only, best first, cosine exact.
    assert set(nb.loc[nb["gallery_tower"] == "vitals", "neighbour_patient"]) <= set(
        pred.loc[pred["present_vitals"], "patient"])
    for (_, q, qt, gt), g in nb.groupby(["model_version", "query_patient", "query_tower",
                                         "gallery_tower"]):
        assert g["similarity"].is_monotonic_decreasing
        qv = np.asarray(by_patient.at[q, f"embedding_{qt}"])
        want = [float(qv @ np.asarray(by_patient.at[p, f"embedding_{gt}"]))
                for p in g["neighbour_patient"]]
        np.testing.assert_allclose(g["similarity"], want, atol=1e-5)
    assert s.extras["top_k"] == K and s.extras["neighbour_rows"] == len(nb)
    assert s.distribution["embeddings"] == {"labs": N, "vitals": n_vitals}
    assert set(s.distribution["partner_recall"]) == {"k", "labs_to_vitals", "vitals_to_labs"}
    assert s.drift["skipped"] == DRIFT_SKIPPED and "presence" in s.drift
    # Pseudonyms only: no raw ID in any output file or in the summary.
    blobs = [p.read_bytes() for p in tmp_path.rglob("*.parquet")]
    blobs.append(json.dumps(s.to_dict()).encode())
    assert not [i for i in retrieval["raw_ids"] for b in blobs if i.encode() in b]


def test_resume_after_interruption_scores_each_row_once_with_the_same_outputs(
    retrieval: dict, tmp_path: Path
) -> None:
    prepared, predictor = retrieval["prepared"], retrieval["predictor"]
    score_cohort(prepared, predictor, tmp_path / "whole", "retr", "1", batch_size=8, top_k=K)

    def crash(done: int, total: int) -> None:
        if done >= 16:
            raise Interrupted

    store = ParquetStore(tmp_path / "resumed")
    with pytest.raises(Interrupted):
        score_into(store, prepared, predictor, "retr", "1", batch_size=8, progress=crash,
                   exports=tmp_path / "resumed", top_k=K)
    assert not (tmp_path / "resumed" / "neighbours.parquet").exists()  # only after all batches
    s = score_cohort(prepared, predictor, tmp_path / "resumed", "retr", "1", batch_size=8,
                     top_k=K)
    assert s.already_scored == 16 and s.scored_now == N - 16
    keys = {"predictions.parquet": ["patient", "input_hash"],
            "embeddings.parquet": ["patient", "tower"],
            "neighbours.parquet": ["query_patient", "query_tower", "gallery_tower", "rank"]}
    for name, key in keys.items():
        a, b = (pd.read_parquet(tmp_path / run / name).drop(columns="scored_at",
                                                            errors="ignore")
                .sort_values(key).reset_index(drop=True) for run in ("whole", "resumed"))
        assert len(a) == len(b) and not b.duplicated(key).any(), name
        for c in a.columns:
            if c.startswith("embedding") or c == "similarity":
                np.testing.assert_allclose(np.stack(a[c].dropna().to_list()),
                                           np.stack(b[c].dropna().to_list()), atol=1e-6)
            else:
                assert a[c].equals(b[c]), (name, c)
    before = {n: (tmp_path / "resumed" / n).read_bytes()
              for n in ("embeddings.parquet", "neighbours.parquet")}
    again = score_cohort(prepared, predictor, tmp_path / "resumed", "retr", "1", batch_size=8,
                         top_k=K)
    assert again.scored_now == 0 and again.already_scored == N
    assert before == {n: (tmp_path / "resumed" / n).read_bytes() for n in before}


def test_postgres_mirror_stores_embeddings_as_real_arrays(
    retrieval: dict, tmp_path: Path, pg_url: str
) -> None:
    import psycopg2

    s = score_cohort(retrieval["prepared"], retrieval["predictor"], tmp_path, "retr_pg", "1",
                     batch_size=8, db_url=pg_url, top_k=K)
    assert s.db_rows_upserted == N
    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT patient, embedding_labs, embedding_vitals FROM {TABLE} "
                    "WHERE model_name = 'retr_pg'")
        rows = {p: (a, b) for p, a, b in cur.fetchall()}
    conn.close()
    pred = pd.read_parquet(tmp_path / "predictions.parquet").set_index("patient")
    assert set(rows) == set(pred.index)
    for p, (labs, vitals) in rows.items():
        np.testing.assert_allclose(labs, pred.at[p, "embedding_labs"], atol=1e-6)
        assert (vitals is None) == (not pred.at[p, "present_vitals"])


def test_top_k_is_cosine_best_first_with_ties_broken_by_id() -> None:
    gallery = np.array([[1, 0], [0, 1], [1, 0], [2, 0], [-1, 0]], np.float32)
    ids = ["e", "d", "c", "b", "a"]
    idx, sims = top_k(np.array([[3, 0]], np.float32), gallery, ids, 3)
    # Rows 0, 2 and 3 all have cosine 1 with the query: ordered by id b, c, e.
    assert [ids[i] for i in idx[0]] == ["b", "c", "e"]
    np.testing.assert_allclose(sims[0], 1.0)
    idx, sims = top_k(np.array([[0, 1]], np.float32), gallery, ids, 10)
    assert idx.shape == (1, 5) and ids[idx[0, 0]] == "d"  # k > gallery: the whole gallery


def test_pyfunc_outputs_one_embedding_column_per_tower(retrieval: dict) -> None:
    predictor = retrieval["predictor"]
    df = pd.DataFrame({"labs": [json.dumps({"l0": 1.0}), "", "{not json"],
                       "vitals": [json.dumps({"v1": 2.0}), json.dumps({"v0": 0.5}), ""]})
    out = predictor.predict_dataframe(df)
    assert list(out.columns) == ["embedding_labs", "embedding_vitals", "present_labs",
                                 "present_vitals", "rejected"]
    assert len(out["embedding_labs"][0]) == DIM and out["embedding_labs"][1] is None
    assert out["embedding_vitals"][2] is None and out["embedding_labs"][2] is None
    assert out["rejected"].tolist() == ["", "", "labs:UNREADABLE"]
    inp, example = example_io(retrieval["artifact"])  # the signature's source
    assert list(example.columns) == list(out.columns) and list(inp.columns) == ["labs",
                                                                                 "vitals"]


def test_zero_shot_table_gives_each_non_text_row_its_nearest_class_prompt() -> None:
    e = np.eye(3, dtype=np.float32)
    # towers image, text; rows: p1 image ~ class b, p2 image ~ class a, p3 has no image
    values = np.full((3, 2, 3), np.nan, np.float32)
    values[0, 0] = [0.1, 0.9, 0.0]
    values[1, 0] = [0.8, 0.0, 0.1]
    values[:, 1] = e  # text rows are never classified
    emb = Embeddings(["p1", "p2", "p3"], ["h1", "h2", "h3"], ["image", "text"], values)
    zs = ZeroShotPrompts("text", ["a", "b", "c"], e, scale=10.0)
    t = zero_shot_table(emb, zs, "m", "1").to_pandas()
    assert t["patient"].tolist() == ["p1", "p2"] and set(t["tower"]) == {"image"}
    assert t["prediction"].tolist() == ["b", "a"]
    unit = values[:2, 0] / np.linalg.norm(values[:2, 0], axis=1, keepdims=True)
    assert np.allclose(t["similarity"], unit.max(1), atol=1e-6)
    probs = t[["probability_a", "probability_b", "probability_c"]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    expect = np.exp(10 * unit) / np.exp(10 * unit).sum(1, keepdims=True)
    assert np.allclose(probs, expect, atol=1e-5)
