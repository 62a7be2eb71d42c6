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

    r = CliRunner().invoke(app, ["ingest", str(tmp_path / "none.csv"), "--out", str(tmp_path),
                                 "--config", "nope"])
    assert r.exit_code == 2
    assert "unknown config 'nope'" in r.output and "Traceback" not in r.output


def test_unset_pseudonym_key_fails_before_the_flow(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from workflows.cli import app

    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,note,label\nA,some text,1\n")
    monkeypatch.delenv("CLINFUSE_PSEUDONYM_KEY", raising=False)
    r = CliRunner().invoke(app, ["ingest", str(manifest), "--out", str(tmp_path / "p"),
                                 "--config", "tiny", "--set", "cohort.modalities={note: {}}"])
    assert r.exit_code == 2
    assert "CLINFUSE_PSEUDONYM_KEY is not set" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "p").exists()
