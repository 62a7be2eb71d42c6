"""``clinfuse compare``: rank an experiment's runs, log the comparison, promote the best."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rich.console import Console

from workflows.runtime import configure_runtime

log = logging.getLogger("clinfuse.compare")

LOWER_IS_BETTER = ("brier", "ece", "log_loss", "hamming_loss", "loss", "median_rank")


def run_compare(
    experiment: str,
    metric: str | None = None,
    promote: str | None = None,
    workdir: Path = Path("."),
    console: Console | None = None,
    tracking_uri: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Compare runs by ``metric``; with ``promote`` give the best run's version ``champion``.

    Without ``metric``, runs are ranked by their task's monitored test metric
    (``registry.compare.task_metric``: ``test_auroc`` binary, ``test_recall_at_1``
    contrastive). A name with ``@`` is taken as MLflow stores it (``_at_``).

    Promotion happens before the comparison run is logged, so a refused one
    (``PromotionRefused``: the best run's CI overlaps the runner-up's, no ``force``)
    leaves the tracking store and the registry as they were.
    """
    configure_runtime()
    from registry.compare import (
        N_TEST,
        WARNING,
        check_promotion,
        compare_runs,
        log_comparison,
        metric_key,
        promote_best,
        task_metric,
    )
    from registry.plots import comparison_figure
    from registry.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, workdir)
    if metric:
        metric = metric_key(metric)
        higher = not metric.removeprefix("test_").startswith(LOWER_IS_BETTER)
    else:
        metric, higher = task_metric(experiment, uri)
    df = compare_runs(experiment, metric, uri, higher_is_better=higher)
    if console is not None:
        console.print(_table(df, metric, f"{experiment}: runs by {metric}"))
    for line in _warning_lines(df):  # with --json too: stdout stays JSON, this goes to stderr
        if console is not None:
            console.print(f"[yellow]warning:[/] {line}", highlight=False)
        else:
            log.warning("%s", line)
    summary: dict[str, Any] = {
        "experiment": experiment,
        "metric": metric,
        "runs": len(df),
        "ranking": df[
            [
                c
                for c in (
                    "run_name",
                    "fusion",
                    "modalities",
                    N_TEST,
                    metric,
                    f"{metric}_ci_low",
                    f"{metric}_ci_high",
                    WARNING,
                )
                if c in df
            ]
        ].to_dict(orient="records"),
    }
    if promote:
        new, previous = promote_best(df, promote, metric, uri, higher_is_better=higher, force=force)
        check = check_promotion(df, metric, higher)
        basis = check.basis if check.separated else "forced"
        summary |= {
            "champion": new,
            "previous_champion": previous,
            "model": promote,
            "promotion": basis,
            "promotion_note": check.note,
        }
        if console is not None:
            console.print(
                f"[green]champion[/] {promote} version {new}"
                + (f" (was {previous})" if previous else "")
                + (f" [yellow]forced[/]: {check.note}" if basis == "forced" else ""),
                highlight=False,
            )
    summary["comparison_run_id"] = log_comparison(
        df, experiment, lambda d: comparison_figure(d, metric), tracking_uri=uri, workdir=workdir
    )
    return summary


def _warning_lines(df: Any) -> list[str]:
    """One line per distinct warning, naming the runs it applies to (no PHI: run names)."""
    from registry.compare import WARNING

    if WARNING not in df:
        return []
    groups: dict[str, list[str]] = {}
    for _, r in df[df[WARNING].astype(bool)].iterrows():
        groups.setdefault(str(r[WARNING]), []).append(str(r["run_name"]))
    return [f"{', '.join(runs)}: {text}" for text, runs in groups.items()]


def _table(df: Any, metric: str, title: str) -> Any:
    """A terminal-width table: rank, run, modalities, the metric with its CI, two others."""
    from rich.table import Table

    table = Table(title=title)
    extra = [c for c in ("test_auprc", "test_brier", "test_ece") if c in df and c != metric]
    for col in ("#", "run", "modalities", "n_test", metric, "95% CI", *extra):
        table.add_column(col)

    def f(v: Any) -> str:
        return "n/a" if v is None or v != v else f"{float(v):.3f}"

    def n(v: Any) -> str:
        return "?" if v is None or v != v else str(int(v))

    for i, (_, r) in enumerate(df.iterrows(), 1):
        ci = f"{f(r.get(f'{metric}_ci_low'))}–{f(r.get(f'{metric}_ci_high'))}"
        table.add_row(
            str(i),
            str(r.get("run_name")),
            str(r.get("modalities")),
            n(r.get("n_test")),
            f(r.get(metric)),
            ci,
            *(f(r.get(c)) for c in extra),
        )
    return table
