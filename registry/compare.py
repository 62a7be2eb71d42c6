"""Side-by-side comparison of runs in one experiment, and promotion of the best model.

Which fusion and modalities a run used is read from tags ``clinfuse.fusion`` /
``clinfuse.modalities`` when the training wrapper set them, else from params
(``fusion``, ``variant.fusion``, ``model.fusion.name``; ``modalities``,
``variant.modalities``). Confidence intervals come from metrics ``<metric>_ci_low`` /
``<metric>_ci_high`` (what ``fusion.metrics`` produces). Runs tagged
``clinfuse.kind=comparison`` (what ``log_comparison`` creates) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
            rows.append(row)
        token = page.token
        if not token:
            break

    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=[*BASE_COLUMNS, metric])
    if metric not in df.columns:
        df[metric] = math.nan
    lead = [metric] + [c for c in (f"{metric}_ci_low", f"{metric}_ci_high") if c in df.columns]
    rest = sorted(c for c in df.columns if c not in BASE_COLUMNS and c not in lead)
    df = df[[*BASE_COLUMNS, *lead, *rest]]
    return _rank(df, metric, higher_is_better)


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


def _display_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Readable view: rank, names, ``metric [low, high]`` cells; ids and CI columns dropped."""
    import pandas as pd

    metric_cols = [c for c in df.columns if c not in BASE_COLUMNS]
    out = pd.DataFrame({"rank": range(1, len(df) + 1)})
    for col in ("run_name", "fusion", "modalities"):
        out[col] = df[col].astype(str).to_numpy() if col in df.columns else ""
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
    return out


def render_table(df: pd.DataFrame, title: str = "Run comparison") -> Table:
    """A rich Table of ``compare_runs`` output (metric cells show ``value [CI]``)."""
    from rich.table import Table

    view = _display_frame(df)
    table = Table(title=title)
    for col in view.columns:
        numeric = col == "rank" or col.startswith(("test_", "val_"))
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


def promote_best(
    df: pd.DataFrame,
    model_name: str,
    metric: str = "test_auroc",
    tracking_uri: str | None = None,
    higher_is_better: bool = True,
) -> tuple[str, str | None]:
    """Give alias ``champion`` to the version of ``model_name`` logged by the best run.

    Returns ``(new_version, previous_version_or_None)``; the previous champion is recorded
    as tag ``previous_champion`` (see ``registry.model.promote``).
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
    version = str(max(int(mv.version) for mv in versions))
    previous = promote(model_name, version, tracking_uri=uri)
    return version, previous
