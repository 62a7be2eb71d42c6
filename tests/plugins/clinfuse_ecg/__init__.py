"""A toy plugin for clinfuse: an ``ecg`` modality (1-D signals from CSV or NPY files).

It lives outside clinfuse and is found through the ``clinfuse.modalities`` entry point in
``clinfuse_ecg-0.1.dist-info/entry_points.txt``; the plugin tests put this folder on
``PYTHONPATH`` and check that ingest and train use it without any clinfuse file naming it.
"""
