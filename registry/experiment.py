"""Train an experiment's variants with MLflow tracking: one parent run, a child per variant.

Each child logs the resolved config, the cohort (by hash), per-epoch metrics in batches,
test metrics with bootstrap CIs and subgroup (missing-modality pattern) metrics, plots, a
per-case predictions table (pseudonyms only), attention maps, a model card, and the model
itself as a pickle-free pyfunc. Note text never goes to MLflow (not even de-identified):
attention over notes is logged as per-chunk weights only.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fusion.config import ModelConfig
from fusion.data import Collator, PreparedCohort
from fusion.experiment import Variant, VariantResult, plan_variants, split_cohort, train_variant
from fusion.tasks import get_task
from fusion.train import TrainConfig, autocast, resolve_device
from registry import plots
from registry.compare import WARNING_TAG, ci_pairs, reliability_warnings, warning_text
from registry.model import log_model, promote
from registry.tracking import Tracker

log = logging.getLogger("clinfuse.train")

BUILDER = "fusion.predictor:build_predictor"
N_EXPLAIN = 3


@dataclass
class VariantRun:
    """What the flow reports about one trained variant (no PHI)."""

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


# Plots a task adds to its runs, by task name (a lookup, not a branch per task).
_TASK_PLOTS: dict[str, Callable[[Tracker, np.ndarray, np.ndarray, float], None]] = {
    "binary": _binary_plots,
}


def _predictions_table(res: VariantResult, task: str) -> pd.DataFrame:
    test = res.test
    return get_task(task).prediction_table(test.patients, test.probs, test.labels,
                                           res.threshold, test.present)


def _model_card(res: VariantResult, cohort: PreparedCohort, rows: pd.DataFrame, chash: str) -> str:
    m = res.test_metrics

    def fmt(k: str) -> str:
        v = m.get(k, math.nan)
        lo, hi = m.get(f"{k}_ci_low"), m.get(f"{k}_ci_high")
        ci = f" (95% CI {lo:.3f}–{hi:.3f})" if lo is not None and hi is not None else ""
        return f"{v:.3f}{ci}" if not math.isnan(v) else "n/a"

    counts = rows["split"].value_counts().to_dict()
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
        )
        if k in m
    ]
    subgroup = sorted(k for k in m if k.startswith("present.") and k.endswith("/auroc"))
    lines = [
        f"# Model card: {res.variant.name}",
        "",
        "## Intended use",
        "Research and decision support on de-identified cohorts prepared by clinfuse. Not a "
        "medical device; predictions need clinical review.",
        "",
        "## Model",
        f"- fusion strategy: `{res.variant.fusion}`; modalities: "
        f"{', '.join(res.variant.modalities)}; task: {cohort.task}",
        f"- parameters: {sum(p.numel() for p in res.model.parameters()):,}",
        f"- decision threshold (chosen on validation): {res.threshold:.3f}",
        f"- best epoch: {res.fit.best_epoch} of {len(res.fit.history)}",
        "",
        "## Data",
        f"- prepared cohort hash: `{chash}`",
        f"- patients per split: {counts}",
        f"- training prevalence: {np.round(np.asarray(res.prior, dtype=float), 3).tolist()}",
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
    tracker: Tracker, res: VariantResult, cohort: PreparedCohort, rows: pd.DataFrame
) -> None:
    """Attention overlays for a few test patients (volumes) and per-chunk note weights."""
    test = rows[rows["split"] == "test"]
    mods = {m: cohort.mods[m] for m in res.variant.modalities}
    ds = cohort.dataset(test, res.variant.modalities)
    picked = [(i, s) for i, s in ((i, ds[i]) for i in range(len(ds))) if any(m in s for m in mods)]
    picked = picked[:N_EXPLAIN]
    samples = [s for _, s in picked]
    if not samples:
        return
    device = resolve_device("auto")
    model = res.model.to(device).eval()
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


def train_one(
    cohort: PreparedCohort,
    rows: pd.DataFrame,
    variant: Variant,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    resolved_config: dict[str, Any],
    parent: Tracker,
    register: str | None,
    on_epoch: Callable[[str, int, dict[str, float]], None] | None = None,
) -> VariantRun:
    """Train one variant in a child run and log everything about it.

    ``on_epoch(variant, epoch, metrics)`` also receives every epoch's metrics (progress).
    """

    def epoch_done(epoch: int, metrics: dict[str, float]) -> None:
        tracker.log_metrics(metrics, step=epoch)
        if on_epoch is not None:
            on_epoch(variant.name, epoch, metrics)

    chash = cohort_hash(cohort.root)
    with parent.child(variant.name, tags={"clinfuse.variant": variant.name}) as tracker:
        tracker.log_params(
            {
                "fusion": variant.fusion,
                "modalities": ",".join(variant.modalities),
                "unimodal": variant.unimodal,
                "task": cohort.task,
                "config": resolved_config,
            }
        )
        tracker.log_dataset_input(chash, len(rows))
        res = train_variant(
            cohort,
            rows,
            variant,
            model_cfg,
            train_cfg,
            on_epoch=epoch_done,
        )
        tracker.log_metrics(
            {
                _metric_key(k): v
                for k, v in res.test_metrics.items()
                if isinstance(v, int | float) and not math.isnan(v)
            }
        )
        tracker.log_metrics({"best_epoch": res.fit.best_epoch, "train_seconds": res.fit.seconds})
        history = (
            {k: [h.get(k, math.nan) for h in res.fit.history] for k in res.fit.history[0]}
            if res.fit.history
            else {}
        )
        tracker.log_figure(
            plots.training_curves_figure(history, res.fit.best_epoch), "plots/training_curves.png"
        )
        task_plots = _TASK_PLOTS.get(cohort.task)
        if task_plots is not None and res.test.labels is not None:
            task_plots(tracker, res.test.labels, res.test.probs, res.threshold)
        tracker.log_table(_predictions_table(res, cohort.task), "predictions")
        tracker.log_text(_model_card(res, cohort, rows, chash), "model_card.md")
        _log_explanations(tracker, res, cohort, rows)
        _flag_small_n(tracker, variant.name, res.test_metrics)
        info = log_model(
            tracker,
            res.model.state_dict(),
            res.predictor_config,
            builder=BUILDER,
            registered_name=register,
            alias=None,
        )
        version = getattr(info, "registered_model_version", None)
        return VariantRun(
            variant.name,
            tracker.run_id,
            variant.fusion,
            list(variant.modalities),
            {k: v for k, v in res.test_metrics.items() if "/" not in k and "." not in k},
            res.fit.best_value,
            str(version) if version is not None else None,
            res.fit.seconds,
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
    keys = ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "accuracy", "brier", "ece")
    return [{"variant": r.name, "fusion": r.fusion, "modalities": "+".join(r.modalities),
             "n_test": r.test_metrics.get("n"),
             **{k: r.test_metrics.get(k) for k in keys}, "run_id": r.run_id,
             "version": r.version,
             "warning": warning_text(reliability_warnings(r.test_metrics.get("n"),
                                                          ci_pairs(r.test_metrics)))}
            for r in runs]


def run_experiment(
    prepared: Path,
    cohort_cfg: Any,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    resolved_config: dict[str, Any],
    fusions: list[str],
    baselines: bool,
    experiment: str,
    register: str | None = None,
    tracking_uri: str | None = None,
    workdir: Path = Path("."),
    on_epoch: Callable[[str, int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train every variant on one shared split under one parent run; return a summary.

    With ``register``, every variant becomes a version of that registered model and the
    best one by validation metric gets alias ``challenger``. ``on_epoch(variant, epoch,
    metrics)`` sees every epoch's metrics as they are logged (the CLI's progress bars).
    """
    cohort = PreparedCohort(prepared, cohort_cfg)
    rows = split_cohort(cohort, train_cfg)
    variants = plan_variants(sorted(cohort.mods), fusions, baselines)
    runs: list[VariantRun] = []
    with Tracker(
        experiment,
        "experiment",
        tracking_uri=tracking_uri,
        workdir=workdir,
        tags={"clinfuse.kind": "parent"},
    ) as parent:
        parent.log_params(
            {"variants": ",".join(v.name for v in variants), "config": resolved_config}
        )
        parent.log_dataset_input(cohort_hash(prepared), len(rows))
        for v in variants:
            log.info("training %s", v.name)
            runs.append(
                train_one(cohort, rows, v, model_cfg, train_cfg, resolved_config, parent, register,
                          on_epoch)
            )
        table = pd.DataFrame(_variant_records(runs))
        parent.log_table(table, "variants")
        challenger = _promote_challenger(runs, register, parent.tracking_uri)
    status, parent_id = parent.status, parent.run_id  # after the run ended: finished/degraded
    return {
        "experiment": experiment,
        "parent_run_id": parent_id,
        "tracking": status,
        "split_sizes": rows["split"].value_counts().to_dict(),
        "variants": table.drop(columns=["run_id"]).to_dict(orient="records"),
        "challenger_version": challenger,
    }


def log_external_variants(
    run_dirs: list[Path],
    prepared: Path,
    resolved_config: dict[str, Any],
    experiment: str,
    register: str | None = None,
    tracking_uri: str | None = None,
    workdir: Path = Path("."),
) -> dict[str, Any]:
    """Log variants trained outside this process (``torchrun -m fusion.distributed``).

    Each run folder holds what ``fusion.distributed`` writes on rank 0: weights, predictor
    config, test metrics, per-epoch metrics and test predictions. Logged like
    ``run_experiment`` does: one parent run, a child per variant, models registered.
    """
    import json

    from safetensors.torch import load_file

    from fusion import distributed as ddp

    runs: list[VariantRun] = []
    chash = cohort_hash(prepared)
    with Tracker(experiment, "experiment", tracking_uri=tracking_uri, workdir=workdir,
                 tags={"clinfuse.kind": "parent", "clinfuse.ddp": "true"}) as parent:
        parent.log_params({"config": resolved_config})
        for d in map(Path, run_dirs):
            fit = json.loads((d / ddp.FIT_FILE).read_text())
            metrics = json.loads((d / ddp.TEST_METRICS_FILE).read_text())
            config = json.loads((d / ddp.PREDICTOR_CONFIG_FILE).read_text())
            with parent.child(fit["variant"], tags={"clinfuse.variant": fit["variant"]}) as t:
                t.log_params({"fusion": fit["fusion"], "modalities": ",".join(fit["modalities"]),
                              "unimodal": len(fit["modalities"]) == 1, "task": config["task"],
                              "world_size": fit["world_size"], "config": resolved_config})
                t.log_dataset_input(chash, sum(fit["splits"].values()))
                for line in (d / ddp.EPOCHS_FILE).read_text().splitlines():
                    row = json.loads(line)
                    step = int(row.pop("epoch"))
                    t.log_metrics({k: v for k, v in row.items() if v is not None}, step=step)
                t.log_metrics({_metric_key(k): v for k, v in metrics.items()
                               if isinstance(v, int | float)})
                t.log_metrics({"best_epoch": fit["best_epoch"], "train_seconds": fit["seconds"]})
                t.log_table(pd.read_parquet(d / ddp.TEST_PREDICTIONS_FILE), "predictions")
                _flag_small_n(t, fit["variant"], metrics)
                info = log_model(t, load_file(str(d / ddp.WEIGHTS_FILE)), config,
                                 builder=BUILDER, registered_name=register, alias=None)
                version = getattr(info, "registered_model_version", None)
                runs.append(VariantRun(
                    fit["variant"], t.run_id, fit["fusion"], list(fit["modalities"]),
                    {k: v for k, v in metrics.items() if "/" not in k and "." not in k
                     and v is not None},
                    float(fit["best_value"]) if fit["best_value"] is not None else math.nan,
                    str(version) if version is not None else None, float(fit["seconds"]),
                ))
        parent.log_table(pd.DataFrame(_variant_records(runs)), "variants")
        challenger = _promote_challenger(runs, register, parent.tracking_uri)
    return {
        "experiment": experiment,
        "parent_run_id": parent.run_id,
        "tracking": parent.status,
        "variants": [{k: v for k, v in rec.items() if k != "run_id"}
                     for rec in _variant_records(runs)],
        "challenger_version": challenger,
    }
