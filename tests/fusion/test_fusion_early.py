"""Input-level early fusion: channel-stacked co-registered volumes with flagged absences."""

from __future__ import annotations

import pytest
import torch
from fusion_toys import IdTokens
from torch import nn

from fusion import FusionConfig, ModelConfig, build_model
from fusion.strategies.early import ChannelStackEncoder, stack_volume_inputs
from modalities.base import Tokens
from modalities.errors import ConfigError
from tests.model_recipes import load_recipe


class TinyConv3d(nn.Module):
    """Strided 3-D conv; every output voxel is a token."""

    def __init__(self, in_channels: int, out_dim: int = 8) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.conv = nn.Conv3d(in_channels, out_dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> Tokens:
        v = self.conv(x).flatten(2).transpose(1, 2)
        return Tokens(v, torch.ones(v.shape[:2], dtype=torch.bool))


def volumes(b: int = 4, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {m: {"x": torch.randn(b, 1, 8, 8, 8, generator=g)} for m in ("ct", "mri")}


def encoder() -> ChannelStackEncoder:
    torch.manual_seed(0)
    return ChannelStackEncoder(["mri", "ct"], TinyConv3d(4))


def test_stack_builds_one_modality_present_where_any_volume_is() -> None:
    present = {"ct": torch.tensor([1, 0, 1, 0]).bool(), "mri": torch.tensor([1, 1, 0, 0]).bool()}
    batch, pres = stack_volume_inputs(
        {**volumes(), "note": {"ids": torch.ones(4)}}, present, ["ct", "mri"]
    )
    assert sorted(batch) == ["note", "volumes"]
    assert pres["volumes"].tolist() == [True, True, True, False]
    assert sorted(batch["volumes"]) == ["ct", "ct_present", "mri", "mri_present"]


def test_absent_volume_values_do_not_matter_but_absence_is_flagged() -> None:
    enc = encoder().eval()
    present = {"ct": torch.ones(4, dtype=torch.bool), "mri": torch.tensor([1, 0, 1, 0]).bool()}
    batch, _ = stack_volume_inputs(volumes(seed=0), present, ["ct", "mri"])
    ref = enc(**batch["volumes"]).values
    other = volumes(seed=1)
    other["ct"] = volumes(seed=0)["ct"]
    other["mri"]["x"][present["mri"]] = volumes(seed=0)["mri"]["x"][present["mri"]]
    batch2, _ = stack_volume_inputs(other, present, ["ct", "mri"])
    assert torch.allclose(enc(**batch2["volumes"]).values, ref)
    # Same voxels as the learned constant, but flagged present: a different input.
    fill = {"ct": volumes()["ct"], "mri": {"x": torch.zeros(4, 1, 8, 8, 8)}}
    flagged, _ = stack_volume_inputs(
        fill, {"ct": present["ct"], "mri": torch.ones(4).bool()}, ["ct", "mri"]
    )
    unflagged, _ = stack_volume_inputs(
        fill, {"ct": present["ct"], "mri": torch.zeros(4).bool()}, ["ct", "mri"]
    )
    a, b = enc(**flagged["volumes"]).values, enc(**unflagged["volumes"]).values
    assert not torch.allclose(a, b)


def test_volume_missing_from_whole_batch() -> None:
    enc = encoder().eval()
    vols = volumes()
    present = {"ct": torch.ones(4, dtype=torch.bool), "mri": torch.zeros(4, dtype=torch.bool)}
    full, _ = stack_volume_inputs(vols, present, ["ct", "mri"])
    del vols["mri"]
    partial, _ = stack_volume_inputs(vols, {"ct": present["ct"]}, ["ct", "mri"])
    assert torch.allclose(enc(**partial["volumes"]).values, enc(**full["volumes"]).values)


def test_unequal_volume_sizes_are_config_error() -> None:
    vols = volumes()
    vols["mri"]["x"] = torch.randn(4, 1, 8, 8, 6)
    with pytest.raises(ConfigError, match="co-registered"):
        stack_volume_inputs(vols, {m: torch.ones(4).bool() for m in vols}, ["ct", "mri"])


def test_stacked_volumes_with_note_through_early_strategy_trains() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, fusion=FusionConfig(name="early", heads=2))
    model = build_model(cfg, {"volumes": encoder(), "note": IdTokens(20, 12)})
    present = {
        "ct": torch.tensor([1, 0, 1, 1]).bool(),
        "mri": torch.tensor([1, 1, 0, 0]).bool(),
        "note": torch.tensor([1, 1, 1, 0]).bool(),
    }
    raw = {
        **volumes(),
        "note": {
            "input_ids": torch.randint(0, 20, (4, 5)),
            "attention_mask": torch.ones(4, 5, dtype=torch.bool),
        },
    }
    batch, pres = stack_volume_inputs(raw, present, ["ct", "mri"])
    out = model(batch, pres, labels=torch.tensor([0.0, 1.0, 1.0, 0.0]))
    out["loss"].backward()
    assert model.encoders["volumes"].missing_value.grad is not None
    assert model.encoders["volumes"].encoder.conv.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- from a recipe
STACK = [
    "model.stack={modalities: [ct, mri], encoder: {name: tiny, width: 4}}",
    "cohort.modalities.mri.spec.size=[24,24,16]",  # co-registered: one grid for both
    "model.fusion.name=early",
]


def test_recipe_stack_builds_one_channel_stack_encoder_and_trains() -> None:
    """`model.stack` in a recipe: CT and MRI's real encoders are replaced by one shared tiny
    net over 4 channels; the batch keeps its per-modality inputs (what collate gives)."""
    recipe = load_recipe("tiny", STACK)
    mods = recipe.cohort.build()
    torch.manual_seed(0)
    encoders = {m: mods[m].encoder() for m in ("ct", "mri")} | {"note": IdTokens(20, 12)}
    model = build_model(recipe.model, encoders)
    assert model.modalities == ["note", "volumes"]
    stack = model.encoders["volumes"]
    assert isinstance(stack, ChannelStackEncoder) and stack.volumes == ["ct", "mri"]
    assert stack.encoder.backbone.net[0].in_channels == 4
    assert mods["ct"].spec.size == mods["mri"].spec.size  # preprocess gives (1, 24, 24, 16)
    g = torch.Generator().manual_seed(1)
    raw = {m: {"x": torch.randn(4, 1, 24, 24, 16, generator=g)} for m in ("ct", "mri")}
    raw["note"] = {"input_ids": torch.randint(0, 20, (4, 5), generator=g),
                   "attention_mask": torch.ones(4, 5, dtype=torch.bool)}  # fmt: skip
    present = {"ct": torch.tensor([1, 0, 1, 1]).bool(), "mri": torch.tensor([1, 1, 0, 0]).bool(),
               "note": torch.tensor([1, 1, 1, 0]).bool()}  # fmt: skip
    out = model.train()(raw, present, labels=torch.tensor([0.0, 1.0, 1.0, 0.0]))
    out["loss"].backward()
    assert stack.missing_value.grad is not None and set(out["contributions"]) == {
        "note", "volumes"
    }
    # No volume in the whole batch: the stack is absent, nothing else changes.
    only_note = {"note": raw["note"]}
    out = model.eval()(only_note, {"note": torch.ones(4, dtype=torch.bool)})
    assert out["logits"].shape[0] == 4


def test_recipe_stack_keeps_unimodal_baselines_and_rejects_bad_encoders() -> None:
    recipe = load_recipe("tiny", STACK)
    model = build_model(recipe.model, {"ct": IdTokens(20, 12)})  # a CT-only baseline
    assert model.modalities == ["ct"] and model.stack is None
    bad = recipe.model.model_copy(
        update={"stack": recipe.model.stack.model_copy(update={"encoder": {"name": "alexnet"}})}
    )
    with pytest.raises(ConfigError, match="alexnet"):
        build_model(bad, {"ct": IdTokens(20, 12), "mri": IdTokens(20, 12)})
