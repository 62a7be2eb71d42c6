"""Test-data generators (``clinfuse synth``): outside the runtime packages, imported lazily."""
