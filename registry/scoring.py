"""Log a batch-scoring run to MLflow: model version, counts, score distribution, drift."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from registry.tracking import Tracker

SCORING_EXPERIMENT = "clinfuse-scoring"


def _flat_numbers(prefix: str, data: Any, out: dict[str, float]) -> dict[str, float]:
    """Numeric leaves of nested dicts as ``prefix.key`` metrics (lists/strings skipped)."""
    if isinstance(data, dict):
        for k, v in data.items():
            _flat_numbers(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(data, int | float) and data == data:  # numbers (bools too), not NaN
        out[re.sub(r"[^\w\-. /]", "_", prefix)] = float(data)  # MLflow's allowed characters
    return out


def log_scoring_run(
    summary: dict[str, Any],
    model_uri: str,
    prepared: Path,
    tracking_uri: str | None = None,
    workdir: Path = Path("."),
    experiment: str = SCORING_EXPERIMENT,
) -> tuple[str | None, str]:
    """One MLflow run per scoring run; returns ``(run_id, tracking_uri)``.

    The summary holds pseudonyms and counts only; the skipped list goes in as an artifact.
    """
    from registry.experiment import cohort_hash

    name = f"score {summary['model_name']} v{summary['model_version']}"
    with Tracker(experiment, name, tracking_uri=tracking_uri, workdir=workdir,
                 tags={"clinfuse.kind": "scoring"}) as tracker:
        tracker.log_params({
            "model_uri": model_uri,
            "model_name": summary["model_name"],
            "model_version": summary["model_version"],
        })
        tracker.log_dataset_input(cohort_hash(prepared), summary["eligible"], context="scoring")
        metrics = {k: float(summary[k]) for k in ("eligible", "scored_now", "already_scored",
                                                  "seconds", "peak_rss_mb")}
        metrics["skipped"] = float(len(summary["skipped"]))
        metrics |= _flat_numbers("skipped_by_reason", summary["skipped_by_reason"], {})
        metrics |= _flat_numbers("distribution", summary["distribution"], {})
        metrics |= _flat_numbers("drift", summary["drift"], {})
        metrics |= _flat_numbers("extras", summary.get("extras", {}), {})
        tracker.log_metrics(metrics)
        # Output locations stay out of MLflow (local paths); counts and rates go in.
        logged = {k: v for k, v in summary.items() if k != "predictions_path"}
        logged["extras"] = {k: v for k, v in summary.get("extras", {}).items()
                            if not k.endswith("_path")}
        tracker.log_dict(logged, "scoring_summary.json")
        return tracker.run_id, tracker.tracking_uri
