"""The MLflow layer: the only package that imports mlflow (always lazily).

* ``registry.tracking`` - ``Tracker`` (one run, batched metrics, spool on outage),
  ``resolve_tracking_uri``, ``replay_spool``;
* ``registry.model`` - pickle-free pyfunc models (safetensors + config.json), registration,
  aliases (``challenger``/``champion``), ``promote``, ``load_pyfunc``;
* ``registry.compare`` - side-by-side run tables, comparison artifacts, ``promote_best``;
* ``registry.plots`` - matplotlib figures (no mlflow).

Importing this package imports nothing heavy: ``clinfuse --help`` must stay quick.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> submodule; resolved on first access so `import registry` stays cheap.
_EXPORTS = {
    "Tracker": "tracking",
    "resolve_tracking_uri": "tracking",
    "replay_spool": "tracking",
    "log_model": "model",
    "register_model": "model",
    "promote": "model",
    "load_pyfunc": "model",
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
