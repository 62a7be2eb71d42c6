"""Models in MLflow: safetensors weights + config.json + a pyfunc that rebuilds the model.

Nothing is pickled. The model is logged as an MLflow "model from code": the pyfunc's code
is a three-line file (``MODEL_CODE``) that instantiates ``ClinfusePyfunc``; the weights go in
``weights.safetensors`` and the resolved config in ``config.json``. On load,
``ClinfusePyfunc.load_context`` reads the config, imports the **builder** it names (only
from the clinfuse packages), calls ``builder(config) -> Predictor`` and loads the weights
into ``predictor.model``. ``predict`` hands the DataFrame to
``predictor.predict_dataframe``. So ``mlflow.pyfunc.load_model("models:/NAME@champion")``
works in any process where clinfuse is installed, and MLflow's pickle loader (disabled by
default in MLflow 3) is never involved.

The Predictor protocol (what a builder returns):

* ``model: torch.nn.Module`` - the weights in ``weights.safetensors`` are loaded into it
  with ``load_state_dict(strict=True)``;
* ``predict_dataframe(df: pandas.DataFrame) -> pandas.DataFrame`` - raw inputs in (paths,
  note text, numbers), one output row per input row.

``_linear_reference_builder`` is the smallest Predictor (one ``nn.Linear`` over numeric
columns): an example, and what the tests log.

Aliases, not stages: a new version gets ``challenger``; ``promote`` moves ``champion`` and
records the version it replaced as tag ``previous_champion``.

mlflow is imported lazily; ``ClinfusePyfunc`` is created on first attribute access.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from modalities.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from mlflow.models.model import ModelInfo
    from torch import nn

    from registry.tracking import Tracker

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
ALLOWED_BUILDER_PACKAGES = ("fusion", "registry", "modalities", "workflows")
CHALLENGER, CHAMPION = "challenger", "champion"
PREVIOUS_CHAMPION_TAG = "previous_champion"
REFERENCE_BUILDER = "registry.model:_linear_reference_builder"

# The "model from code" file MLflow stores and executes at load time. It only imports.
MODEL_CODE = '''"""clinfuse pyfunc entry point (MLflow model from code): nothing here is pickled."""
import mlflow

from registry.model import ClinfusePyfunc

mlflow.models.set_model(ClinfusePyfunc())
'''

_BUILDER_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


@runtime_checkable
class Predictor(Protocol):
    """What a builder returns: a module holding the weights and a DataFrame predictor."""

    model: nn.Module

    def predict_dataframe(self, df: pd.DataFrame) -> pd.DataFrame: ...


def resolve_builder(spec: str) -> Callable[[dict[str, Any]], Predictor]:
    """Import ``"package.module:function"``; only clinfuse packages are allowed.

    The restriction matters because the name comes from a config file inside a model
    artifact: loading a model must not import arbitrary code named by that file.
    """
    if not isinstance(spec, str) or not _BUILDER_RE.match(spec):
        raise ConfigError(
            f"builder {spec!r} is not of the form 'package.module:function'; "
            f"use e.g. {REFERENCE_BUILDER!r}"
        )
    module_name, func_name = spec.split(":")
    if module_name.split(".")[0] not in ALLOWED_BUILDER_PACKAGES:
        raise ConfigError(
            f"builder {spec!r} is outside the clinfuse packages; it must live in one of "
            f"{', '.join(p + '.' for p in ALLOWED_BUILDER_PACKAGES)}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"builder module {module_name!r} cannot be imported ({exc}); "
            "is this clinfuse version the one the model was logged with?"
        ) from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"builder {spec!r}: {module_name} has no function {func_name!r}")
    return func


def build_predictor(
    model_config: Mapping[str, Any], weights: Mapping[str, torch.Tensor] | None
) -> Predictor:
    """Build the Predictor described by a config.json payload and load ``weights`` into it."""
    predictor = resolve_builder(model_config["builder"])(dict(model_config["config"]))
    if not isinstance(predictor, Predictor):
        raise ConfigError(
            f"builder {model_config['builder']!r} returned {type(predictor).__name__}, which "
            "lacks `model` (nn.Module) or `predict_dataframe(df)`"
        )
    if weights is not None:
        predictor.model.load_state_dict(dict(weights), strict=True)
    predictor.model.eval()
    return predictor


# ---------------------------------------------------------------------- pyfunc class
_PYFUNC_CLASS: type | None = None


def _make_pyfunc_class() -> type:
    import mlflow.pyfunc
    import pandas as pd

    def _predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Run the rebuilt Predictor on a DataFrame of raw inputs."""
        import torch

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        with torch.inference_mode():
            return self.predictor.predict_dataframe(df)

    # Real objects, not the strings `from __future__ import annotations` would leave: MLflow
    # reads these hints when the class is created, and DataFrame means "validate by example".
    _predict.__annotations__ = {"model_input": pd.DataFrame, "return": pd.DataFrame}

    class ClinfusePyfunc(mlflow.pyfunc.PythonModel):
        """Rebuilds the model from ``config.json`` + ``weights.safetensors``; no pickle."""

        def load_context(self, context: Any) -> None:
            from safetensors.torch import load_file

            cfg = json.loads(Path(context.artifacts["config"]).read_text(encoding="utf-8"))
            weights = load_file(context.artifacts["weights"])
            self.predictor = build_predictor(cfg, weights)

        predict = _predict

    ClinfusePyfunc.__module__ = __name__
    return ClinfusePyfunc


def __getattr__(name: str) -> Any:
    # ClinfusePyfunc subclasses mlflow's PythonModel; build it on first use so that importing
    # this module (e.g. from the CLI) does not import mlflow.
    global _PYFUNC_CLASS
    if name == "ClinfusePyfunc":
        if _PYFUNC_CLASS is None:
            _PYFUNC_CLASS = _make_pyfunc_class()
        return _PYFUNC_CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------- saving
def save_weights(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write a state dict as safetensors; tensors sharing memory (tied weights) are cloned.

    safetensors refuses shared storage; a clone per alias keeps ``load_state_dict`` exact
    (both names get the same values) at the cost of a duplicate on disk.
    """
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        t = tensor.detach().cpu()
        ident = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if ident in seen or not t.is_contiguous():
            t = t.clone().contiguous()
        else:
            seen.add(ident)
        out[key] = t
    save_file(out, str(path), metadata={"format": "clinfuse", "version": str(FORMAT_VERSION)})


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


def _clinfuse_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clinfuse")
    except PackageNotFoundError:
        return "unknown"


def save_model_files(
    folder: Path, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], builder: str
) -> dict[str, str]:
    """Write weights, config and the model-code file into ``folder``; return artifact paths."""
    resolve_builder(builder)  # fail before writing anything if the builder is wrong
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    save_weights(state_dict, weights)
    payload = {
        "format_version": FORMAT_VERSION,
        "builder": builder,
        "clinfuse_version": _clinfuse_version(),
        "config": config,
    }
    cfg = folder / CONFIG_FILE
    cfg.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str), encoding="utf-8")
    code = folder / "clinfuse_pyfunc.py"
    code.write_text(MODEL_CODE, encoding="utf-8")
    return {"weights": str(weights), "config": str(cfg), "code": str(code)}


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
    """Log a torch model as a pickle-free pyfunc to a run; optionally register it.

    ``config`` is the resolved, JSON-serialisable config the builder needs (input specs
    included). With ``registered_name`` a new version is created and gets ``alias``
    (``challenger`` by default). A degraded tracker (server unreachable) saves the model
    into its spool folder instead, warns and returns ``None``; ``replay_spool`` uploads it.
    """
    import mlflow
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

    with tempfile.TemporaryDirectory(prefix="clinfuse-model-") as tmp:
        files = save_model_files(Path(tmp), state_dict, config, builder)
        kwargs: dict[str, Any] = {
            "artifact_path": None,  # deprecated but positional in Model.log; `name` replaces it
            "name": name,
            "flavor": mlflow.pyfunc,
            "run_id": run_id,
            "python_model": files["code"],
            "artifacts": {"weights": files["weights"], "config": files["config"]},
            "pip_requirements": pip_requirements or default_pip_requirements(),
            "signature": signature,
            "input_example": input_example,
        }
        if tracker is not None and tracker.degraded:
            return _spool_model(tracker, kwargs, name)
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
                logged = client.create_logged_model(exp_id, name=name, source_run_id=run_id)
                info = Model.log(model_id=logged.model_id, **kwargs)
        except Exception as exc:
            if tracker is None or not is_unavailable_error(exc):
                raise
            tracker._degrade(exc)
            return _spool_model(tracker, kwargs, name)
    if registered_name:
        version = register_model(info.model_uri, registered_name, alias=alias, tracking_uri=uri)
        info.registered_model_version = int(version)
    return info


def _spool_model(tracker: Tracker, kwargs: dict[str, Any], name: str) -> None:
    """Save the pyfunc locally into the tracker's spool; ``replay_spool`` uploads it."""
    import mlflow.pyfunc

    dest = tracker._ensure_spool() / "models" / name
    save_kwargs = {
        k: v for k, v in kwargs.items() if k not in ("artifact_path", "name", "flavor", "run_id")
    }
    mlflow.pyfunc.save_model(path=str(dest), **save_kwargs)
    rel = dest.relative_to(tracker._ensure_spool())
    tracker._spool_event("artifacts", dir=str(rel), artifact_path=name)
    log.warning(
        "model %r saved to the spool (%s) because MLflow is unreachable; it is uploaded by "
        "replay_spool but must then be registered by hand",
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


def register_model(
    model_uri: str, name: str, alias: str | None = CHALLENGER, tracking_uri: str | None = None
) -> str:
    """Create ``name`` if needed, add a version from ``model_uri``, set ``alias``; return it."""
    import mlflow

    from registry.tracking import resolve_tracking_uri, using_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, Path.cwd())
    client = _client(uri)
    with using_tracking_uri(uri):
        mv = mlflow.register_model(model_uri, name, await_registration_for=60)
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
    """``mlflow.pyfunc.load_model`` against ``tracking_uri`` (e.g. ``models:/NAME@champion``)."""
    import mlflow.pyfunc

    from registry.tracking import resolve_tracking_uri, using_tracking_uri

    with using_tracking_uri(resolve_tracking_uri(tracking_uri, Path.cwd())):
        return mlflow.pyfunc.load_model(uri)


# ---------------------------------------------------------------------- reference builder
class _LinearPredictor:
    """Reference Predictor: ``nn.Linear`` over the numeric columns named in the config."""

    def __init__(self, features: list[str], n_outputs: int) -> None:
        from torch import nn

        self.features = list(features)
        self.model = nn.Linear(len(self.features), n_outputs)

    def predict_dataframe(self, df: pd.DataFrame) -> pd.DataFrame:
        import numpy as np
        import pandas as pd
        import torch

        missing = [c for c in self.features if c not in df.columns]
        if missing:
            raise ConfigError(
                f"input is missing columns {missing}; the model needs {self.features}"
            )
        x = torch.tensor(df[self.features].to_numpy(dtype=np.float32))
        logits = self.model(x)
        if logits.shape[1] == 1:
            out = {"logit": logits[:, 0], "probability": torch.sigmoid(logits[:, 0])}
        else:
            out = {f"logit_{i}": logits[:, i] for i in range(logits.shape[1])}
        return pd.DataFrame({k: v.detach().numpy() for k, v in out.items()}, index=df.index)


def _linear_reference_builder(config: dict[str, Any]) -> _LinearPredictor:
    """Build the reference Predictor from ``{"features": [...], "n_outputs": 1}``."""
    features = config.get("features")
    if not features or not isinstance(features, list):
        raise ConfigError("reference model config needs 'features': a list of column names")
    return _LinearPredictor(features, int(config.get("n_outputs", 1)))


def load_predictor(model_uri: str, tracking_uri: str | None = None) -> tuple[Predictor, str, str]:
    """Rebuild the Predictor behind ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``).

    Returns ``(predictor, model_name, version)``: batch scoring needs the model itself (to
    score prepared tensors), not only the DataFrame interface of the pyfunc.
    """
    from mlflow.exceptions import MlflowException

    if not model_uri.startswith("models:/"):
        raise ConfigError(f"model URI {model_uri!r} must look like models:/NAME@ALIAS")
    ref = model_uri.removeprefix("models:/")
    name, _, alias = ref.partition("@")
    client = _client(tracking_uri)
    try:
        if alias:
            version = str(client.get_model_version_by_alias(name, alias).version)
        else:
            name, _, version = ref.partition("/")
            client.get_model_version(name, version)
    except MlflowException:
        raise ConfigError(
            f"model {model_uri!r} is not in the registry at the tracking URI; train with "
            "--register and promote a champion (`clinfuse compare --promote NAME`) first"
        ) from None
    model = load_pyfunc(f"models:/{name}/{version}", client.tracking_uri)
    return model.unwrap_python_model().predictor, name, version
