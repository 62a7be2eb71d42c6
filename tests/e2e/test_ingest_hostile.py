"""Hostile inputs through the real CLI: the night completes, everything is accounted for.

One data root holds what issues 9 and 10 reported: a FIFO note, a series folder with a
symlink to /dev/zero, a series whose slices link out of the root, a FIFO in a series
folder, a valid series in ``scans/CT #2``, ``notes/visit#2.txt`` next to ``notes/visit/``,
an ``.rtf`` note path, a huge inline note, a long single-token note, and a note whose
reader crashes (a patched reader: the CLI runs in a launcher that wraps
``NoteModality.load``). A second test times one input out in an in-process flow run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from modalities.note import NoteModality
from modalities.pseudonym import Pseudonymizer
from synth import synth_cohort

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo"),
]

CANARY = "Whitfield_Jane_00451234"
CRASH = "CRASHMARKER"
# The real CLI, with NoteModality.load wrapped to crash on a marker (an injected reader
# bug whose message quotes the note, as careless library errors do).
LAUNCHER = f"""
import sys
from modalities.note import NoteModality
_load = NoteModality.load
def load(self, source):
    text = _load(self, source)
    if {CRASH!r} in text:
        raise RuntimeError("reader bug near: " + text[:120])
    return text
NoteModality.load = load
sys.argv[0] = "clinfuse"
from workflows.cli import main
main()
"""


def clinfuse(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    # COLUMNS: a wide terminal, so the console does not wrap a one-line message.
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "INFO",
           "COLUMNS": "500"}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-c", LAUNCHER, *args],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip


def _hostile_root(tmp: Path) -> tuple[Path, list[dict[str, str]], dict[tuple[int, str], str]]:
    """Build the data root; return it, the manifest rows and the expected codes."""
    root, outside = tmp / "root", tmp / "outside"
    synth_cohort(root, patients=3, seed=5)
    man = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    phi = json.loads((root / "phi.json").read_text())
    name = phi["names"][0]
    (root / "scans").mkdir()
    shutil.move(root / "case_0001" / "ct", root / "scans" / "CT #2")
    shutil.copytree(root / "case_0002" / "ct", root / "zero_series")
    (root / "zero_series" / "IM_zero.dcm").symlink_to("/dev/zero")
    shutil.move(root / "case_0003" / "ct", outside / "ct")
    (root / "linked_out").mkdir()
    for f in (outside / "ct").iterdir():
        (root / "linked_out" / f.name).symlink_to(f)
    shutil.copytree(root / "case_0002" / "ct", root / "fifo_series")
    os.mkfifo(root / "fifo_series" / "IM_pipe.dcm")
    notes = root / "notes"
    (notes / "visit").mkdir(parents=True)
    (notes / "visit#2.txt").write_text(f"Patient: {name}. Second visit, chest pain resolved.")
    os.mkfifo(notes / "fifo.txt")
    (notes / f"{CANARY}.rtf").write_text(f"{{\\rtf1 Patient: {name}}}")
    huge = f"Patient: {name}. " + "word " * 200_100  # over the 1 MB cap
    token = f"{name.split()[-1]}" + "x" * 400_000  # one 400 kB token
    rows = [
        {"patient_id": man.at[0, "patient_id"], "ct": "scans/CT #2", "mri": man.at[0, "mri"],
         "note": "notes/visit#2.txt", "label": "1"},
        {"patient_id": man.at[1, "patient_id"], "ct": "zero_series", "mri": "",
         "note": "notes/fifo.txt", "label": "0"},
        {"patient_id": man.at[2, "patient_id"], "ct": "linked_out", "mri": "",
         "note": f"notes/{CANARY}.rtf", "label": "1"},
        {"patient_id": "Z9000001", "ct": "fifo_series", "mri": "", "note": huge, "label": "0"},
        {"patient_id": "Z9000002", "ct": "", "mri": "",
         "note": f"{CRASH} Patient: {name}, MRN {man.at[0, 'patient_id']}.", "label": "1"},
        {"patient_id": "Z9000003", "ct": "", "mri": "", "note": token, "label": "0"},
    ]  # fmt: skip
    expected = {
        (0, "ct"): "", (0, "mri"): "", (0, "note"): "",
        (1, "ct"): "PATH_OUTSIDE_ROOT", (1, "note"): "NOT_REGULAR_FILE",
        (2, "ct"): "PATH_OUTSIDE_ROOT", (2, "note"): "UNSUPPORTED_NOTE_FORMAT",
        (3, "ct"): "NOT_REGULAR_FILE", (3, "note"): "NOTE_TOO_LARGE",
        (4, "note"): "INTERNAL_ERROR",
        (5, "note"): "",
    }  # fmt: skip
    if not rows[0]["mri"]:
        del expected[(0, "mri")]
    return root, rows, expected


def _needles(root: Path, rows: list[dict[str, str]]) -> set[str]:
    phi = json.loads((root / "phi.json").read_text())
    needles = {
        v
        for k in ("names", "dicom_names", "mrns", "birth_dates", "phones")
        for v in phi[k]
        if len(v) >= 5
    }
    needles |= {part for n in phi["names"] for part in n.split() if len(part) >= 5}
    needles |= {r["patient_id"] for r in rows} | {CANARY, "Whitfield", "CT #2", "linked_out"}
    return needles


def test_hostile_folder_through_the_cli(tmp_path: Path) -> None:
    root, rows, expected = _hostile_root(tmp_path)
    manifest = root / "hostile.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    prepared, home = tmp_path / "prepared", tmp_path / "prefect"
    run = clinfuse(
        "ingest", str(manifest), "--out", str(prepared), "--config", "tiny", "--json",
        home=home,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    inputs = sum(1 for r in rows for m in ("ct", "mri", "note") if r[m])
    assert summary["inputs"] == inputs == len(expected)
    assert summary["accepted"] + summary["quarantined"] == inputs
    q = pd.read_parquet(prepared / "quarantine.parquet")
    got = {
        (int(s.split()[2].rstrip(",")), m): c
        for s, m, c in zip(q["source"], q["modality"], q["code"], strict=True)
    }
    assert got == {k: v for k, v in expected.items() if v}
    cohort = pd.read_parquet(prepared / "cohort.parquet")
    pseudo = Pseudonymizer.from_env()
    first = cohort.set_index("patient").loc[pseudo(rows[0]["patient_id"])]
    assert (first["ct_status"], first["note_status"]) == ("ok", "ok")  # 'CT #2', 'visit#2'

    # PHI canary: nothing from the inputs reaches the CLI's output or the quarantine.
    haystacks = {
        "stdout+stderr": (run.stdout + run.stderr).encode(),
        "quarantine.parquet": (prepared / "quarantine.parquet").read_bytes(),
        "quarantine.csv": q.to_csv().encode(),
    }
    leaks = [(n, k) for k, blob in haystacks.items() for n in _needles(root, rows) if
             n.encode() in blob]  # fmt: skip
    assert not leaks, leaks[:5]

    # A manifest without its header row: one line, exit 2, no data echoed, nothing written.
    headless = root / "headless.csv"
    headless.write_text("\n".join(manifest.read_text().splitlines()[1:3]) + "\n")
    bad = clinfuse("ingest", str(headless), "--out", str(tmp_path / "p2"), home=home)
    assert bad.returncode == 2, bad.stderr[-2000:]
    message = (bad.stdout + bad.stderr).strip()
    assert len(message.splitlines()) == 1 and "patient_id" in message, message
    assert not [n for n in _needles(root, rows) if n in message]
    assert not (tmp_path / "p2").exists()


def test_timed_out_input_is_quarantined_and_the_run_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that never returns: its chunk times out, is re-run input by input, and
    only the stuck input is quarantined (TIMEOUT); the others in its chunk are accepted."""
    from workflows.ingest import run_ingest

    real_load = NoteModality.load

    def stuck_load(self: NoteModality, source: Any) -> str:
        text = real_load(self, source)
        while "STUCK" in text:  # Python-level loop: the task timeout can interrupt it
            time.sleep(0.05)
        return text

    monkeypatch.setattr(NoteModality, "load", stuck_load)
    rows = [
        {"patient_id": f"T{i:07d}", "note": f"visit {i}: stable" + (" STUCK" if i == 1 else ""),
         "label": str(i % 2)}
        for i in range(3)
    ]  # fmt: skip
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    overrides = [
        "cohort.modalities={note: {}}", "ingest.chunk_size=3", "ingest.task_timeout_s=3",
    ]  # fmt: skip
    summary = run_ingest(manifest, tmp_path / "out", "tiny", overrides)
    assert summary["inputs"] == 3 and summary["accepted"] == 2
    assert summary["reasons"] == {"TIMEOUT": 1}
    q = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert q.loc[0, "source"] == "manifest row 1, column 'note'"
    assert "task_timeout_s=3" in q.loc[0, "message"]
