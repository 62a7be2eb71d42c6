"""Modalities: one file per input type (load -> validate -> preprocess -> encode).

The package import is light; the registry (``modalities.base``) imports the modality
modules listed in ``MODALITY_MODULES`` on first lookup.
"""
