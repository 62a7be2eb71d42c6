"""A tiny retrieval cohort for scoring tests: two tabular towers (labs, vitals) per patient.

Both towers are noisy linear views of one latent per patient, so a contrastive model learns
to pair them in a few epochs; every ``MISSING_EVERY``-th patient has no vitals (a row with
one tower). Patient IDs look like MRNs (``MRN-0007``) so tests can check none leaks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FEATS = {"labs": [f"l{i}" for i in range(6)], "vitals": [f"v{i}" for i in range(5)]}
MISSING_EVERY = 9  # patients 4, 13, 22, ... have labs only


def write_manifest(path: Path, n: int, seed: int = 0) -> Path:
    """``patient_id, labs, vitals`` (inline JSON); no label column (retrieval needs none)."""
    rng = np.random.default_rng(seed)
    mix = {m: rng.normal(size=(3, len(f))) for m, f in FEATS.items()}
    rows = []
    for i in range(n):
        z = rng.normal(size=3)
        row = {"patient_id": f"MRN-{i:04d}"}
        for m, feats in FEATS.items():
            v = z @ mix[m] + 0.05 * rng.normal(size=len(feats))
            row[m] = json.dumps(dict(zip(feats, v.round(4).tolist(), strict=True)))
        if i % MISSING_EVERY == 4:
            row["vitals"] = ""
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def cohort_section(task: str = "contrastive") -> dict[str, Any]:
    """The recipe's ``cohort`` section (also what the e2e test writes into its YAML)."""
    return {
        "task": task,
        "labels": [],
        "modalities": {m: {"type": "tabular", "spec": {"features": f},
                           "encoder": {"out_dim": 32, "hidden": 64, "dropout": 0.0}}
                       for m, f in FEATS.items()},
    }
