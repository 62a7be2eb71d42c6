"""Models in MLflow: log, register, promote, and load without running stored code.

A model is ``weights.safetensors`` + ``config.json`` (``registry.model_format``), logged as
an MLflow pyfunc whose MLmodel names an installed module (``loader_module:
registry.model_format``) instead of storing a code file or a pickle. Logging records the
SHA-256 of both files as tags in the tracking database (on the LoggedModel, on the run when
spooled, and on the model version at registration): an attacker who can only write the
artifact store cannot make a changed file pass.

Two ways to load:

* ``load_predictor("models:/NAME@ALIAS")`` - what ``clinfuse score`` and the nightly flow
  use. It downloads only ``config.json`` and ``weights.safetensors`` (by name), checks
  their hashes against the tags, and builds the model from them. It never reads MLmodel,
  never imports or executes anything from the artifact store, and never unpickles.
* ``load_pyfunc`` / ``mlflow.pyfunc.load_model`` - the standard MLflow route, for trusted
  registries: MLflow reads MLmodel and follows it (an edited MLmodel can point MLflow at a
  stored code file or a pickle). ``import registry`` sets
  ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` unless the user set it.

Aliases, not stages: a new version gets ``challenger``; ``promote`` moves ``champion`` and
records the version it replaced as tag ``previous_champion``. mlflow is imported lazily.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modalities.errors import ConfigError
from registry.model_format import (  # re-exported: the public names of the model format
    ALLOWED_BUILDER_PACKAGES,
    CONFIG_FILE,
    DATA_DIR,
    FORMAT_VERSION,
    LOADER_MODULE,
    REFERENCE_BUILDER,
    WEIGHTS_FILE,
    EncoderMismatchError,
    ModelIntegrityError,
    Predictor,
    _linear_reference_builder,
    build_from_files,
    build_predictor,
    resolve_builder,
    save_model_files,
    save_weights,
    sha256_file,
)

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from mlflow.models.model import ModelInfo

    from registry.tracking import Tracker

__all__ = [
    "ALLOWED_BUILDER_PACKAGES",
    "CHALLENGER",
    "CHAMPION",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "HASH_TAGS",
    "PREVIOUS_CHAMPION_TAG",
    "REFERENCE_BUILDER",
    "WEIGHTS_FILE",
    "EncoderMismatchError",
    "ModelIntegrityError",
    "Predictor",
    "_linear_reference_builder",
    "build_from_files",
    "build_predictor",
    "current_alias_version",
    "load_predictor",
    "load_pyfunc",
    "log_model",
    "promote",
    "register_model",
    "resolve_builder",
    "save_weights",
]

log = logging.getLogger(__name__)

CHALLENGER, CHAMPION = "challenger", "champion"
PREVIOUS_CHAMPION_TAG = "previous_champion"
WEIGHTS_TAG = "clinfuse.weights_sha256"
CONFIG_TAG = "clinfuse.config_sha256"
FORMAT_TAG = "clinfuse.format_version"
HASH_TAGS = {WEIGHTS_FILE: WEIGHTS_TAG, CONFIG_FILE: CONFIG_TAG}
# Where the two files lie inside a logged model (MLflow copies data_path to data/<name>).
MODEL_DATA_PATH = f"data/{DATA_DIR}"


def default_pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc (explicit: skips MLflow's slow inference, ~9 s)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("mlflow", "torch", "safetensors", "pandas", "numpy"):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs


class _PyfuncNoValidation:
    """``mlflow.pyfunc`` as a Model.log flavor that accepts ``validate_serving_input``.

    Model.log reads that flag from the kwargs it also hands to the flavor's save_model, and
    pyfunc's save_model refuses unknown kwargs; without the flag MLflow loads the model and
    predicts the example right after logging it (seconds per model, a second load).
    """

    __name__ = "mlflow.pyfunc"

    @staticmethod
    def save_model(path: str, mlflow_model: Any = None, **kwargs: Any) -> Any:
        import mlflow.pyfunc

        kwargs.pop("validate_serving_input", None)
        return mlflow.pyfunc.save_model(path=path, mlflow_model=mlflow_model, **kwargs)


def _signature_and_example(
    builder: str, config: Mapping[str, Any], input_example: Any, signature: Any
) -> tuple[Any, Any]:
    """Default signature and input example from the builder's ``example_io`` hook.

    Input columns are optional (a patient may lack a modality); the example is synthetic.
    """
    hook = getattr(resolve_builder(builder), "example_io", None)
    if hook is None or (input_example is not None and signature is not None):
        return input_example, signature
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import ColSpec, Schema

    inp, out = hook(dict(config))
    if signature is None:
        with warnings.catch_warnings():  # "integer columns cannot hold NaN": outputs only
            warnings.simplefilter("ignore", UserWarning)
            inferred = infer_signature(inp, out)
        optional = [ColSpec(c.type, c.name, required=False) for c in inferred.inputs.inputs]
        signature = ModelSignature(inputs=Schema(optional), outputs=inferred.outputs)
    return (inp if input_example is None else input_example), signature


def log_model(
    tracker_or_run_id: Tracker | str,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    builder: str = REFERENCE_BUILDER,
    input_example: pd.DataFrame | None = None,
    signature: Any = None,
    registered_name: str | None = None,
    *,
    name: str = "model",
    tracking_uri: str | None = None,
    pip_requirements: list[str] | None = None,
    alias: str | None = CHALLENGER,
) -> ModelInfo | None:
    """Log a torch model as a code-free, pickle-free pyfunc to a run; optionally register it.

    ``config`` is the resolved, JSON-serialisable config the builder needs (input specs
    included). Frozen pretrained encoders (the builder's ``frozen_references`` hook) are
    stored by reference, not copied. Without ``signature``/``input_example`` the builder's
    ``example_io`` hook supplies a synthetic example (no patient data) and the signature.
    With ``registered_name`` a new version is created and gets ``alias``. A degraded
    tracker (server unreachable) saves the model into its spool folder instead, warns and
    returns ``None``; ``replay_spool`` uploads it.
    """
    from mlflow import MlflowClient
    from mlflow.models import Model

    from registry.tracking import (
        Tracker,
        is_unavailable_error,
        resolve_tracking_uri,
        short_http_limits,
        using_tracking_uri,
    )

    tracker = tracker_or_run_id if isinstance(tracker_or_run_id, Tracker) else None
    if tracker is not None:
        tracker.flush()  # metrics logged so far belong to the run the model comes from
        run_id, uri = tracker.run_id, tracker.tracking_uri
    else:
        run_id, uri = str(tracker_or_run_id), resolve_tracking_uri(tracking_uri, Path.cwd())
    json.dumps(dict(config), default=str)  # fail early on a config that cannot be saved
    input_example, signature = _signature_and_example(builder, config, input_example, signature)

    with tempfile.TemporaryDirectory(prefix="clinfuse-model-") as tmp:
        folder = Path(tmp) / DATA_DIR
        files = save_model_files(folder, state_dict, config, builder)
        hashes = {HASH_TAGS[f.name]: sha256_file(f) for f in files.values()}
        hashes[FORMAT_TAG] = str(FORMAT_VERSION)
        kwargs: dict[str, Any] = {
            "artifact_path": None,  # deprecated but positional in Model.log; `name` replaces it
            "name": name,
            "flavor": _PyfuncNoValidation,
            "run_id": run_id,
            "loader_module": LOADER_MODULE,
            "data_path": str(folder),
            "pip_requirements": pip_requirements or default_pip_requirements(),
            "signature": signature,
            "input_example": input_example,
            # MLflow would load the model and predict the example right after logging it.
            "validate_serving_input": False,
        }
        if tracker is not None and tracker.degraded:
            return _spool_model(tracker, kwargs, name, hashes)
        limits = (
            short_http_limits(tracker.http_timeout_s, tracker.http_max_retries)
            if tracker is not None
            else contextlib.nullcontext()
        )
        try:
            # Model.log resolves the store from the global URI: point it at ours, for now.
            with limits, using_tracking_uri(uri):
                # Create the LoggedModel in the run's experiment ourselves: given only a
                # run_id, Model.log files it under the fluent default experiment ("0").
                client = MlflowClient(uri)
                exp_id = client.get_run(run_id).info.experiment_id
                logged = client.create_logged_model(
                    exp_id, name=name, source_run_id=run_id, tags=hashes
                )
                info = Model.log(model_id=logged.model_id, **kwargs)
        except Exception as exc:
            if tracker is None or not is_unavailable_error(exc):
                raise
            tracker._degrade(exc)
            return _spool_model(tracker, kwargs, name, hashes)
    if registered_name:
        version = register_model(info.model_uri, registered_name, alias=alias, tracking_uri=uri)
        info.registered_model_version = int(version)
    return info


def _spool_model(
    tracker: Tracker, kwargs: dict[str, Any], name: str, hashes: Mapping[str, str]
) -> None:
    """Save the pyfunc locally into the tracker's spool; ``replay_spool`` uploads it.

    The file hashes become run tags (spooled too), so a version registered from the
    replayed run can still be verified.
    """
    import mlflow.pyfunc

    dest = tracker._ensure_spool() / "models" / name
    drop = ("artifact_path", "name", "flavor", "run_id", "validate_serving_input")
    mlflow.pyfunc.save_model(path=str(dest), **{k: v for k, v in kwargs.items() if k not in drop})
    tracker.set_tags(dict(hashes))
    rel = dest.relative_to(tracker._ensure_spool())
    tracker._spool_event("artifacts", dir=str(rel), artifact_path=name)
    log.warning(
        "model %r saved to the spool (%s) because MLflow is unreachable; it is uploaded by "
        "replay_spool but must then be registered by hand (registry.model.register_model)",
        name,
        dest,
    )
    return None


# ---------------------------------------------------------------------- registry
def _client(tracking_uri: str | None) -> Any:
    from mlflow import MlflowClient

    from registry.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, Path.cwd())
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _logged_model_id(mv: Any) -> str | None:
    """The LoggedModel behind a version (MLflow 3.17 leaves ``model_id`` empty and puts it
    in ``source`` as ``models:/m-...``)."""
    if getattr(mv, "model_id", None):
        return str(mv.model_id)
    source = str(mv.source or "")
    if source.startswith("models:/m-") and "/" not in source.removeprefix("models:/"):
        return source.removeprefix("models:/")
    return None


def _recorded_hashes(client: Any, mv: Any) -> dict[str, str]:
    """The file hashes recorded in the tracking DB for a model version.

    In order: the version's own tags (set at registration), its LoggedModel's tags (set at
    logging), its run's tags (a spooled model). Empty when none has them.
    """
    sources = [lambda: mv.tags]
    model_id = _logged_model_id(mv)
    if model_id:
        sources.append(lambda: client.get_logged_model(model_id).tags)
    if mv.run_id:
        sources.append(lambda: client.get_run(mv.run_id).data.tags)
    for get in sources:
        tags = get() or {}
        found = {k: tags[k] for k in (WEIGHTS_TAG, CONFIG_TAG, FORMAT_TAG) if k in tags}
        if WEIGHTS_TAG in found and CONFIG_TAG in found:
            return found
    return {}


def register_model(
    model_uri: str, name: str, alias: str | None = CHALLENGER, tracking_uri: str | None = None
) -> str:
    """Create ``name`` if needed, add a version from ``model_uri``, set ``alias``; return it.

    The logged file hashes are copied onto the version as tags: ``load_predictor`` checks
    the files against them.
    """
    import mlflow

    from registry.tracking import resolve_tracking_uri, using_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, Path.cwd())
    client = _client(uri)
    with using_tracking_uri(uri):
        mv = mlflow.register_model(model_uri, name, await_registration_for=60)
    for key, value in _recorded_hashes(client, client.get_model_version(name, mv.version)).items():
        client.set_model_version_tag(name, mv.version, key, value)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def current_alias_version(name: str, alias: str, tracking_uri: str | None = None) -> str | None:
    """Version number holding ``alias`` on model ``name``, or None when unset."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def promote(
    model_name: str,
    version: str | int,
    alias: str = CHAMPION,
    tracking_uri: str | None = None,
) -> str | None:
    """Point ``alias`` at ``version``; return the version it pointed at before (or None).

    The replaced version is recorded as tag ``previous_champion`` on the new version and on
    the registered model, so a rollback is one ``promote(name, previous)`` away.
    """
    client = _client(tracking_uri)
    version = str(version)
    client.get_model_version(model_name, version)  # a clear MLflow error if it is missing
    previous = current_alias_version(model_name, alias, tracking_uri)
    client.set_registered_model_alias(model_name, alias, version)
    if previous is not None and previous != version:
        tag = PREVIOUS_CHAMPION_TAG if alias == CHAMPION else f"previous_{alias}"
        client.set_model_version_tag(model_name, version, tag, previous)
        client.set_registered_model_tag(model_name, tag, previous)
    return previous


def load_pyfunc(uri: str, tracking_uri: str | None = None) -> Any:
    """``mlflow.pyfunc.load_model`` against ``tracking_uri`` - for trusted registries only.

    MLflow follows the stored MLmodel, which whoever can write the artifact store can
    edit; clinfuse's own scoring uses ``load_predictor`` instead.
    """
    import mlflow.pyfunc

    from registry.tracking import resolve_tracking_uri, using_tracking_uri

    with using_tracking_uri(resolve_tracking_uri(tracking_uri, Path.cwd())):
        return mlflow.pyfunc.load_model(uri)


# ---------------------------------------------------------------------- verified loading
def resolve_model_version(model_uri: str, tracking_uri: str | None = None) -> tuple[Any, Any]:
    """``(client, ModelVersion)`` behind ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    from mlflow.exceptions import MlflowException

    if not isinstance(model_uri, str) or not model_uri.startswith("models:/"):
        raise ConfigError(f"model URI {model_uri!r} must look like models:/NAME@ALIAS")
    ref = model_uri.removeprefix("models:/")
    name, _, alias = ref.partition("@")
    client = _client(tracking_uri)
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = ref.partition("/")
            mv = client.get_model_version(name, version)
    except MlflowException:
        raise ConfigError(
            f"model {model_uri!r} is not in the registry at the tracking URI; train with "
            "--register and promote a champion (`clinfuse compare --promote NAME`) first"
        ) from None
    return client, mv


def _model_artifact_location(client: Any, mv: Any) -> str:
    """Artifact URI of the model folder of a version (LoggedModel, or run + path)."""
    model_id = _logged_model_id(mv)
    if model_id:
        return str(client.get_logged_model(model_id).artifact_location)
    source = str(mv.source)
    if source.startswith("runs:/"):
        run_id, _, path = source.removeprefix("runs:/").partition("/")
        return f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{path}"
    return source


def fetch_verified_files(
    model_uri: str, dest: Path, tracking_uri: str | None = None
) -> tuple[str, str]:
    """Download a version's ``config.json`` and ``weights.safetensors`` into ``dest`` and
    check both against the SHA-256 recorded in the tracking DB; return ``(name, version)``.

    Only these two files are fetched, by name: MLmodel and anything else stored with the
    model are never read. ``ModelIntegrityError`` names the version when a file differs,
    is missing, or no hash was recorded.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from registry.tracking import resolve_tracking_uri, using_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, Path.cwd())
    client, mv = resolve_model_version(model_uri, uri)
    what = f"model {mv.name} v{mv.version}"
    recorded = _recorded_hashes(client, mv)
    if not recorded:
        raise ModelIntegrityError(
            f"{what} has no recorded file hashes (tags {WEIGHTS_TAG}, {CONFIG_TAG}): it was "
            "not logged by this clinfuse version; re-log and register it, then promote it"
        )
    dest.mkdir(parents=True, exist_ok=True)
    # mlflow-artifacts:/ locations resolve the server from the global tracking URI.
    with using_tracking_uri(uri):
        repo = get_artifact_repository(_model_artifact_location(client, mv))
        for fname, tag in HASH_TAGS.items():
            try:
                local = Path(repo.download_artifacts(f"{MODEL_DATA_PATH}/{fname}", str(dest)))
            except (MlflowException, OSError) as exc:
                raise ModelIntegrityError(
                    f"{what}: {fname} cannot be fetched from the artifact store "
                    f"({type(exc).__name__}); check that the store is reachable and the file "
                    "exists (restore it from a backup, or re-register the model)"
                ) from None
            if sha256_file(local) != recorded[tag]:
                raise ModelIntegrityError(
                    f"{what}: {fname} in the artifact store does not match the SHA-256 "
                    f"recorded when it was logged (tag {tag}); the file was changed after "
                    "logging: do not use this version, re-register from a trusted run"
                )
            if local.parent != dest:
                local.replace(dest / fname)
    return str(mv.name), str(mv.version)


def load_predictor(model_uri: str, tracking_uri: str | None = None) -> tuple[Predictor, str, str]:
    """Rebuild the Predictor behind ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``).

    Returns ``(predictor, model_name, version)``. Downloads the two files, verifies them
    (``fetch_verified_files``), and builds the model from them: no stored code runs, no
    pickle is read. Batch scoring needs the model itself (to score prepared tensors), not
    only the DataFrame interface of the pyfunc.
    """
    with tempfile.TemporaryDirectory(prefix="clinfuse-load-") as tmp:
        name, version = fetch_verified_files(model_uri, Path(tmp), tracking_uri)
        return build_from_files(Path(tmp), f"model {name} v{version}"), name, version
