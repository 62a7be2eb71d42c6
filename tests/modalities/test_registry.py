"""Every expected modality is registered; unknown names list the valid ones; plugins
(entry points) are listed without import, loaded on lookup, and fail naming themselves."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from modalities.base import builtin_modality_names, create_modality, modality_names
from modalities.errors import PluginError, UnknownNameError
from modalities.registry import Registry, _entry_points, builtin_modules

# The one hard-coded list: a modality whose module fails to register must fail this test.
EXPECTED_MODALITIES = ["audio", "ct", "image", "mri", "note", "tabular"]


def test_expected_modalities_registered() -> None:
    assert builtin_modality_names() == EXPECTED_MODALITIES
    assert set(EXPECTED_MODALITIES) <= set(modality_names())  # plus any installed plugin


@pytest.mark.parametrize("name", builtin_modality_names())
def test_each_builds_with_defaults(name: str) -> None:
    mod = create_modality(name)
    assert mod.name == name and mod.kind
    assert len(mod.spec_hash()) == 32
    assert mod.cache_key("abc") != mod.cache_key("abd")


def test_unknown_name_lists_valid() -> None:
    with pytest.raises(UnknownNameError) as err:
        create_modality("pet")
    assert err.value.valid == modality_names()
    assert str(err.value).endswith("valid names: " + ", ".join(modality_names()))


# --------------------------------------------------------------------------- plugins
GROUP = "clinfuse.test_things"


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A site folder on sys.path holding a dist-info with entry points in ``GROUP``:
    ``good`` (a module that registers), ``klass`` (a class), ``broken`` (import fails),
    ``empty`` (imports, registers nothing)."""
    pkg = tmp_path / "thingplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "things.py").write_text(  # the registry under test (fresh in every test)
        f"from modalities.registry import Registry\nTHINGS = Registry('thing', group={GROUP!r})\n"
    )
    (pkg / "good.py").write_text(
        "from thingplug.things import THINGS\n@THINGS.register('good')\nclass Good:\n    pass\n"
    )
    (pkg / "klass.py").write_text("class Klass:\n    pass\n")
    (pkg / "broken.py").write_text("import no_such_dependency_xyz\n")
    (pkg / "empty.py").write_text("")
    info = tmp_path / "thingplug-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thingplug\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(
        f"[{GROUP}]\ngood = thingplug.good\nklass = thingplug.klass:Klass\n"
        "broken = thingplug.broken\nempty = thingplug.empty\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _entry_points.cache_clear()
    yield tmp_path
    _entry_points.cache_clear()
    for mod in [m for m in sys.modules if m.startswith("thingplug")]:
        del sys.modules[mod]


def things() -> Registry:
    from thingplug.things import THINGS

    return THINGS


def test_plugins_are_listed_without_import_and_loaded_on_lookup(plugins: Path) -> None:
    reg = things()
    assert reg.names() == ["broken", "empty", "good", "klass"]
    assert "thingplug.good" not in sys.modules  # listing imports nothing
    assert reg.get("good").__name__ == "Good"
    klass = reg.get("klass")  # an entry point naming a class registers it
    assert klass.__name__ == "Klass" and klass.name == "klass"
    assert reg.builtin_names() == ["good", "klass"]  # loaded ones only
    with pytest.raises(UnknownNameError) as err:
        reg.get("nope")
    assert err.value.valid == ["broken", "empty", "good", "klass"]


def test_broken_plugins_are_typed_errors_naming_them(plugins: Path) -> None:
    reg = things()
    with pytest.raises(PluginError) as err:
        reg.get("broken")
    msg = str(err.value)
    assert "plugin 'broken' (thingplug 0.3" in msg and "ModuleNotFoundError" in msg
    assert "\n" not in msg
    with pytest.raises(PluginError, match="registered no thing named 'empty'"):
        reg.get("empty")
    assert reg.get("good").__name__ == "Good"  # other plugins are unaffected


def test_builtins_are_found_without_a_list() -> None:
    """Built-in discovery: modules of the package with the decorator, nothing else."""
    mods = builtin_modules("modalities", marker="@register_modality(")
    assert mods == [f"modalities.{m}" for m in EXPECTED_MODALITIES]
    assert "modalities.dicom" not in builtin_modules("modalities", marker="@register_modality(")
