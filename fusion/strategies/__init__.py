"""Fusion strategies, one per file: the registry (``fusion.base``) imports every module of
this package on first lookup, so adding a strategy is one new file. Plugins add strategies
through the ``clinfuse.fusion`` entry-point group. A test lists the expected built-in names,
so an import that silently fails to register one is caught."""
