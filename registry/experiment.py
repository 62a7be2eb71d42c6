"""Log trained variants to MLflow: one parent run per experiment, a child per run folder.

Training writes a run folder per variant (``fusion.run_folder``), in-process or under
torchrun; ``log_run_folder`` logs one to a child run the same way on both paths: the
resolved config, the cohort (by hash), per-epoch metrics, test metrics with bootstrap CIs
and subgroup (missing-modality pattern) metrics, plots, a per-case predictions table
(pseudonyms only), attention maps, a model card, and the model itself as a pickle-free
pyfunc rebuilt from the folder's artifact and weights. ``open_experiment`` /
``close_experiment`` start and end the parent (variants table, challenger alias), so the
train flow can run one task per variant. Note text never goes to MLflow (not even
de-identified): attention over notes is logged as per-chunk weights only.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fusion.data import Collator, PreparedCohort
from fusion.device import autocast, resolve_device
from fusion.experiment import plan_variants, split_cohort
from fusion.run_folder import RunFolder, read_run_folder
from fusion.train import TrainConfig
from modalities.cohort import CohortConfig
from registry import plots
from registry.compare import WARNING_TAG, ci_pairs, reliability_warnings, warning_text
from registry.model import log_model, promote
from registry.tracking import Tracker

log = logging.getLogger("clinfuse.train")

BUILDER = "fusion.predictor:build_predictor"
N_EXPLAIN = 3


@dataclass
class VariantRun:
    """What the flow reports about one logged variant (no PHI)."""

    name: str
    run_id: str | None
    fusion: str
    modalities: list[str]
    test_metrics: dict[str, float]
    best_val: float
    version: str | None
    seconds: float


def cohort_hash(prepared: Path) -> str:
    """Content hash of the prepared cohort table (pseudonyms + cache keys: no PHI)."""
    return hashlib.blake2b(
        (Path(prepared) / "cohort.parquet").read_bytes(), digest_size=16
    ).hexdigest()


def _metric_key(k: str) -> str:
    return f"test_{k}"


def _flag_small_n(tracker: Tracker, name: str, metrics: dict[str, Any]) -> str:
    """Tag (``clinfuse.warning``) and log why a variant's test numbers are too uncertain to
    rank on: fewer than 30 test patients or a 95% CI wider than 0.3. Returns the text."""
    text = warning_text(reliability_warnings(metrics.get("n"), ci_pairs(metrics)))
    if text:
        tracker.set_tags({WARNING_TAG: text})
        log.warning("%s: %s", name, text)
    return text


def _binary_plots(tracker: Tracker, y: np.ndarray, p: np.ndarray, threshold: float) -> None:
    tracker.log_figure(plots.roc_curve_figure(y, p), "plots/roc.png")
    tracker.log_figure(plots.pr_curve_figure(y, p), "plots/pr.png")
    tracker.log_figure(plots.calibration_figure(y, p), "plots/calibration.png")
    tracker.log_figure(
        plots.confusion_matrix_figure(y, (p >= threshold).astype(int)), "plots/confusion.png"
    )


# Plots a task adds to its runs, by task name.
_TASK_PLOTS: dict[str, Callable[[Tracker, np.ndarray, np.ndarray, float], None]] = {
    "binary": _binary_plots,
}


def _model_card(run: RunFolder, chash: str) -> str:
    m, fit, variant = run.test_metrics, run.fit, run.variant

    def fmt(k: str) -> str:
        v = m.get(k, math.nan)
        v = math.nan if v is None else v
        lo, hi = m.get(f"{k}_ci_low"), m.get(f"{k}_ci_high")
        ci = f" (95% CI {lo:.3f}–{hi:.3f})" if lo is not None and hi is not None else ""
        return f"{v:.3f}{ci}" if not math.isnan(v) else "n/a"

    counts = fit["splits"]
    main = [
        k
        for k in (
            "auroc",
            "auprc",
            "accuracy",
            "balanced_accuracy",
            "f1",
            "sensitivity",
            "specificity",
            "brier",
            "ece",
            "recall@1",
            "recall@5",
            "recall@10",
            "median_rank",
        )
        if k in m
    ]
    subgroup = sorted(k for k in m if k.startswith("present.") and k.endswith("/auroc"))
    lines = [
        f"# Model card: {variant.name}",
        "",
        "## Intended use",
        "Research and decision support on de-identified cohorts prepared by clinfuse. Not a "
        "medical device; predictions need clinical review.",
        "",
        "## Model",
        f"- fusion strategy: `{variant.fusion}`; modalities: "
        f"{', '.join(variant.modalities)}; task: {run.artifact.task}",
        f"- parameters: {fit['n_parameters']:,}",
        f"- decision threshold (chosen on validation): {fit['threshold']:.3f}",
        f"- best epoch: {fit['best_epoch']} of {len(fit['history'])}",
        "",
        "## Data",
        f"- prepared cohort hash: `{chash}`",
        f"- patients per split: {counts}",
        f"- training prevalence: "
        f"{np.round(np.asarray(run.artifact.prior, dtype=float), 3).tolist()}",
        "",
        "## Test metrics",
        *[f"- {k}: {fmt(k)}" for k in main],
        "",
        "## Subgroups by available modalities (AUROC)",
        *(
            [f"- {k.split('/')[0].removeprefix('present.')}: {m[k]:.3f}" for k in subgroup]
            or ["- (no subgroup with both classes and >= 10 patients)"]
        ),
        "",
        "## Limits",
        "- Metrics come from one held-out split of one cohort; expect lower performance on "
        "other sites, scanners and note styles.",
        "- Patients without any of the model's modalities get the training prevalence.",
        "- Confidence intervals are percentile bootstrap over test patients.",
    ]
    return "\n".join(lines) + "\n"


@torch.inference_mode()
def _log_explanations(
    tracker: Tracker, run: RunFolder, model: torch.nn.Module, cohort: PreparedCohort
) -> None:
    """Attention overlays for a few test patients (volumes) and per-chunk note weights.

    The test patients are the run folder's predictions table, in its order.
    """
    variant = run.variant
    usable = cohort.usable(list(cohort.mods)).set_index("patient", drop=False)
    test = usable.loc[[p for p in run.predictions["patient"].astype(str) if p in usable.index]]
    test = test.reset_index(drop=True)
    mods = {m: cohort.mods[m] for m in variant.modalities}
    ds = cohort.dataset(test, variant.modalities)
    picked = [(i, s) for i, s in ((i, ds[i]) for i in range(len(ds))) if any(m in s for m in mods)]
    picked = picked[:N_EXPLAIN]
    samples = [s for _, s in picked]
    if not samples:
        return
    device = resolve_device("auto")
    model = model.to(device).eval()
    batch = Collator(mods, cohort.task)(samples).to(device)
    with autocast(device, True):
        out = model(batch.inputs, batch.present)
    rows_out = []
    for i, s in enumerate(samples):
        row = {"patient": s["patient"]}
        for m, c in (out.get("contributions") or {}).items():
            row[f"contribution_{m}"] = float(c[i])
        rows_out.append(row)
        for key, att in (out.get("attention") or {}).items():
            weights = att[i].float().mean(0).cpu().numpy()  # mean over layers
            if "<-" in key:  # cross-attention "a<-b": (N_a, N_b)
                target, _, source = key.partition("<-")
                pairs = [(source, weights.mean(0)), (target, weights.mean(1))]
            else:  # "cls->m" (N_m,) or "latents->m" (K, N_m): weights on m's tokens
                w = weights if weights.ndim == 1 else weights.mean(0)
                pairs = [(key.partition("->")[2], w)]
            for name, w in pairs:
                vol = s.get(name)
                if isinstance(vol, np.ndarray) and vol.ndim == 4:
                    side = round(len(w) ** (1 / 3))
                    if side**3 == len(w):
                        # The cached volume's own affine (stored by ingest) puts the slices
                        # in patient space: true axial views, also for oblique sources.
                        ckey = ds.keys[name][picked[i][0]]
                        meta = cohort.cache.get_meta(mods[name].name, ckey) if ckey else None
                        fig = plots.attention_overlay_figure(
                            np.asarray(vol[0], np.float32), w.reshape(side, side, side),
                            affine=(meta or {}).get("affine"),
                        )
                        tracker.log_figure(fig, f"explain/{s['patient']}_{name}_{key}.png")
                elif name in mods and mods[name].kind == "text":
                    row[f"{key}:{name}_chunk_weights"] = ",".join(f"{x:.3f}" for x in w)
    tracker.log_table(pd.DataFrame(rows_out), "explanations")


def log_run_folder(
    folder: Path,
    prepared: Path,
    resolved_config: dict[str, Any],
    parent: Mapping[str, Any],
    register: str | None = None,
    tracking_uri: str | None = None,
    workdir: Path = Path("."),
) -> VariantRun:
    """Log one finished run folder as a child run of ``parent`` (``open_experiment``).

    The same for every variant, however it was trained: params, the cohort by hash,
    per-epoch metrics (step = epoch), test metrics, plots, the predictions table, the model
    card, explanations (the model rebuilt from the folder's artifact and weights) and the
    model, registered as a version of ``register`` when given.
    """
    run = read_run_folder(folder)
    variant, fit = run.variant, run.fit
    chash = cohort_hash(prepared)
    with Tracker(parent["experiment"], variant.name, parent=parent.get("run_id"),
                 tracking_uri=tracking_uri, workdir=workdir,
                 tags={"clinfuse.variant": variant.name}) as tracker:
        tracker.log_params({
            "fusion": variant.fusion, "modalities": ",".join(variant.modalities),
            "unimodal": variant.unimodal, "task": run.artifact.task,
            "world_size": fit["world_size"], "config": resolved_config,
        })
        tracker.log_dataset_input(chash, sum(fit["splits"].values()))
        for row in run.epochs():
            step = int(row.pop("epoch"))
            tracker.log_metrics({k: v for k, v in row.items() if v is not None}, step=step)
        tracker.log_metrics({_metric_key(k): v for k, v in run.test_metrics.items()
                             if isinstance(v, int | float) and not math.isnan(v)})
        tracker.log_metrics({"best_epoch": fit["best_epoch"], "train_seconds": fit["seconds"]})
        history = fit["history"]
        curves = ({k: [h.get(k, math.nan) for h in history] for k in history[0]}
                  if history else {})
        tracker.log_figure(plots.training_curves_figure(curves, fit["best_epoch"]),
                           "plots/training_curves.png")
        pred = run.predictions
        task_plots = _TASK_PLOTS.get(run.artifact.task)  # a lookup, not a branch per task
        if task_plots is not None and "label" in pred:
            task_plots(tracker, pred["label"].to_numpy(dtype=float),
                       pred["probability"].to_numpy(dtype=float), run.artifact.threshold)
        tracker.log_table(pred, "predictions")
        tracker.log_text(_model_card(run, chash), "model_card.md")
        predictor = run.predictor()
        _log_explanations(tracker, run, predictor.model,
                          PreparedCohort(prepared, run.artifact.cohort))
        _flag_small_n(tracker, variant.name, run.test_metrics)
        info = log_model(tracker, predictor.model.state_dict(), run.artifact.to_config(),
                         builder=BUILDER, registered_name=register, alias=None)
        version = getattr(info, "registered_model_version", None)
        best = fit["best_value"]
        return VariantRun(
            variant.name, tracker.run_id, variant.fusion, list(variant.modalities),
            {k: v for k, v in run.test_metrics.items() if "/" not in k and "." not in k},
            float(best) if best is not None else math.nan,
            str(version) if version is not None else None, float(fit["seconds"]),
        )


def _promote_challenger(runs: list[VariantRun], register: str | None, uri: str) -> str | None:
    """Give alias ``challenger`` to the registered variant with the best validation metric."""
    versioned = [r for r in runs if r.version is not None]
    if not register or not versioned:
        return None
    best = max(versioned, key=lambda r: -math.inf if math.isnan(r.best_val) else r.best_val)
    promote(register, best.version, alias="challenger", tracking_uri=uri)
    return best.version


def _variant_records(runs: list[VariantRun]) -> list[dict[str, Any]]:
    """One summary row per variant (no PHI): names, test metrics with CIs, version."""
    keys = ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "accuracy", "accuracy_ci_low",
            "accuracy_ci_high", "brier", "ece", "recall@1", "recall@1_ci_low",
            "recall@1_ci_high", "median_rank", "median_rank_ci_low", "median_rank_ci_high")

    def value(m: dict[str, float], k: str) -> Any:
        # Multiclass/multilabel name their AUROC auroc_macro (mean one-vs-rest): report it.
        return m.get(k, m.get(k.replace("auroc", "auroc_macro", 1)))

    return [{"variant": r.name, "fusion": r.fusion, "modalities": "+".join(r.modalities),
             "n_test": r.test_metrics.get("n"),
             **{k: value(r.test_metrics, k) for k in keys}, "run_id": r.run_id,
             "version": r.version,
             "warning": warning_text(reliability_warnings(r.test_metrics.get("n"),
                                                          ci_pairs(r.test_metrics)))}
            for r in runs]


def open_experiment(
    prepared: Path,
    cohort_cfg: CohortConfig,
    train_cfg: TrainConfig,
    resolved_config: dict[str, Any],
    fusions: Sequence[str],
    baselines: bool,
    experiment: str,
    tracking_uri: str | None = None,
    workdir: Path = Path("."),
    ddp: int = 0,
) -> dict[str, Any]:
    """Plan the variants and start the experiment's parent run.

    Returns the parent's handle (``Tracker.handle``), the planned variants (name, fusion,
    modalities) and the split sizes. The split is the one every variant trains on
    (``split_cohort`` is deterministic), so the parent's dataset input and ``split_sizes``
    describe what the variants saw. Bad names or an empty split fail here, before any run.
    """
    cohort = PreparedCohort(prepared, cohort_cfg)
    rows = split_cohort(cohort, train_cfg)
    variants = plan_variants(sorted(cohort.mods), list(fusions), baselines)
    tags = {"clinfuse.kind": "parent"} | ({"clinfuse.ddp": "true"} if ddp else {})
    parent = Tracker(experiment, "experiment", tracking_uri=tracking_uri, workdir=workdir,
                     tags=tags).start()
    parent.log_params({"variants": ",".join(v.name for v in variants),
                       "config": resolved_config})
    parent.log_dataset_input(cohort_hash(prepared), len(rows))
    parent.flush()
    return {"parent": parent.handle(),
            "variants": [{"name": v.name, "fusion": v.fusion, "modalities": list(v.modalities)}
                         for v in variants],
            "split_sizes": {str(k): int(v) for k, v in rows["split"].value_counts().items()}}


def close_experiment(
    opened: Mapping[str, Any],
    runs: Sequence[VariantRun | Mapping[str, Any]],
    failed: Mapping[str, str],
    register: str | None = None,
    tracking_uri: str | None = None,
    workdir: Path = Path("."),
) -> dict[str, Any]:
    """Log the variants table, give ``challenger`` to the best registered variant, end the
    parent run (FAILED when any variant failed) and return the summary (no PHI).

    ``failed`` maps a variant's name to a one-line reason; those variants are listed in the
    summary's ``failed`` and left out of the table and the promotion.
    """
    done = [r if isinstance(r, VariantRun) else VariantRun(**r) for r in runs]
    parent = Tracker.resume(opened["parent"], tracking_uri=tracking_uri, workdir=workdir)
    try:
        table = pd.DataFrame(_variant_records(done))
        if failed:
            parent.set_tags({"clinfuse.failed_variants": ",".join(sorted(failed))})
        if done:
            parent.log_table(table, "variants")
        challenger = _promote_challenger(done, register, parent.tracking_uri)
    except BaseException:
        parent.finish("FAILED")
        raise
    parent.finish("FAILED" if failed else "FINISHED")
    return {
        "experiment": opened["parent"]["experiment"],
        "parent_run_id": parent.run_id,
        "tracking": parent.status,
        "split_sizes": dict(opened["split_sizes"]),
        "variants": [{k: v for k, v in rec.items() if k != "run_id"}
                     for rec in _variant_records(done)],
        "failed": dict(failed),
        "challenger_version": challenger,
    }


def variant_run_dict(run: VariantRun) -> dict[str, Any]:
    """A VariantRun as plain data (what a Prefect task returns)."""
    return asdict(run)
