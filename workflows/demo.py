"""``clinfuse demo``: the main job end to end on embedded defaults and synthetic data.

Stages: synth -> ingest (twice: the second run shows the cache at work) -> train fusion
variants and unimodal baselines -> compare and promote a champion -> score the cohort with
the champion. Everything lands under one work folder: the synthetic cohort, the prepared
cohort, the MLflow SQLite store and artifacts, predictions, and Prefect's home.

The cohort is the interaction cohort (CT + note): a patient's label is a CT lesion XOR a
cardiac finding named in the note, so neither modality alone tells anything and only a
fusion model can learn it. The demo therefore shows the point of clinfuse as a measured
result: fusion far above every unimodal baseline, with 95% CIs and the number of test
patients behind each number (320 patients: 48 test patients; about 4 minutes on 2 cores).

``--task digits`` (``run_digits_demo``) runs the same stages on the generic task: handwritten
+ spoken digits (``clinfuse synth --task digits``), 10 classes, recipe ``digits``; fusion of
image and audio beats each modality alone by test accuracy, CIs apart (docs/tasks.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

DEMO_MODALITIES = ("ct", "note")
DEMO_OVERRIDES = ["cohort.modalities.mri=null"]  # the tiny recipe without its MRI entry
DEMO_FUSIONS = ["concat", "cross_attention"]


def run_demo(
    workdir: Path, patients: int = 320, seed: int = 0, console: Console | None = None,
    train: bool = True,
) -> dict[str, Any]:
    """Run every stage on synthetic data; return the per-stage summaries."""
    console = console or Console()
    stages = ["synth", "ingest", "re-ingest"] + (["train", "compare", "score"] if train else [])
    workdir, rep = _start(workdir, len(stages))
    results: dict[str, Any] = {}

    from synth import SynthConfig, synth_cohort

    t0 = time.perf_counter()
    data = workdir / "synthetic"
    synth_cohort(data, patients=patients, seed=seed, bad_inputs=4,
                 config=SynthConfig(label_rule="xor", modalities=DEMO_MODALITIES))
    results["synth"] = {"patients": patients, "bad_inputs": 4, "folder": str(data),
                        "label": "CT lesion XOR note finding"}
    rep.update("demo", advance=1, info="synth")
    console.print(f"[green]synth[/]   {patients} patients, CT + note, label = CT lesion XOR "
                  f"note finding (+4 with planted bad inputs) in "
                  f"{time.perf_counter() - t0:.1f}s -> {data}")

    from workflows.ingest import run_ingest

    prepared = workdir / "prepared"
    for attempt in ("ingest", "re-ingest"):
        t0 = time.perf_counter()
        summary = run_ingest(
            data / "manifest.csv", prepared, config="tiny", overrides=DEMO_OVERRIDES,
            allow_demo_key=True,
        )
        results[attempt] = summary
        rep.update("demo", advance=1, info=attempt)
        console.print(
            f"[green]{attempt:<8}[/] {summary['inputs']} inputs: {summary['accepted']} accepted, "
            f"{summary['quarantined']} quarantined, {summary['computed']} computed, "
            f"{summary['cached']} from cache in {time.perf_counter() - t0:.1f}s"
        )

    _reasons_table(console, results["ingest"]["reasons"])
    console.print(f"prepared cohort: {prepared / 'cohort.parquet'}\n"
                  f"quarantine:      {prepared / 'quarantine.parquet'}")
    if not train:
        return results

    tracking = _train(console, rep, results, prepared, workdir, "tiny", DEMO_OVERRIDES,
                      DEMO_FUSIONS, len(DEMO_MODALITIES), MODEL_NAME, "auroc", "patients")
    _compare_and_score(console, rep, results, MODEL_NAME, "test_auroc", MODEL_NAME,
                       prepared, workdir, tracking, "patients")
    return results


MODEL_NAME = "clinfuse-demo"
DEMO_TASKS = ("clinical", "digits")
DIGITS_MODEL = "clinfuse-demo-digits"
DIGITS_SAMPLES = 3000  # 450 test samples: CIs about +-0.03 around accuracy 0.9
DIGITS_FUSIONS = ["concat"]
DIGITS_MODALITIES = ("audio", "image")


def run_digits_demo(
    workdir: Path, samples: int = DIGITS_SAMPLES, seed: int = 0, console: Console | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """``clinfuse demo --task digits``: synth -> ingest -> train fusion + baselines ->
    compare -> score on handwritten + spoken digits; return the per-stage summaries."""
    console = console or Console()
    workdir, rep = _start(workdir, 5)
    import torch

    # Tiny inputs and encoders: one intra-op thread is faster than one per core, and far
    # faster on a busy machine (the recipe's train.threads does the same for training).
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    overrides = list(overrides or [])

    from synth.digits import synth_digits

    t0 = time.perf_counter()
    data = workdir / "synthetic"
    synth_digits(data, n=samples, seed=seed)
    results["synth"] = {"samples": samples, "folder": str(data),
                        "label": "digit 0-9 (handwritten image + spoken word)"}
    rep.update("demo", advance=1, info="synth")
    console.print(f"[green]synth[/]    {samples} samples: degraded handwritten digit image + "
                  f"noisy spoken digit, 10 classes, in {time.perf_counter() - t0:.1f}s -> {data}")

    from workflows.ingest import run_ingest

    prepared = workdir / "prepared"
    t0 = time.perf_counter()
    summary = run_ingest(data / "manifest.csv", prepared, config="digits", overrides=overrides,
                         allow_demo_key=True)
    results["ingest"] = summary
    rep.update("demo", advance=1, info="ingest")
    console.print(f"[green]ingest[/]   {summary['inputs']} inputs: {summary['accepted']} accepted, "
                  f"{summary['quarantined']} quarantined in {time.perf_counter() - t0:.1f}s")

    tracking = _train(console, rep, results, prepared, workdir, "digits", overrides,
                      DIGITS_FUSIONS, len(DIGITS_MODALITIES), DIGITS_MODEL, "accuracy",
                      "samples")
    _compare_and_score(console, rep, results, DIGITS_MODEL, "test_accuracy", DIGITS_MODEL,
                       prepared, workdir, tracking, "samples")
    return results


def _start(workdir: Path, stages: int) -> tuple[Path, Any]:
    """The demo's work folder (created), its Prefect home, one local Prefect server for all
    stages (and later commands) and a progress reporter for ``stages`` stages."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(workdir / ".prefect"))
    from workflows.prefect_server import ensure_server
    from workflows.progress import reporter

    ensure_server()
    rep = reporter()
    rep.start("demo", "demo stages", stages)
    return workdir, rep


def _train(
    console: Console, rep: Any, results: dict[str, Any], prepared: Path, workdir: Path,
    recipe: str, overrides: list[str], fusions: list[str], n_baselines: int, model: str,
    metric: str, unit: str,
) -> str:
    """Train ``fusions`` + one baseline per modality into the demo's SQLite MLflow store,
    print the table and the verdict by test ``metric``; return the tracking URI."""
    from workflows.train import train_flow

    tracking = f"sqlite:///{workdir / 'mlflow.db'}"  # absolute path: four slashes in all
    t0 = time.perf_counter()
    results["train"] = train_flow(str(prepared), recipe, overrides, fusions, True, model,
                                  model, tracking, str(workdir))
    rep.update("demo", advance=1, info="train")
    console.print(f"[green]train[/]    {len(results['train']['variants'])} models "
                  f"({len(fusions)} fusion + {n_baselines} unimodal baselines) "
                  f"in {time.perf_counter() - t0:.0f}s")
    _results_table(console, results["train"]["variants"], metric, unit)
    results["verdict"] = fusion_verdict(results["train"]["variants"], metric, unit)
    console.print(results["verdict"]["text"], highlight=False, soft_wrap=True)
    return tracking


def _compare_and_score(
    console: Console, rep: Any, results: dict[str, Any], experiment: str, metric: str,
    model: str, prepared: Path, workdir: Path, tracking: str, unit: str,
) -> None:
    """Compare the experiment's runs by ``metric`` and promote a champion (or say why not),
    then score the prepared cohort with it; print where to look next."""
    from registry.compare import PromotionRefused
    from workflows.compare import run_compare
    from workflows.score import run_score

    try:
        results["compare"] = run_compare(experiment, metric, model, workdir, console,
                                         tracking_uri=tracking)
        alias = "champion"
    except PromotionRefused as err:  # an honest "not separable": say so, score the challenger
        console.print(f"[yellow]not promoted:[/] {err}", highlight=False, soft_wrap=True)
        results["compare"] = {"refused": str(err)}
        alias = "challenger"
    rep.update("demo", advance=1, info="compare")
    t0 = time.perf_counter()
    results["score"] = run_score(
        prepared, workdir / "predictions", f"models:/{model}@{alias}",
        workdir=workdir, tracking_uri=tracking,
    )
    sc = results["score"]
    rep.update("demo", advance=1, info="score")
    console.print(
        f"[green]score[/]    {sc['scored_now']} {unit} scored with {sc['model_name']} "
        f"v{sc['model_version']} ({len(sc['skipped'])} reported as not scorable) in "
        f"{time.perf_counter() - t0:.0f}s -> {sc['predictions_path']}"
    )
    console.print(
        "\nOpen the MLflow UI on the demo's store:\n"
        f"  mlflow ui --backend-store-uri {tracking} --port 5000\n"
        "Prefect runs of this demo, in Prefect's UI (stop the demo's background server first):\n"
        f"  PREFECT_HOME={os.environ['PREFECT_HOME']} clinfuse server stop\n"
        f"  PREFECT_HOME={os.environ['PREFECT_HOME']} prefect server start"
    )


def fusion_verdict(
    variants: list[dict[str, Any]], metric: str = "auroc", unit: str = "patients"
) -> dict[str, Any]:
    """Best fusion model vs best unimodal baseline by test ``metric``: do their 95% CIs overlap?

    The one sentence the demo exists to show, with the number of test ``unit`` behind it.
    """
    def best(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return max(rows, key=lambda r: r.get(metric) or 0.0)

    fused = best([v for v in variants if "+" in str(v.get("modalities"))])
    alone = best([v for v in variants if "+" not in str(v.get("modalities"))])
    separated = fused[f"{metric}_ci_low"] > alone[f"{metric}_ci_high"]
    label = METRIC_LABELS.get(metric, metric)

    def show(r: dict[str, Any]) -> str:
        return (f"{r['variant']} {label} {r[metric]:.3f} "
                f"[{r[f'{metric}_ci_low']:.3f}, {r[f'{metric}_ci_high']:.3f}]")

    text = (f"best fusion {show(fused)} vs best unimodal baseline {show(alone)}, "
            f"{int(fused['n_test'])} test {unit}: 95% CIs "
            + ("do not overlap: fusion wins" if separated else "overlap: not separable"))
    return {"fusion": fused["variant"], "baseline": alone["variant"], "metric": metric,
            "separated": bool(separated), "n_test": int(fused["n_test"]), "text": text}


METRIC_LABELS = {"auroc": "AUROC", "accuracy": "accuracy"}


def _results_table(
    console: Console, variants: list[dict[str, Any]], metric: str = "auroc",
    unit: str = "patients",
) -> None:
    """Test ``metric`` per model, best first, with its CI and the test rows behind it."""
    label = METRIC_LABELS.get(metric, metric)
    table = Table(title=f"test {label} (95% bootstrap CI)")
    for col in ("model", "modalities", label, "95% CI", f"test {unit}"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for v in sorted(variants, key=lambda r: r.get(metric) or 0.0, reverse=True):
        table.add_row(v["variant"], str(v["modalities"]), f"{v[metric]:.3f}",
                      f"{v[f'{metric}_ci_low']:.3f}-{v[f'{metric}_ci_high']:.3f}",
                      str(int(v["n_test"])))
    console.print(table)


def _reasons_table(console: Console, reasons: dict[str, int]) -> None:
    table = Table(title="quarantined inputs by reason")
    table.add_column("reason code")
    table.add_column("inputs", justify="right")
    for code, n in reasons.items():
        table.add_row(code, str(n))
    console.print(table)
