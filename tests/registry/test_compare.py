"""Comparing runs, comparison artifacts and promoting the best model, on real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from modalities.errors import ClinfuseError
from registry.compare import (
    COMPARISON_KIND,
    KIND_TAG,
    PROMOTION_NOTE_TAG,
    PROMOTION_TAG,
    WARNING_TAG,
    PromotionRefused,
    best_run,
    check_promotion,
    compare_runs,
    log_comparison,
    promote_best,
    reliability_warnings,
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
from tests.servers import sqlite_uri

FEATURES = ["x1", "x2"]
REPO = Path(__file__).resolve().parents[2]
# name, fusion, modalities, test_auroc, ci_low, ci_high, test_accuracy
VARIANTS = [
    ("concat", "concat", ["ct", "note"], 0.80, 0.70, 0.88, 0.75),
    ("cross_attention", "cross_attention", ["ct", "note"], 0.86, 0.78, 0.92, 0.79),
    ("gated", "gated", ["ct", "note"], 0.86, 0.80, 0.91, 0.78),  # tie on AUROC, better CI low
    ("unimodal_ct", "concat", ["ct"], 0.71, 0.50, 0.85, 0.66),  # CI 0.35 wide: flagged
]
N_TEST = 40


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
                        "test_n": N_TEST,
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
    assert list(df.columns[:9]) == [
        "run_id",
        "run_name",
        "parent_run_id",
        "fusion",
        "modalities",
        "n_test",
        "test_auroc",
        "test_auroc_ci_low",
        "test_auroc_ci_high",
    ]
    assert df.columns[-1] == "warning" and (df["n_test"] == N_TEST).all()
    flagged = df.set_index("run_name")["warning"]
    assert "auroc 0.35" in flagged["unimodal_ct"] and flagged["gated"] == ""
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
    assert "| 1 | gated | gated | ct+note | 40 |" in md.read_text()
    assert "[0.800, 0.910]" in md.read_text()
    assert [a.path for a in client.list_artifacts(cmp_id, "figures")] == ["figures/comparison.png"]
    assert client.get_run(cmp_id).data.tags[WARNING_TAG].startswith("1 of 4 runs")
    # The comparison run itself is not a candidate next time.
    assert len(compare_runs(experiment, tracking_uri=uri)) == 4

    # Promotion: the version from the best run becomes champion; previous recorded.
    versions = {
        mv.run_id: str(mv.version) for mv in client.search_model_versions(f"name = '{model_name}'")
    }
    concat_version = versions[run_ids["concat"]]
    from registry.model import promote

    assert promote(model_name, concat_version, tracking_uri=uri) is None
    # gated [0.80, 0.91] overlaps the runner-up cross_attention [0.78, 0.92]: refused, and
    # the registry is left exactly as it was.
    with pytest.raises(PromotionRefused, match=r"overlaps runner-up 'cross_attention'.*--force"):
        promote_best(df, model_name, "test_auroc", tracking_uri=uri)
    assert current_alias_version(model_name, CHAMPION, uri) == concat_version
    assert (
        PROMOTION_TAG not in client.get_model_version(model_name, versions[run_ids["gated"]]).tags
    )
    new, previous = promote_best(df, model_name, "test_auroc", tracking_uri=uri, force=True)
    assert new == versions[run_ids["gated"]]
    tags = client.get_model_version(model_name, new).tags
    assert tags[PROMOTION_TAG] == "forced"
    assert (
        "[0.800, 0.910]" in tags[PROMOTION_NOTE_TAG]
        and "[0.780, 0.920]" in tags[PROMOTION_NOTE_TAG]
    )
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


# ------------------------------------------------------------- small-n honesty, no server
def _row(name: str, auc: float, lo: float | None, hi: float | None, n: float = 200) -> dict:
    ids = {"run_id": name, "run_name": name, "parent_run_id": "", "fusion": "", "modalities": ""}
    auroc = {"test_auroc": auc, "test_auroc_ci_low": lo, "test_auroc_ci_high": hi}
    return {**ids, "n_test": n, **auroc}


def test_reliability_warnings_thresholds() -> None:
    assert reliability_warnings(30, {"auroc": (0.6, 0.9)}) == []  # 30 patients, width 0.3: ok
    (small,) = reliability_warnings(29, {})
    assert small == "only 29 test patients (< 30)"
    assert reliability_warnings(float("nan"), {}) == ["test-set size not logged"]
    cis = {"auroc": (0.5, 0.81), "ppv": (0.1, 0.9), "npv": (0.2, 0.6), "f1": (0.1, 0.5)}
    (wide,) = reliability_warnings(100, cis, show=2)
    assert wide == "95% CI wider than 0.3: ppv 0.80, npv 0.40 and 2 more"
    # retrieval's median rank is counted in candidates: [3, 6] is not a wide CI
    ranks = {"median_rank": (3.0, 6.0), "a_to_b/median_rank": (2.0, 8.0), "recall_at_1": (
        0.4, 0.5)}
    assert reliability_warnings(100, ranks) == []


@pytest.mark.parametrize(
    ("rows", "separated", "basis", "runner_up"),
    [
        # the runner-up's CI ends below the best run's CI: told apart
        ([_row("fusion", 0.90, 0.85, 0.95), _row("unimodal_ct", 0.70, 0.60, 0.80)],
         True, "ci_separated", "unimodal_ct"),
        # overlapping CIs: the runner-up is a fusion model or a baseline, same rule
        ([_row("fusion", 0.90, 0.80, 0.95), _row("unimodal_ct", 0.85, 0.75, 0.90),
          _row("gated", 0.60, 0.50, 0.70)], False, "ci_overlap", "unimodal_ct"),
        # only the best two matter: the third run is far below but not the runner-up
        ([_row("late", 0.60, 0.50, 0.70), _row("fusion", 0.90, 0.80, 0.95),
          _row("gated", 0.89, 0.81, 0.94)], False, "ci_overlap", "gated"),
        # a missing CI shows nothing: not told apart
        ([_row("fusion", 0.90, None, None), _row("concat", 0.50, 0.45, 0.55)],
         False, "ci_overlap", "concat"),
        # a run without the metric is not a runner-up
        ([_row("fusion", 0.90, 0.85, 0.95), _row("other", float("nan"), None, None)],
         True, "only_run", None),
    ],
)  # fmt: skip
def test_check_promotion_runner_up(rows, separated, basis, runner_up) -> None:
    check = check_promotion(pd.DataFrame(rows), "test_auroc")
    assert (check.best_name, check.separated, check.basis) == ("fusion", separated, basis)
    assert check.runner_up_name == runner_up
    if runner_up:
        assert f"runner-up {runner_up!r}" in check.note


def test_check_promotion_lower_is_better() -> None:
    df = pd.DataFrame([_row("a", 0.10, 0.08, 0.12), _row("b", 0.20, 0.15, 0.25)])
    df = df.rename(columns=lambda c: c.replace("auroc", "brier"))
    check = check_promotion(df, "test_brier", higher_is_better=False)
    assert check.best_name == "a" and check.separated


# ---------------------------------------------------------------- gate on a real store
def _log_scored(
    uri: str, workdir: Path, experiment: str, model: str | None, name: str, ci: tuple, n: int = 120
) -> str:
    """One finished run with test metrics (and, with ``model``, a registered version)."""
    auc, lo, hi = ci
    with Tracker(experiment, name, tracking_uri=uri, workdir=workdir) as tr:
        tr.log_params({"fusion": name, "modalities": "ct,note"})
        tr.log_metrics({"test_auroc": auc, "test_auroc_ci_low": lo, "test_auroc_ci_high": hi,
                        "test_n": n})  # fmt: skip
        if model:
            pred = _linear_reference_builder({"features": FEATURES})
            log_model(tr, pred.model.state_dict(), {"features": FEATURES}, registered_name=model)
    return str(tr.run_id)


def test_promotion_gate_on_embedded_store(workdir: Path) -> None:
    """Separated CIs promote (tagged ci_separated); an overlapping runner-up refuses and
    changes nothing; force promotes and says so."""
    from mlflow import MlflowClient

    from registry.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(None, workdir)
    client = MlflowClient(uri)
    exp, model = "gate", "gate-model"
    _log_scored(uri, workdir, exp, model, "fusion", (0.90, 0.85, 0.95))
    _log_scored(uri, workdir, exp, None, "unimodal_ct", (0.70, 0.60, 0.80))
    v1, previous = promote_best(compare_runs(exp, tracking_uri=uri), model, tracking_uri=uri)
    assert previous is None
    assert client.get_model_version(model, v1).tags[PROMOTION_TAG] == "ci_separated"

    # A new, slightly better run whose CI overlaps the champion's run: not a real win.
    _log_scored(uri, workdir, exp, model, "gated", (0.92, 0.84, 0.97), n=24)
    df = compare_runs(exp, tracking_uri=uri)
    assert list(df["run_name"]) == ["gated", "fusion", "unimodal_ct"]
    assert df.loc[0, "warning"].startswith("only 24 test patients (< 30)")
    with pytest.raises(PromotionRefused) as refused:
        promote_best(df, model, tracking_uri=uri)
    assert "\n" not in str(refused.value)
    assert current_alias_version(model, CHAMPION, uri) == v1
    v2 = max((mv for mv in client.search_model_versions(f"name = '{model}'")),
             key=lambda mv: int(mv.version)).version  # fmt: skip
    assert PROMOTION_TAG not in client.get_model_version(model, v2).tags

    new, previous = promote_best(df, model, tracking_uri=uri, force=True)
    assert (new, previous) == (str(v2), v1)
    tags = client.get_model_version(model, new).tags
    assert tags[PROMOTION_TAG] == "forced" and "runner-up 'fusion'" in tags[PROMOTION_NOTE_TAG]


# ------------------------------------------------------------------ the CLI, subprocess
def _cli(*args: str, uri: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # rich wraps at 80 columns off a terminal: a wide one shows the message as the one
    # line it is
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO),
           "COLUMNS": "400"}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "workflows.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300, check=False)  # fmt: skip


@pytest.mark.slow
def test_cli_compare_refuses_overlapping_promotion(
    mlflow_server: str, workdir: Path, tmp_path: Path
) -> None:
    """``clinfuse compare --promote`` exits 2 with one line and leaves everything as it was;
    ``--force`` promotes and tags the version as forced."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    exp, model = f"cli-gate-{uuid.uuid4().hex[:8]}", f"cli-gate-{uuid.uuid4().hex[:8]}"
    _log_scored(mlflow_server, workdir, exp, model, "fusion", (0.81, 0.70, 0.90), n=18)
    _log_scored(mlflow_server, workdir, exp, None, "unimodal_note", (0.78, 0.66, 0.88), n=18)
    args = ("compare", "--experiment", exp, "--promote", model, "--workdir", str(workdir))

    refused = _cli(*args, uri=mlflow_server, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-3000:]
    err = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: not promoting"), refused.stderr
    assert "overlaps runner-up 'unimodal_note'" in err[0] and "--force" in err[0]
    assert "n_test" in refused.stdout and "only 18 test patients" in refused.stdout
    assert current_alias_version(model, CHAMPION, mlflow_server) is None
    experiment_id = client.get_experiment_by_name(exp).experiment_id
    assert len(client.search_runs([experiment_id])) == 2  # no comparison run logged

    forced = _cli(*args, "--force", "--json", uri=mlflow_server, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    summary = json.loads(forced.stdout)  # stdout is only JSON; the warnings went to stderr
    assert "only 18 test patients" in forced.stderr
    assert summary["promotion"] == "forced" and summary["ranking"][0]["n_test"] == 18
    version = current_alias_version(model, CHAMPION, mlflow_server)
    assert version == summary["champion"]
    assert client.get_model_version(model, version).tags[PROMOTION_TAG] == "forced"

    lone = _cli("compare", "--experiment", exp, "--force", uri=mlflow_server, cwd=tmp_path)
    assert lone.returncode == 2 and "--force only applies with --promote" in lone.stderr


def test_default_metric_is_the_task_monitored_one_as_mlflow_stores_it(workdir: Path) -> None:
    from registry.compare import metric_key, task_metric

    uri = sqlite_uri(workdir / "mlflow.db")
    with Tracker("retr", "concat", tracking_uri=uri, workdir=workdir) as tr:
        tr.log_params({"task": "contrastive"})
        tr.log_metrics({"test_recall@1": 0.9, "test_median_rank": 1.0})
    with Tracker("mixed", "a", tracking_uri=uri, workdir=workdir) as tr:
        tr.log_params({"task": "contrastive"})
    with Tracker("mixed", "b", tracking_uri=uri, workdir=workdir) as tr:
        tr.log_params({"task": "binary"})
    assert task_metric("retr", uri) == ("test_recall_at_1", True)
    assert task_metric("mixed", uri) == ("test_auroc", True)  # several tasks: no guess
    assert task_metric("no-such-experiment", uri) == ("test_auroc", True)
    assert metric_key("test_recall@1") == "test_recall_at_1"
    df = compare_runs("retr", metric_key("test_recall@1"), tracking_uri=uri)
    assert df["test_recall_at_1"].tolist() == [0.9]


def test_ci_keys_reach_mlflow_and_compare_as_test_recall_at_1() -> None:
    import numpy as np

    from fusion.metrics import retrieval_metrics
    from registry.compare import ci_pairs, metric_key, reliability_warnings
    from registry.experiment import _metric_key
    from registry.tracking import _safe_key

    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16))
    b = a + rng.normal(scale=2.0, size=a.shape)  # a noisy partner: recall well below 1
    unit = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in {"a": a, "b": b}.items()}
    m = retrieval_metrics(unit, {"a": np.ones(200, bool), "b": np.ones(200, bool)}, n_boot=300)
    logged = {_safe_key(_metric_key(k)): v for k, v in m.items()}  # what train logs
    assert metric_key("test_recall@1") == "test_recall_at_1"
    assert logged["test_recall_at_1_ci_low"] == m["recall@1_ci_low"]
    cis = ci_pairs(logged, "test_")
    assert cis["recall_at_1"] == (m["recall@1_ci_low"], m["recall@1_ci_high"])
    assert cis["a_to_b/recall_at_10"] == (m["a_to_b/recall@10_ci_low"],
                                          m["a_to_b/recall@10_ci_high"])
    assert "median_rank" in cis
    # Rank CIs (in candidates) are not judged against the 0-1 width limit.
    assert reliability_warnings(200, {k: v for k, v in cis.items() if "median" in k}) == []
