"""Comparing runs, comparison artifacts and promoting the best model, on real servers."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from modalities.errors import ClinfuseError
from registry.compare import (
    COMPARISON_KIND,
    KIND_TAG,
    best_run,
    compare_runs,
    log_comparison,
    promote_best,
    render_table,
    to_markdown,
)
from registry.model import (
    CHAMPION,
    PREVIOUS_CHAMPION_TAG,
    _linear_reference_builder,
    current_alias_version,
    log_model,
)
from registry.tracking import Tracker

FEATURES = ["x1", "x2"]
# name, fusion, modalities, test_auroc, ci_low, ci_high, test_accuracy
VARIANTS = [
    ("concat", "concat", ["ct", "note"], 0.80, 0.70, 0.88, 0.75),
    ("cross_attention", "cross_attention", ["ct", "note"], 0.86, 0.78, 0.92, 0.79),
    ("gated", "gated", ["ct", "note"], 0.86, 0.80, 0.91, 0.78),  # tie on AUROC, better CI low
    ("unimodal_ct", "concat", ["ct"], 0.71, 0.60, 0.80, 0.66),
]


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def _log_experiment(uri: str, workdir: Path, experiment: str, model_name: str) -> dict[str, str]:
    """A parent run with one child run per variant, each with metrics and a registered model."""
    run_ids: dict[str, str] = {}
    with Tracker(experiment, "experiment", tracking_uri=uri, workdir=workdir) as parent:
        parent.log_params({"cohort": {"n": 40}})
        for i, (name, fusion, mods, auc, lo, hi, acc) in enumerate(VARIANTS):
            with parent.child(name) as tr:
                tr.log_params({"variant": {"fusion": fusion, "modalities": mods}})
                for epoch in range(3):
                    tr.log_metrics({"val_auroc": auc - 0.1 + epoch * 0.03}, step=epoch)
                tr.log_metrics(
                    {
                        "test_auroc": auc,
                        "test_auroc_ci_low": lo,
                        "test_auroc_ci_high": hi,
                        "test_accuracy": acc,
                    }
                )
                torch.manual_seed(i)
                pred = _linear_reference_builder({"features": FEATURES})
                log_model(
                    tr, pred.model.state_dict(), {"features": FEATURES}, registered_name=model_name
                )
                run_ids[name] = tr.run_id
    return run_ids


def _check_compare_and_promote(uri: str, workdir: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    experiment, model_name = f"cmp-{uuid.uuid4().hex[:8]}", f"fusion-{uuid.uuid4().hex[:8]}"
    run_ids = _log_experiment(uri, workdir, experiment, model_name)

    df = compare_runs(experiment, "test_auroc", tracking_uri=uri)
    # The parent run logged no test_ metric: only the four variants are compared.
    assert list(df["run_name"]) == ["gated", "cross_attention", "concat", "unimodal_ct"]
    assert list(df.columns[:8]) == [
        "run_id",
        "run_name",
        "parent_run_id",
        "fusion",
        "modalities",
        "test_auroc",
        "test_auroc_ci_low",
        "test_auroc_ci_high",
    ]
    assert "test_accuracy" in df.columns and "val_auroc" not in df.columns
    assert set(df["parent_run_id"]) == {df["parent_run_id"].iloc[0]} != {""}
    row = df.set_index("run_name").loc["unimodal_ct"]
    assert row["fusion"] == "concat" and row["modalities"] == "ct"
    assert df.set_index("run_name").loc["gated", "modalities"] == "ct+note"

    # Comparison artifacts: CSV with the same content, markdown, a figure.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def chart(frame: pd.DataFrame):
        fig, ax = plt.subplots()
        ax.barh(frame["run_name"], frame["test_auroc"])
        return fig

    cmp_id = log_comparison(df, experiment, figure_fn=chart, tracking_uri=uri, workdir=workdir)
    client = MlflowClient(uri)
    assert client.get_run(cmp_id).data.tags[KIND_TAG] == COMPARISON_KIND
    csv = Path(client.download_artifacts(cmp_id, "tables/comparison.csv", str(tmp_path)))
    logged = pd.read_csv(csv)
    assert list(logged["run_name"]) == list(df["run_name"])
    assert logged["test_auroc"].tolist() == pytest.approx(df["test_auroc"].tolist())
    md = Path(client.download_artifacts(cmp_id, "tables/comparison.md", str(tmp_path)))
    assert "| 1 | gated |" in md.read_text() and "[0.800, 0.910]" in md.read_text()
    assert [a.path for a in client.list_artifacts(cmp_id, "figures")] == ["figures/comparison.png"]
    # The comparison run itself is not a candidate next time.
    assert len(compare_runs(experiment, tracking_uri=uri)) == 4

    # Promotion: the version from the best run becomes champion; previous recorded.
    versions = {
        mv.run_id: str(mv.version) for mv in client.search_model_versions(f"name = '{model_name}'")
    }
    concat_version = versions[run_ids["concat"]]
    from registry.model import promote

    assert promote(model_name, concat_version, tracking_uri=uri) is None
    new, previous = promote_best(df, model_name, "test_auroc", tracking_uri=uri)
    assert new == versions[run_ids["gated"]]
    assert previous == concat_version
    assert current_alias_version(model_name, CHAMPION, uri) == new
    assert client.get_model_version(model_name, new).tags[PREVIOUS_CHAMPION_TAG] == previous
    assert client.get_registered_model(model_name).tags[PREVIOUS_CHAMPION_TAG] == previous

    # Errors a user can cause: a metric nobody logged; a model the best run never logged.
    with pytest.raises(ClinfuseError, match="test_f1"):
        promote_best(df, model_name, "test_f1", tracking_uri=uri)
    with pytest.raises(ClinfuseError, match="no version of registered model"):
        promote_best(df, "some-other-model", tracking_uri=uri)


@pytest.mark.slow
def test_compare_and_promote_sqlite_server(mlflow_server: str, workdir: Path, tmp_path: Path):
    _check_compare_and_promote(mlflow_server, workdir, tmp_path)


@pytest.mark.slow
def test_compare_and_promote_postgres_server(
    mlflow_server_pg: str, workdir: Path, tmp_path: Path
) -> None:
    _check_compare_and_promote(mlflow_server_pg, workdir, tmp_path)


def test_compare_unknown_experiment_is_a_clear_error(workdir: Path) -> None:
    from registry.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(None, workdir)
    with pytest.raises(ClinfuseError, match="no MLflow experiment named 'nope'"):
        compare_runs("nope", tracking_uri=uri)


def test_compare_embedded_skips_unfinished_runs(workdir: Path) -> None:
    with Tracker("emb", "done", workdir=workdir) as tr:
        tr.log_metrics({"test_auroc": 0.9})
    running = Tracker("emb", "running", workdir=workdir).start()
    running.log_metrics({"test_auroc": 0.99})
    running.flush()
    df = compare_runs("emb", tracking_uri=tr.tracking_uri)
    assert list(df["run_name"]) == ["done"]
    running.finish()


# --------------------------------------------------------------------------- no server
def test_rank_render_and_markdown_without_mlflow() -> None:
    df = _frame(
        [
            {"run_id": "a", "run_name": "a", "parent_run_id": "", "fusion": "concat",
             "modalities": "ct", "test_auroc": 0.7, "test_auroc_ci_low": 0.6,
             "test_auroc_ci_high": 0.8},
            {"run_id": "b", "run_name": "b", "parent_run_id": "", "fusion": "gated",
             "modalities": "ct+note", "test_auroc": float("nan"), "test_auroc_ci_low": None,
             "test_auroc_ci_high": None},
            {"run_id": "c", "run_name": "c", "parent_run_id": "", "fusion": "late",
             "modalities": "ct+note", "test_auroc": 0.7, "test_auroc_ci_low": 0.65,
             "test_auroc_ci_high": 0.75},
        ]
    )  # fmt: skip
    assert best_run(df)["run_id"] == "c"  # tie on AUROC broken by CI low
    table = render_table(df)
    assert [c.header for c in table.columns][:4] == ["rank", "run_name", "fusion", "modalities"]
    assert table.row_count == 3
    md = to_markdown(df)
    assert md.splitlines()[0].startswith("| rank | run_name |")
    assert "0.700 [0.600, 0.800]" in md
    with pytest.raises(ClinfuseError, match="test_f1"):
        best_run(df, "test_f1")
