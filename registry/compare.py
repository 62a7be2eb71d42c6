"""Side-by-side comparison of runs in one experiment, and promotion of the best model.

Which fusion and modalities a run used is read from tags ``clinfuse.fusion`` /
``clinfuse.modalities`` when the training wrapper set them, else from params
(``fusion``, ``variant.fusion``, ``model.fusion.name``; ``modalities``,
``variant.modalities``). Confidence intervals come from metrics ``<metric>_ci_low`` /
``<metric>_ci_high`` (what ``fusion.metrics`` produces). Runs tagged
``clinfuse.kind=comparison`` (what ``log_comparison`` creates) are left out.

Small test sets make rankings noisy, so this module is also where selection is kept
honest: ``reliability_warnings`` flags a run whose test set has fewer than
``MIN_TEST_PATIENTS`` patients or whose CI is wider than ``MAX_CI_WIDTH``, and
``promote_best`` refuses (``PromotionRefused``) when the best run's CI overlaps the
runner-up's, unless forced. See docs/metrics.md, "Small test sets".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modalities.errors import ClinfuseError

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

KIND_TAG = "clinfuse.kind"
COMPARISON_KIND = "comparison"
FUSION_KEYS = ("clinfuse.fusion", "fusion", "variant.fusion", "model.fusion.name")
MODALITY_KEYS = ("clinfuse.modalities", "modalities", "variant.modalities")
BASE_COLUMNS = ["run_id", "run_name", "parent_run_id", "fusion", "modalities"]
N_TEST = "n_test"
WARNING = "warning"
# Fewer test patients than this, or a 95% CI wider than this, and a ranking is noise-prone.
MIN_TEST_PATIENTS = 30
MAX_CI_WIDTH = 0.3
# MAX_CI_WIDTH is on the 0-1 scale of rates and AUROC; metrics ending so are counted in
# ranks (retrieval's median rank: a CI of [3, 5] is not "wide") and are not judged by it.
RANK_METRICS = ("median_rank",)
WARNING_TAG = "clinfuse.warning"
PROMOTION_TAG = "clinfuse.promotion"  # on the promoted version: forced | ci_separated | only_run
PROMOTION_NOTE_TAG = "clinfuse.promotion_note"  # the comparison that decided it, one line


class PromotionRefused(ClinfuseError):
    """The best run cannot be told apart from the runner-up; nothing was promoted."""


def ci_pairs(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[float, float]]:
    """``{name: (low, high)}`` for every ``<prefix><name>_ci_low``/``_ci_high`` pair logged."""
    out: dict[str, tuple[float, float]] = {}
    for key, low in metrics.items():
        if not (key.startswith(prefix) and key.endswith("_ci_low")):
            continue
        name = key.removesuffix("_ci_low")
        high = metrics.get(f"{name}_ci_high")
        if _finite(low) and _finite(high):
            out[name.removeprefix(prefix)] = (float(low), float(high))
    return out


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def reliability_warnings(
    n_test: Any, cis: Mapping[str, tuple[float, float]], show: int = 3
) -> list[str]:
    """Why a run's test numbers are too uncertain to rank on (empty when they are not).

    Flags a test set under ``MIN_TEST_PATIENTS`` patients (or an unknown size) and CIs
    wider than ``MAX_CI_WIDTH``, naming the ``show`` widest (rank metrics,
    ``RANK_METRICS``, are not on that scale and are skipped).
    """
    out: list[str] = []
    if not _finite(n_test):
        out.append("test-set size not logged")
    elif float(n_test) < MIN_TEST_PATIENTS:
        out.append(f"only {int(n_test)} test patients (< {MIN_TEST_PATIENTS})")
    # rounded so that 0.9 - 0.6 (0.30000000000000004) is not "wider than 0.3"
    widths = ((round(high - low, 9), name) for name, (low, high) in cis.items()
              if not name.endswith(RANK_METRICS))
    wide = sorted(((w, name) for w, name in widths if w > MAX_CI_WIDTH), reverse=True)
    if wide:
        names = ", ".join(f"{name} {width:.2f}" for width, name in wide[:show])
        more = f" and {len(wide) - show} more" if len(wide) > show else ""
        out.append(f"95% CI wider than {MAX_CI_WIDTH}: {names}{more}")
    return out


def warning_text(warnings: list[str]) -> str:
    """One line for a ``clinfuse.warning`` tag or a table cell ('' when nothing to say)."""
    if not warnings:
        return ""
    return "; ".join(warnings) + ": differences between runs may be noise"


def _first(sources: list[dict[str, str]], keys: tuple[str, ...]) -> str:
    for key in keys:
        for src in sources:
            if src.get(key):
                return _clean_list(src[key])
    return ""


def _clean_list(value: str) -> str:
    """``'["ct", "note"]'`` (a JSON-encoded param) -> ``'ct+note'``; other values unchanged."""
    v = value.strip()
    if v.startswith("[") and v.endswith("]"):
        items = [p.strip().strip("'\"") for p in v[1:-1].split(",") if p.strip()]
        return "+".join(items)
    return v


def metric_key(metric: str) -> str:
    """A metric name as MLflow stores it (``test_recall@1`` -> ``test_recall_at_1``)."""
    from registry.tracking import _safe_key

    return _safe_key(metric)


def task_metric(experiment: str, tracking_uri: str | None = None) -> tuple[str, bool]:
    """``(metric, higher_is_better)`` to rank ``experiment`` by when none is given: the
    monitored metric of the task its runs logged (param ``task``; ``fusion.tasks``), as a
    test metric (``test_auroc`` binary, ``test_recall_at_1`` contrastive). Runs of several
    tasks, or none that says, fall back to ``test_auroc``."""
    from mlflow import MlflowClient

    from fusion.tasks import get_task
    from registry.tracking import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(tracking_uri, Path.cwd()))
    exp = client.get_experiment_by_name(experiment)
    tasks: set[str] = set()
    if exp is not None:
        runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                                  max_results=1000)
        tasks = {r.data.params["task"] for r in runs if r.data.params.get("task")}
    if len(tasks) != 1:
        return "test_auroc", True
    try:
        task = get_task(tasks.pop())
    except ClinfuseError:  # a task this version does not know
        return "test_auroc", True
    return metric_key(f"test_{task.monitor}"), task.monitor_mode == "max"


def compare_runs(
    experiment: str,
    metric: str = "test_auroc",
    tracking_uri: str | None = None,
    higher_is_better: bool = True,
) -> pd.DataFrame:
    """One row per finished run (child runs included) that logged any ``test_`` metric.

    Columns: run id/name, parent run id, fusion, modalities, ``metric`` with
    ``metric_ci_low``/``metric_ci_high`` when logged, then the other ``test_`` metrics.
    Sorted best first (ties broken by the CI lower bound); runs without ``metric`` last.
    """
    import pandas as pd
    from mlflow import MlflowClient

    from registry.tracking import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(tracking_uri, Path.cwd()))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ClinfuseError(
            f"no MLflow experiment named {experiment!r}; train first or check "
            "--experiment and MLFLOW_TRACKING_URI"
        )
    rows: list[dict[str, Any]] = []
    token = None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            max_results=1000,
            page_token=token,
        )
        for run in page:
            tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
            if tags.get(KIND_TAG) == COMPARISON_KIND:
                continue
            test_metrics = {k: v for k, v in metrics.items() if k.startswith("test_")}
            if metric not in metrics and not test_metrics:
                continue
            row: dict[str, Any] = {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name or "",
                "parent_run_id": tags.get("mlflow.parentRunId", ""),
                "fusion": _first([tags, params], FUSION_KEYS),
                "modalities": _first([tags, params], MODALITY_KEYS),
            }
            row.update(test_metrics)
            for key in (metric, f"{metric}_ci_low", f"{metric}_ci_high"):
                if key in metrics:
                    row[key] = metrics[key]
            row[N_TEST] = _n_test(metrics, params)
            rows.append(row)
        token = page.token
        if not token:
            break

    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=[*BASE_COLUMNS, N_TEST, metric, WARNING])
    if metric not in df.columns:
        df[metric] = math.nan
    df[WARNING] = [
        warning_text(reliability_warnings(r[N_TEST], ci_pairs(r.to_dict(), "test_")))
        for _, r in df.iterrows()
    ]
    lead = [metric] + [c for c in (f"{metric}_ci_low", f"{metric}_ci_high") if c in df.columns]
    fixed = {*BASE_COLUMNS, N_TEST, WARNING, *lead}
    rest = sorted(c for c in df.columns if c not in fixed)
    df = df[[*BASE_COLUMNS, N_TEST, *lead, *rest, WARNING]]
    return _rank(df, metric, higher_is_better)


def _n_test(metrics: Mapping[str, float], params: Mapping[str, str]) -> float:
    """Test patients behind a run's numbers: metric ``test_n`` (what ``evaluate`` logs as
    ``n``), else a metric or param ``n_test``; NaN when the run never said."""
    for value in (metrics.get("test_n"), metrics.get(N_TEST), params.get(N_TEST)):
        if _finite(value):
            return float(value)
    return math.nan


def _rank(df: pd.DataFrame, metric: str, higher_is_better: bool = True) -> pd.DataFrame:
    """Sort best first by ``metric`` then by its CI lower bound; NaN last."""
    low = f"{metric}_ci_low"
    keys, asc = [metric], [not higher_is_better]
    if low in df.columns:
        keys.append(low)
        asc.append(not higher_is_better)
    keys.append("run_name")  # deterministic order for exact ties
    asc.append(True)
    return df.sort_values(keys, ascending=asc, na_position="last", kind="mergesort").reset_index(
        drop=True
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _fmt_n(value: Any) -> str:
    return str(int(value)) if _finite(value) else "?"


def _display_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Readable view: rank, names, ``metric [low, high]`` cells; ids and CI columns dropped."""
    import pandas as pd

    skip = {*BASE_COLUMNS, N_TEST, WARNING, "test_n"}
    metric_cols = [c for c in df.columns if c not in skip]
    out = pd.DataFrame({"rank": range(1, len(df) + 1)})
    for col in ("run_name", "fusion", "modalities"):
        out[col] = df[col].astype(str).to_numpy() if col in df.columns else ""
    out[N_TEST] = [_fmt_n(v) for v in df[N_TEST]] if N_TEST in df.columns else "?"
    for col in metric_cols:
        if col.endswith(("_ci_low", "_ci_high")):
            continue
        cells = []
        for _, r in df.iterrows():
            cell = _fmt(r[col])
            lo, hi = r.get(f"{col}_ci_low"), r.get(f"{col}_ci_high")
            if cell and lo is not None and hi is not None and not (pd.isna(lo) or pd.isna(hi)):
                cell += f" [{lo:.3f}, {hi:.3f}]"
            cells.append(cell)
        out[col] = cells
    if WARNING in df.columns:
        out[WARNING] = df[WARNING].fillna("").astype(str).to_numpy()
    return out


def render_table(df: pd.DataFrame, title: str = "Run comparison") -> Table:
    """A rich Table of ``compare_runs`` output (metric cells show ``value [CI]``)."""
    from rich.table import Table

    view = _display_frame(df)
    table = Table(title=title)
    for col in view.columns:
        numeric = col in ("rank", N_TEST) or col.startswith(("test_", "val_"))
        table.add_column(str(col), justify="right" if numeric else "left")
    for _, row in view.iterrows():
        table.add_row(*(_fmt(v) for v in row.tolist()))
    return table


def to_markdown(df: pd.DataFrame) -> str:
    """GitHub-flavoured markdown of the display view (no tabulate dependency)."""
    view = _display_frame(df)
    header = "| " + " | ".join(map(str, view.columns)) + " |"
    sep = "|" + "|".join("---" for _ in view.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in view.itertuples(index=False)]
    return "\n".join([header, sep, *body]) + "\n"


def log_comparison(
    df: pd.DataFrame,
    experiment: str,
    figure_fn: Callable[[pd.DataFrame], Any] | None = None,
    tracking_uri: str | None = None,
    workdir: Path | str = ".",
) -> str:
    """Log ``df`` as CSV + markdown (and ``figure_fn(df)`` as a PNG) in a new run.

    The run is named ``comparison`` and tagged ``clinfuse.kind=comparison`` so later
    comparisons skip it. Returns its run id.
    """
    from registry.tracking import Tracker

    tracker = Tracker(
        experiment,
        "comparison",
        tracking_uri=tracking_uri,
        workdir=workdir,
        tags={KIND_TAG: COMPARISON_KIND},
    )
    with tracker:
        tracker.log_table(df, "comparison")
        tracker.log_text(to_markdown(df), "tables/comparison.md")
        tracker.set_tags({"clinfuse.compared_runs": len(df)})
        flagged = df[df[WARNING].astype(bool)] if WARNING in df.columns else df.iloc[:0]
        if len(flagged):
            fewest = _fmt_n(df[N_TEST].min()) if N_TEST in df.columns else "?"
            tracker.set_tags(
                {
                    WARNING_TAG: f"{len(flagged)} of {len(df)} runs rest on fewer than "
                    f"{MIN_TEST_PATIENTS} test patients or a 95% CI wider than {MAX_CI_WIDTH} "
                    f"(fewest test patients: {fewest}); see column {WARNING!r} of "
                    "tables/comparison.csv"
                }
            )
        if figure_fn is not None:
            import matplotlib.pyplot as plt

            fig = figure_fn(df)
            try:
                tracker.log_figure(fig, "figures/comparison.png")
            finally:
                plt.close(fig)
    return str(tracker.run_id)


def best_run(df: pd.DataFrame, metric: str = "test_auroc", higher_is_better: bool = True) -> Any:
    """The best row of a ``compare_runs`` frame by ``metric`` (ties: CI lower bound)."""
    if metric not in df.columns or df[metric].isna().all():
        raise ClinfuseError(
            f"no run in the comparison logged metric {metric!r}; pick one of: "
            f"{', '.join(c for c in df.columns if c.startswith('test_')) or 'none logged'}"
        )
    ranked = _rank(df[df[metric].notna()], metric, higher_is_better)
    return ranked.iloc[0]


@dataclass(frozen=True)
class PromotionCheck:
    """Whether the best run is distinguishable from the runner-up on the compared metric."""

    best_run_id: str
    best_name: str
    runner_up_name: str | None
    separated: bool
    basis: str  # "ci_separated", "only_run" or "ci_overlap"
    note: str  # one line saying why, with both intervals


def _interval(row: Any, metric: str) -> tuple[float, float] | None:
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    return (float(low), float(high)) if _finite(low) and _finite(high) else None


def _describe(row: Any, metric: str) -> str:
    ci = _interval(row, metric)
    span = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else " (no CI logged)"
    return f"{row['run_name']!r} {float(row[metric]):.3f}{span}"


def check_promotion(
    df: pd.DataFrame, metric: str = "test_auroc", higher_is_better: bool = True
) -> PromotionCheck:
    """Compare the best run with the runner-up (the next best run, whatever its kind).

    The runs are told apart only when both logged a 95% CI for ``metric`` and the two
    intervals do not overlap. That is deliberately conservative: two overlapping CIs can
    still differ significantly, but a selection that survives this rule is not a coin flip.
    A missing CI counts as overlap (nothing shows the difference is real).
    """
    best = best_run(df, metric, higher_is_better)  # raises when nobody logged the metric
    ranked = _rank(df[df[metric].notna()], metric, higher_is_better)
    if len(ranked) < 2:
        note = f"{_describe(best, metric)} is the only run with {metric}"
        return PromotionCheck(best["run_id"], best["run_name"], None, True, "only_run", note)
    runner = ranked.iloc[1]
    a, b = _interval(best, metric), _interval(runner, metric)
    separated = a is not None and b is not None and (a[0] > b[1] or b[0] > a[1])
    relation = "is separated from" if separated else "overlaps"
    if a is None or b is None:
        relation = "cannot be told apart from"
    note = (
        f"best run {_describe(best, metric)} {relation} runner-up "
        f"{_describe(runner, metric)} on {metric}"
    )
    basis = "ci_separated" if separated else "ci_overlap"
    return PromotionCheck(
        best["run_id"], best["run_name"], runner["run_name"], separated, basis, note
    )


def promote_best(
    df: pd.DataFrame,
    model_name: str,
    metric: str = "test_auroc",
    tracking_uri: str | None = None,
    higher_is_better: bool = True,
    force: bool = False,
) -> tuple[str, str | None]:
    """Give alias ``champion`` to the version of ``model_name`` logged by the best run.

    Refuses with ``PromotionRefused`` (the registry untouched) when ``check_promotion``
    cannot tell the best run from the runner-up, unless ``force``. The promoted version is
    tagged ``clinfuse.promotion`` (``forced``, ``ci_separated`` or ``only_run``) and
    ``clinfuse.promotion_note`` (both intervals). Returns ``(new_version,
    previous_version_or_None)``; the previous champion is recorded as tag
    ``previous_champion`` (see ``registry.model.promote``).
    """
    from mlflow import MlflowClient

    from registry.model import promote
    from registry.tracking import resolve_tracking_uri

    best = best_run(df, metric, higher_is_better)
    uri = resolve_tracking_uri(tracking_uri, Path.cwd())
    client = MlflowClient(uri)
    escaped = model_name.replace("'", "\\'")
    versions = [
        mv
        for mv in client.search_model_versions(f"name = '{escaped}'")
        if mv.run_id == best["run_id"]
    ]
    if not versions:
        raise ClinfuseError(
            f"no version of registered model {model_name!r} comes from the best run "
            f"{best['run_name']!r} (run id {best['run_id']}); log and register its model "
            "first (registry.model.log_model(..., registered_name=...))"
        )
    check = check_promotion(df, metric, higher_is_better)
    if not check.separated and not force:
        raise PromotionRefused(
            f"not promoting {model_name}: {check.note}; more test patients would tell them "
            "apart, or pass --force to promote anyway (recorded as forced)"
        )
    version = str(max(int(mv.version) for mv in versions))
    previous = promote(model_name, version, tracking_uri=uri)
    basis = check.basis if check.separated else "forced"
    client.set_model_version_tag(model_name, version, PROMOTION_TAG, basis)
    client.set_model_version_tag(model_name, version, PROMOTION_NOTE_TAG, check.note)
    return version, previous
