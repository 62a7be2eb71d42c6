"""``clinfuse compare``: rank an experiment's runs, log the comparison, promote the best."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from workflows.runtime import configure_runtime

LOWER_IS_BETTER = ("brier", "ece", "log_loss", "hamming_loss", "loss")


def run_compare(
    experiment: str,
    metric: str = "test_auroc",
    promote: str | None = None,
    workdir: Path = Path("."),
    console: Console | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Compare runs by ``metric``; with ``promote`` give the best run's version ``champion``."""
    configure_runtime()
    from registry.compare import compare_runs, log_comparison, promote_best
    from registry.plots import comparison_figure
    from registry.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, workdir)
    higher = not metric.removeprefix("test_").startswith(LOWER_IS_BETTER)
    df = compare_runs(experiment, metric, uri, higher_is_better=higher)
    if console is not None:
        console.print(_table(df, metric, f"{experiment}: runs by {metric}"))
    comparison_run = log_comparison(
        df, experiment, lambda d: comparison_figure(d, metric), tracking_uri=uri, workdir=workdir
    )
    summary: dict[str, Any] = {
        "experiment": experiment,
        "metric": metric,
        "runs": len(df),
        "comparison_run_id": comparison_run,
        "ranking": df[[c for c in ("run_name", "fusion", "modalities", metric,
                                   f"{metric}_ci_low", f"{metric}_ci_high") if c in df]]
        .to_dict(orient="records"),
    }
    if promote:
        new, previous = promote_best(df, promote, metric, uri, higher_is_better=higher)
        summary |= {"champion": new, "previous_champion": previous, "model": promote}
        if console is not None:
            console.print(f"[green]champion[/] {promote} version {new}"
                          + (f" (was {previous})" if previous else ""))
    return summary


def _table(df: Any, metric: str, title: str) -> Any:
    """A terminal-width table: rank, run, modalities, the metric with its CI, two others."""
    from rich.table import Table

    table = Table(title=title)
    extra = [c for c in ("test_auprc", "test_brier", "test_ece") if c in df and c != metric]
    for col in ("#", "run", "modalities", metric, "95% CI", *extra):
        table.add_column(col)

    def f(v: Any) -> str:
        return "n/a" if v is None or v != v else f"{float(v):.3f}"

    for i, (_, r) in enumerate(df.iterrows(), 1):
        ci = f"{f(r.get(f'{metric}_ci_low'))}–{f(r.get(f'{metric}_ci_high'))}"
        table.add_row(str(i), str(r.get("run_name")), str(r.get("modalities")),
                      f(r.get(metric)), ci, *(f(r.get(c)) for c in extra))
    return table
