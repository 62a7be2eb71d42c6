"""The MLflow layer: the only package that imports mlflow (always lazily).

* ``registry.tracking`` - ``Tracker`` (one run, batched metrics, spool on outage);
* ``registry.connection`` - ``resolve_tracking_uri``, short HTTP limits, experiments;
* ``registry.spool`` - the offline spool a degraded run writes, and ``replay_spool``;
* ``registry.model`` - code-free, pickle-free pyfunc models (safetensors + config.json),
  registration with file hashes, aliases (``challenger``/``champion``), ``promote``,
  ``load_predictor`` (verified, runs no stored code) and ``load_pyfunc`` (trusted
  registries only);
* ``registry.model_format`` - the files of a model and how a Predictor is rebuilt from them;
* ``registry.compare`` - side-by-side run tables, comparison artifacts, ``promote_best``;
* ``registry.plots`` - matplotlib figures (no mlflow).

Importing this package imports nothing heavy: ``clinfuse --help`` must stay quick.

Every mlflow import in clinfuse goes through this package, so it is where MLflow's pickle
loader is switched off (``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``, which MLflow 3.17 defaults
to true) before mlflow can be imported. A user who sets the variable keeps their value.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")

# Public name -> submodule; resolved on first access so `import registry` stays cheap.
_EXPORTS = {
    "Tracker": "tracking",
    "resolve_tracking_uri": "connection",
    "replay_spool": "spool",
    "log_model": "model",
    "register_model": "model",
    "promote": "model",
    "load_pyfunc": "model",
    "load_predictor": "model",
    "compare_runs": "compare",
    "render_table": "compare",
    "log_comparison": "compare",
    "promote_best": "compare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    return getattr(importlib.import_module(f"registry.{module}"), name)
