"""Modalities: one file per input type (load -> validate -> preprocess -> encode).

The package import is light; the registry (``modalities.base``) imports the modules that
register a modality on first lookup, and plugin modalities when their name is looked up.
"""
