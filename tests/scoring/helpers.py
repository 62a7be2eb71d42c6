"""Shared helpers of the scoring tests: the tiny recipe without ``workflows``, PostgreSQL reads.

Lower-layer tests do not import ``workflows``: ``recipe`` reads ``configs/<name>.yaml`` (with
its ``base``) with yaml and validates the cohort and model sections with their own pydantic
models, as ``workflows.config.load_config`` does for those sections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from fusion.config import ModelConfig
from modalities.cohort import CohortConfig
from scoring.stores.postgres import TABLE

REPO = Path(__file__).resolve().parents[2]
MODS = ["ct", "note"]
NOTE_TINY = ("cohort", "modalities", "note", "encoder", "model")  # a tiny random note encoder
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def recipe(name: str = "tiny") -> tuple[CohortConfig, ModelConfig]:
    """The cohort and model sections of a shipped recipe, note encoder ``tiny-random``."""
    data = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    base = data.pop("base", None)
    if base:
        data = _merge(yaml.safe_load((REPO / "configs" / f"{base}.yaml").read_text()), data)
    node = data
    for k in NOTE_TINY[:-1]:
        node = node[k]
    node[NOTE_TINY[-1]] = "tiny-random"
    return (CohortConfig.model_validate(data["cohort"]),
            ModelConfig.model_validate(data.get("model", {})))


def predictor_config(modalities: list[str] = MODS) -> dict[str, Any]:
    """A predictor config built the way ``train_variant`` builds one (``ModelArtifact``)."""
    from fusion.artifact import ModelArtifact

    cohort, model = recipe("tiny")
    return ModelArtifact.build(cohort, model, modalities, prior=0.3,
                               label_names=["label"]).to_config()


def db_rows(url: str, model_name: str) -> pd.DataFrame:
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT patient, model_version, input_hash, probability, prediction, "
                    f"present_ct, present_note FROM {TABLE} WHERE model_name = %s",
                    (model_name,))
        cols = [d[0] for d in cur.description]
        rows = cur.fetchall()
    conn.close()
    return pd.DataFrame(rows, columns=cols)


def eligible_rows(prepared: Path) -> pd.DataFrame:
    """Independent expectation: not excluded, CT or note accepted."""
    f = pd.read_parquet(prepared / "cohort.parquet")
    ok = (f["ct_status"] == "ok") | (f["note_status"] == "ok")
    return f[~f["excluded"] & ok].reset_index(drop=True)


def assert_db_equals_parquet(url: str, out: Path, model_name: str) -> None:
    pq_df = pd.read_parquet(out / "predictions.parquet")
    pq_df = pq_df[pq_df["model_name"] == model_name]
    db = db_rows(url, model_name)
    key = ["patient", "model_version", "input_hash"]
    assert not db.duplicated(key).any() and not pq_df.duplicated(key).any()
    merged = pq_df.merge(db, on=key, how="outer", suffixes=("", "_db"), indicator=True)
    assert (merged["_merge"] == "both").all(), merged["_merge"].value_counts()
    np.testing.assert_allclose(merged["probability"], merged["probability_db"], rtol=0,
                               atol=1e-12)
    assert (merged["prediction"].astype(str) == merged["prediction_db"]).all()
    assert (merged["present_ct"] == merged["present_ct_db"]).all()
