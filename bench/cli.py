"""CLI start-up: the fixed cost of a command (imports, Prefect, MLflow), before and after.

Three commands, each a fresh ``python -m workflows.cli`` process:

* ``help``: ``clinfuse --help`` (imports only);
* ``bad-fusion``: ``clinfuse train PREPARED --fusion no_such_fusion`` (a user error);
* ``cached-ingest``: a 4-patient ingest whose inputs are all in the cache already.

Modes: ``ephemeral`` (Prefect's temporary server in every process, the old behaviour),
``shared`` (one local server per PREFECT_HOME, started before timing: what every command
after the first one pays) and ``shared-first`` (the command that starts it). With
``--before SRC`` the same commands also run from an older source tree (a ``git worktree``
of the commit before the change) as the baseline of the ratio column; without it the
baseline is ``ephemeral``. Repetitions are interleaved so machine load hits every mode alike;
the table shows medians of wall time and of the command's own CPU time (user+sys; the
shared server's CPU is not included).

    python bench/cli.py                         # 3 repetitions
    python bench/cli.py --before /tmp/before --reps 5
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user+sys of the child) and exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, res.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--before", type=Path, default=None, help="older source tree (baseline)")
    args = ap.parse_args()

    from modalities.ingest import ingest_manifest
    from synth import synth_cohort
    from workflows.config import load_config
    from workflows.prefect_server import ensure_server, stop_server

    work = Path(tempfile.mkdtemp(prefix="clinfuse-bench-cli-"))
    synth_cohort(work / "synth", patients=4, seed=0)
    manifest = work / "synth" / "manifest.csv"
    prepared = work / "prepared"
    os.environ.setdefault("CLINFUSE_PSEUDONYM_KEY", "bench-key-0123456789abcdef")
    ingest_manifest(manifest, load_config("tiny").cohort, work / "synth", prepared)

    commands = {
        "help": ["--help"],
        "bad-fusion": [
            "train",
            str(prepared),
            "--config",
            "tiny",
            "--fusion",
            "no_such_fusion",
            "--workdir",
            str(work / "w"),
        ],
        "cached-ingest": [
            "ingest",
            str(manifest),
            "--out",
            str(prepared),
            "--config",
            "tiny",
            "--json",
        ],
    }
    base_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    base_env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    modes: dict[str, dict[str, str]] = {
        "ephemeral": {
            "PYTHONPATH": str(ROOT),
            "CLINFUSE_PREFECT_SERVER": "ephemeral",
            "PREFECT_HOME": str(work / "home-ephemeral"),
        },
        "shared": {
            "PYTHONPATH": str(ROOT),
            "CLINFUSE_PREFECT_SERVER": "shared",
            "PREFECT_HOME": str(work / "home-shared"),
        },
        "shared-first": {
            "PYTHONPATH": str(ROOT),
            "CLINFUSE_PREFECT_SERVER": "shared",
            "PREFECT_HOME": str(work / "home-first"),
        },
    }
    if args.before is not None:
        modes = {
            "before": {
                "PYTHONPATH": str(args.before.resolve()),
                "PREFECT_HOME": str(work / "home-before"),
            },
            **modes,
        }
    baseline = "before" if args.before is not None else "ephemeral"

    shared_home = Path(modes["shared"]["PREFECT_HOME"])
    os.environ["PREFECT_HOME"] = str(shared_home)
    os.environ["CLINFUSE_PREFECT_SERVER"] = "shared"
    t0 = time.perf_counter()
    ensure_server()
    print(f"shared server start (once per PREFECT_HOME): {time.perf_counter() - t0:.1f} s")
    os.environ.pop("PREFECT_API_URL", None)

    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for _ in range(args.reps):
            for mode, extra in modes.items():
                for name, argv in commands.items():
                    if mode == "shared-first":
                        if name != "cached-ingest":
                            continue
                        stop_server(Path(extra["PREFECT_HOME"]))
                    env = {**base_env, **extra}
                    wall, cpu, rc = run([sys.executable, "-m", "workflows.cli", *argv], env, work)
                    want = 2 if name == "bad-fusion" else 0
                    if rc != want:
                        raise SystemExit(f"{mode}/{name} exited {rc} (expected {want})")
                    results.setdefault((mode, name), []).append((wall, cpu))
    finally:
        for extra in modes.values():
            stop_server(Path(extra["PREFECT_HOME"]))

    print(
        f"\nmedian of {args.reps} (load average at end: {os.getloadavg()[0]:.1f}, "
        f"{os.cpu_count()} CPUs)"
    )
    print(f"{'command':<14} {'mode':<13} {'wall s':>7} {'cpu s':>6} {'x faster':>9}")
    for name in commands:
        base = results.get((baseline, name))
        for mode in modes:
            if (mode, name) not in results:
                continue
            walls, cpus = zip(*results[(mode, name)], strict=True)
            wall, cpu = statistics.median(walls), statistics.median(cpus)
            ratio = statistics.median(w for w, _ in base) / wall if base else float("nan")
            print(f"{name:<14} {mode:<13} {wall:>7.1f} {cpu:>6.1f} {ratio:>9.1f}")


if __name__ == "__main__":
    main()
