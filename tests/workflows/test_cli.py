"""The CLI starts light (no heavy imports) and reports user errors without a traceback."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


def test_help_does_not_import_heavy_packages() -> None:
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom workflows.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
        "assert 'ingest' in r.output\n"
        "print(sorted(m for m in ('torch','monai','mlflow','transformers','prefect') "
        "if m in sys.modules))"
    )
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_user_error_is_one_line_exit_2(tmp_path) -> None:
    from typer.testing import CliRunner

    from workflows.cli import app

    r = CliRunner().invoke(
        app, ["ingest", str(tmp_path / "none.csv"), "--out", str(tmp_path), "--config", "nope"]
    )
    assert r.exit_code == 2
    assert "unknown config 'nope'" in r.output and "Traceback" not in r.output


def test_unset_pseudonym_key_fails_before_the_flow(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from workflows.cli import app

    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,note,label\nA,some text,1\n")
    monkeypatch.delenv("CLINFUSE_PSEUDONYM_KEY", raising=False)
    r = CliRunner().invoke(
        app,
        [
            "ingest",
            str(manifest),
            "--out",
            str(tmp_path / "p"),
            "--config",
            "tiny",
            "--set",
            "cohort.modalities={note: {}}",
        ],
    )
    assert r.exit_code == 2
    assert "CLINFUSE_PSEUDONYM_KEY is not set" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "p").exists()


# --------------------------------------------------------------------------- fail fast
# Every user error the CLI can know before a flow starts: one line, exit 2, no traceback,
# nothing in MLflow (no mlflow.db), no Prefect server started (in-process: no flow import).

import sqlite3  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def small_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 synthetic patients ingested with the tiny recipe: too few for three splits."""
    from fusion.tasks import get_task
    from modalities.ingest import ingest_manifest
    from synth import synth_cohort
    from workflows.config import load_config

    root = tmp_path_factory.mktemp("cli-small")
    synth_cohort(root / "synth", patients=4, seed=5)
    ingest_manifest(
        root / "synth" / "manifest.csv",
        load_config("tiny").cohort,
        root / "synth",
        root / "prepared",
        labels=get_task("binary"),
    )
    return root / "prepared"


def _fails_in_one_line(args: list[str], expect: str) -> str:
    from typer.testing import CliRunner

    from workflows.cli import app

    r = CliRunner().invoke(app, args)
    out = r.output.strip()
    assert r.exit_code == 2, (r.exit_code, out, r.exception)
    assert expect in out, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    assert out.startswith("error: ")
    return out


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--fusion", "no_such_fusion"], "unknown fusion strategy 'no_such_fusion'; valid names"),
        (["--config", "nope"], "unknown config 'nope'; valid names"),
        (["--set", "model.head.name=nope"], "unknown head 'nope'; valid names"),
        (
            # Checked after the split (text encoders import transformers): 2/1/1 patients.
            [
                "--set",
                "cohort.modalities.ct.encoder.name=nope",
                "--set",
                "train.split_fractions=[0.5,0.25,0.25]",
            ],
            "unknown volume encoder 'nope'",
        ),
        (["--set", "train.max_epochs=0"], "train.max_epochs"),
        (["--fusion", "concat"], "the val split is empty"),
        (["--modalities", "ct,pet"], "pet not in config"),
        (["--ddp", "-1"], "--ddp must be >= 0"),
    ],
)
def test_train_user_errors_fail_fast(
    small_prepared: Path, tmp_path: Path, extra: list[str], expect: str
) -> None:
    args = ["train", str(small_prepared), "--workdir", str(tmp_path)]
    _fails_in_one_line(
        args + (["--config", "tiny"] if "--config" not in extra else []) + extra, expect
    )
    assert not (tmp_path / "mlflow.db").exists()


def test_train_missing_prepared_folder(tmp_path: Path) -> None:
    _fails_in_one_line(
        ["train", str(tmp_path / "nope"), "--workdir", str(tmp_path)], "prepared cohort"
    )
    _fails_in_one_line(
        ["train", str(tmp_path), "--workdir", str(tmp_path)],
        "is not a prepared cohort (no prepared.json)",
    )
    assert not (tmp_path / "mlflow.db").exists()


def test_train_prepared_without_a_configured_modality(tmp_path: Path) -> None:
    """A cohort ingested with CT + notes, trained with the default (CT + MRI + notes)."""
    from fusion.tasks import cohort_task
    from modalities.ingest import ingest_manifest
    from synth import synth_cohort
    from workflows.config import load_config

    synth_cohort(tmp_path / "s", patients=3, seed=2)
    cohort = load_config("tiny", ["cohort.modalities.mri=null"]).cohort
    ingest_manifest(tmp_path / "s" / "manifest.csv", cohort, tmp_path / "s", tmp_path / "p",
                    labels=cohort_task(cohort))
    _fails_in_one_line(
        ["train", str(tmp_path / "p"), "--config", "tiny", "--workdir", str(tmp_path)],
        "prepared without modality(ies) mri; train with --modalities ct,note",
    )


def test_score_user_errors_fail_fast(small_prepared: Path, tmp_path: Path) -> None:
    base = [
        "score",
        str(small_prepared),
        "--out",
        str(tmp_path / "pred"),
        "--workdir",
        str(tmp_path),
    ]
    _fails_in_one_line(base, "no MLflow store at")
    assert not (tmp_path / "mlflow.db").exists()  # looking did not create it
    _fails_in_one_line([*base, "--batch-size", "0"], "--batch-size must be >= 1 (got 0)")
    _fails_in_one_line([*base, "--top-k", "0"], "--top-k must be >= 1 (got 0)")
    _fails_in_one_line([*base, "--model", "clinfuse@champion"], "must look like models:/")
    _fails_in_one_line(["score", str(tmp_path / "nope"), "--out", str(tmp_path)], "prepared cohort")
    # A store with a registered model but no such alias, and no such model.
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri, registry_uri=uri).create_registered_model("clinfuse")
    _fails_in_one_line(base, "model 'clinfuse' has no alias 'champion'")
    _fails_in_one_line(
        [*base, "--model", "models:/other@champion"],
        "no registered model 'other'; registered: clinfuse",
    )
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 0


def test_ingest_user_errors_fail_fast(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,ct,note,label\nA,,some text,1\n")
    out = tmp_path / "prepared"
    _fails_in_one_line(["ingest", str(tmp_path / "none.csv"), "--out", str(out)], "manifest")
    msg = _fails_in_one_line(
        ["ingest", str(manifest), "--out", str(out)], "has no column for modality(ies) mri"
    )
    assert "--modalities ct,note" in msg and "--set cohort.modalities.mri=null" in msg
    _fails_in_one_line(
        [
            "ingest",
            str(manifest),
            "--out",
            str(out),
            "--modalities",
            "ct,note",
            "--data-root",
            str(tmp_path / "nope"),
        ],
        "--data-root",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["synth", "x", "--patients", "-3"], "--patients must be >= 1 (got -3)"),
        (["synth", "x", "--patients", "0"], "--patients must be >= 1 (got 0)"),
        (["synth", "x", "--bad-inputs", "-1"], "--bad-inputs must be >= 0"),
        (["demo", "--patients", "5"], "--patients must be >= 20"),
        (["demo", "--task", "nope"], "unknown demo task 'nope'; valid names: clinical, digits"),
        (["demo", "--task", "digits", "--samples", "50"], "--samples must be >= 100"),
        (["serve", "--set", "serve.timezone=Mars/Olympus"], "unknown time zone"),
        (["compare", "--workdir", "WORK"], "no MLflow store at"),
        (["index", "nope-dir", "--out", "m.csv"], "DICOM root"),
    ],
)
def test_small_user_errors(args: list[str], expect: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _fails_in_one_line([a.replace("WORK", str(tmp_path)) for a in args], expect)
    assert not (tmp_path / "x").exists() and not (tmp_path / "mlflow.db").exists()


def test_version_and_configs_json() -> None:
    import json

    from typer.testing import CliRunner

    from workflows.cli import app

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("clinfuse ")
    r = CliRunner().invoke(app, ["configs", "--json"])
    assert r.exit_code == 0 and {"default", "tiny"} <= set(json.loads(r.output))


def test_listing_recipes_and_an_unknown_recipe_do_not_import_torch() -> None:
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom workflows.cli import app\n"
        "r = CliRunner().invoke(app, ['configs'])\nassert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['train', 'p', '--config', 'nope'])\n"
        "assert r.exit_code == 2 and 'unknown config' in r.output, r.output\n"
        "print(sorted(m for m in ('torch', 'prefect', 'mlflow') if m in sys.modules))"
    )
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_score_against_a_dead_tracking_server_says_so(
    small_prepared: Path, tmp_path: Path, monkeypatch
) -> None:
    from tests.servers import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    _fails_in_one_line(
        ["score", str(small_prepared), "--out", str(tmp_path / "pred")], "does not answer"
    )


def test_train_table_shows_only_the_metrics_some_variant_has(capsys) -> None:
    from workflows.cli import _variants_table

    _variants_table([{"variant": "concat", "modalities": "image+text", "n_test": 150.0,
                      "auroc": None, "accuracy": None, "recall@1": 0.187,
                      "recall@1_ci_low": 0.13, "recall@1_ci_high": 0.26,
                      "median_rank": 6.0, "version": "1"}], "test metrics")
    out = capsys.readouterr().out
    assert "recall@1" in out and "0.187 [0.130–0.260]" in out and "median_rank" in out
    assert "auroc" not in out and "accuracy" not in out
    _variants_table([{"variant": "concat", "modalities": "ct+note", "n_test": 48.0,
                      "auroc": 0.9, "auroc_ci_low": 0.8, "auroc_ci_high": 0.97,
                      "accuracy": 0.85}], "test metrics")
    out = capsys.readouterr().out
    assert "0.900 [0.800–0.970]" in out and "recall@1" not in out


def test_train_baselines_for_a_retrieval_model_is_one_line_exit_2(tmp_path) -> None:
    import yaml
    from typer.testing import CliRunner

    from fusion.tasks import cohort_task
    from modalities.cohort import CohortConfig
    from modalities.ingest import ingest_manifest
    from tests.scoring.retrieval_data import cohort_section, write_manifest
    from workflows.cli import app

    section = cohort_section("retrieval")
    cfg = CohortConfig.model_validate(section)
    manifest = write_manifest(tmp_path / "manifest.csv", 30)
    ingest_manifest(manifest, cfg, tmp_path, tmp_path / "prepared", labels=cohort_task(cfg))
    recipe = tmp_path / "retrieval.yaml"
    recipe.write_text(yaml.safe_dump({"base": "tiny", "cohort": section,
                                      "model": {"head": {"name": "contrastive"}}}))
    r = CliRunner().invoke(app, ["train", str(tmp_path / "prepared"), "--config", str(recipe),
                                 "--modalities", "labs,vitals", "--baselines",
                                 "--workdir", str(tmp_path)])
    assert r.exit_code == 2, r.output
    assert "--baselines: a retrieval model contrasts" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()
