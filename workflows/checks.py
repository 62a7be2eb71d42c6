"""Checks the CLI runs before any flow starts, so a user error costs seconds, not a run.

Each check raises a ``ClinfuseError`` naming the input and what to do; the CLI prints it as
one line with exit code 2. Nothing here starts Prefect or writes to MLflow: a failed check
leaves nothing behind (no flow run, no MLflow run, no ``mlflow.db``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modalities.errors import ConfigError


def at_least(name: str, value: int | None, minimum: int) -> None:
    """``--name`` must be >= ``minimum`` (counts, sizes, shards)."""
    if value is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum} (got {value})")


def existing_file(what: str, path: Path) -> Path:
    """``path`` must be a readable file."""
    if not Path(path).is_file():
        hint = " (it is a folder)" if Path(path).is_dir() else ""
        raise ConfigError(f"{what} {path} does not exist{hint}; check the path")
    return Path(path)


def existing_dir(what: str, path: Path) -> Path:
    if not Path(path).is_dir():
        raise ConfigError(f"{what} {path} is not a folder; check the path")
    return Path(path)


def prepared_folder(path: Path) -> Path:
    """A prepared cohort written by ``clinfuse ingest`` (prepared.json + cohort.parquet)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(
            f"prepared cohort {path} does not exist; run `clinfuse ingest "
            "MANIFEST --out FOLDER` first and pass that folder"
        )
    for name in ("prepared.json", "cohort.parquet"):
        if not (path / name).is_file():
            raise ConfigError(
                f"{path} is not a prepared cohort (no {name}); run `clinfuse ingest` into it first"
            )
    return path


def manifest(path: Path, cohort: Any) -> None:
    """The manifest exists, parses, and has the ID column and every configured modality.

    Messages name only the columns clinfuse expects, never the ones found: a manifest
    without its header row has a patient's values (ID, name, dates) as column names.
    """
    from modalities.ingest import load_manifest

    existing_file("manifest", path)
    df = load_manifest(Path(path))  # cached per process: the flow's planning reuses it
    cols = set(df.columns)
    if cohort.id_column not in cols:
        raise ConfigError(
            f"manifest {path} lacks the ID column {cohort.id_column!r} (is its header row "
            "missing?); add the header, rename the column or set cohort.id_column"
        )
    missing = sorted(m for m in cohort.modalities if cohort.column(m) not in cols)
    if missing:
        keep = sorted(set(cohort.modalities) - set(missing))
        how = (
            f"drop them with --modalities {','.join(keep)} or "
            + " ".join(f"--set cohort.modalities.{m}=null" for m in missing)
            if keep
            else "set cohort.modalities.<name>.column to the right column"
        )
        raise ConfigError(
            f"manifest {path} has no column for modality(ies) {', '.join(missing)}; {how}"
        )


def _encoders(mods: dict[str, Any]) -> None:
    """Unknown encoder names and bad encoder options, without building real weights.

    Encoders are built on PyTorch's meta device (no memory, no initialisation cost). A
    ``ClinfuseError`` (unknown name, missing local model) is the user's; anything else an
    encoder cannot do on the meta device (a pretrained text model) is left to the run.
    """
    import torch

    from modalities.errors import ClinfuseError

    for mod in mods.values():
        try:
            with torch.device("meta"):
                mod.encoder()
        except ClinfuseError:
            raise
        except Exception:  # not checkable on the meta device: the run will tell
            continue


def model_names(cfg: Any, fusions: list[str]) -> None:
    """Fusion strategies, their options, and the head exist in the registries."""
    from fusion.base import _FUSIONS, check_options
    from fusion.heads import _HEADS

    for name in fusions:
        cls = _FUSIONS.get(name)  # UnknownNameError lists the valid names
        check_options("fusion strategy", name, cls, dict(cfg.model.fusion.options))
    _HEADS.get(cfg.model.head.name)


def train(prepared: Path, cfg: Any, fusions: list[str], baselines: bool) -> dict[str, int]:
    """Everything ``clinfuse train`` can know before a run: returns the split sizes."""
    from fusion.data import PreparedCohort
    from fusion.experiment import plan_variants, split_cohort
    from fusion.tasks import cohort_task
    from modalities.cohort_table import CohortTable

    prepared_folder(prepared)
    model_names(cfg, fusions)
    cohort = PreparedCohort(Path(prepared), cfg.cohort)
    have = CohortTable.modalities_in(cohort.frame)
    missing = sorted(set(cohort.mods) - set(have))
    if missing:
        raise ConfigError(
            f"{prepared} was prepared without modality(ies) {', '.join(missing)}; train with "
            f"--modalities {','.join(have)} (or ingest with a config that includes them)"
        )
    if baselines and not cohort_task(cfg.cohort).unimodal:
        raise ConfigError(f"--baselines: a {cfg.cohort.task} model contrasts two or more "
                          "modalities, so a one-modality baseline cannot be trained; drop "
                          "--baselines")
    plan_variants(sorted(cohort.mods), fusions, baselines)
    import warnings

    with warnings.catch_warnings():  # the run repeats split warnings; here only errors count
        warnings.simplefilter("ignore")
        rows = split_cohort(cohort, cfg.train)  # "the val split is empty" and friends
    _encoders(cohort.mods)  # last: a text encoder imports transformers (seconds)
    return {str(k): int(v) for k, v in rows["split"].value_counts().items()}


def model_uri(uri: str, tracking_uri: str | None, workdir: Path) -> tuple[str, str]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` resolves in the registry.

    A local SQLite store that does not exist yet is reported without creating it.
    """
    from registry.lookup import resolve_model_version

    if not uri.startswith("models:/") or uri.removeprefix("models:/") in ("", "@", "/"):
        raise ConfigError(
            f"model URI {uri!r} must look like models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    return resolve_model_version(uri, tracking_uri, workdir)
