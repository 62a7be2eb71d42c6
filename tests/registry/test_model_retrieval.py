"""A retrieval (contrastive) model logs like any other: code-free pyfunc with one
``embedding_<tower>`` column per tower in its signature, registered, and loaded back by the
same verified loader (``load_predictor``) and by ``mlflow.pyfunc`` with equal outputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from fusion.artifact import ModelArtifact
from fusion.config import ModelConfig
from fusion.predictor import build_predictor
from modalities.cohort import CohortConfig
from registry.model import load_predictor, load_pyfunc, log_model
from registry.tracking import Tracker
from tests.scoring.retrieval_data import cohort_section

BUILDER = "fusion.predictor:build_predictor"


@pytest.mark.slow
def test_contrastive_model_logs_registers_and_loads_with_embedding_columns(workdir) -> None:
    cohort = CohortConfig.model_validate(cohort_section())
    model = ModelConfig(d_model=16, head={"name": "contrastive", "options": {"proj_dim": 8}})
    config = ModelArtifact.build(cohort, model, ["labs", "vitals"]).to_config()
    torch.manual_seed(0)
    predictor = build_predictor(config)
    with Tracker("retrieval", "concat", workdir=workdir) as tr:
        info = log_model(tr, predictor.model.state_dict(), config, builder=BUILDER,
                         registered_name="retr_model")
    outputs = {c.name: c for c in info.signature.outputs.inputs}
    assert list(outputs) == ["embedding_labs", "embedding_vitals", "present_labs",
                             "present_vitals", "rejected"]
    assert not outputs["embedding_labs"].required  # absent tower: no embedding
    assert "Array" in repr(outputs["embedding_labs"].type)
    df = pd.DataFrame({"labs": [json.dumps({"l0": 0.3}), json.dumps({"l2": -1.0})],
                       "vitals": [json.dumps({"v4": 1.5}), ""]})
    want = predictor.predict_dataframe(df)
    loaded, name, version = load_predictor("models:/retr_model@challenger", tr.tracking_uri)
    assert (name, version) == ("retr_model", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        via_mlflow = load_pyfunc("models:/retr_model@challenger", tr.tracking_uri).predict(df)
    for got in (loaded.predict_dataframe(df), via_mlflow):
        np.testing.assert_allclose(np.stack(got["embedding_labs"]),
                                   np.stack(want["embedding_labs"]), atol=1e-6)
        assert got["embedding_vitals"][1] is None and len(got["embedding_vitals"][0]) == 8
