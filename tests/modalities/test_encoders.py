"""Volume encoders (MONAI nets by name) and the chunked HF text encoder."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch

from modalities.base import Tokens
from modalities.errors import ConfigError, UnknownNameError
from modalities.text_encoder import (
    NoteTruncatedWarning,
    TextEncoder,
    TextEncoderConfig,
    load_tokenizer,
    packaged_model_dir,
    tokenize_notes,
)
from modalities.volume_encoders import (
    VolumeEncoderConfig,
    build_volume_encoder,
    volume_net_names,
)

# The one hard-coded list; the other tests parametrize over the registry.
EXPECTED_NETS = ["densenet121", "resnet10", "resnet18", "swin", "tiny", "vit"]
needs_einops = pytest.mark.skipif(
    importlib.util.find_spec("einops") is None, reason="MONAI transformers need einops"
)

# Small variants of every net: (config, input shape, expected tokens)
SMALL = {
    "tiny": ({}, (2, 1, 32, 32, 32), 64),
    "densenet121": ({"width": 16}, (2, 1, 32, 32, 32), 1),
    "resnet10": ({}, (2, 1, 64, 64, 64), 8),
    "resnet18": ({}, (1, 1, 64, 64, 64), 8),
    "vit": (
        {"img_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
        (2, 1, 32, 32, 32),
        64,
    ),
    "swin": ({"width": 12, "layers": 1, "heads": 1}, (1, 1, 32, 32, 32), 1),
}


def _check_tokens(tok: Tokens, batch: int, n: int, dim: int) -> None:
    assert isinstance(tok, Tokens)
    assert tok.values.shape == (batch, n, dim)
    assert tok.mask.shape == (batch, n) and tok.mask.dtype == torch.bool and tok.mask.all()
    assert torch.isfinite(tok.values).all()
    assert tok.pooled().shape == (batch, dim)


def test_registry_lists_expected_names() -> None:
    assert volume_net_names() == EXPECTED_NETS


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as err:
        build_volume_encoder(VolumeEncoderConfig(name="alexnet"))
    assert err.value.valid == volume_net_names()


@pytest.mark.parametrize("name", volume_net_names())
def test_every_net_gives_tokens(name: str) -> None:
    if name in ("vit", "swin") and importlib.util.find_spec("einops") is None:
        pytest.skip("MONAI transformers need einops")
    kw, shape, n = SMALL[name]
    enc = build_volume_encoder(VolumeEncoderConfig(name=name, **kw)).eval()
    with torch.no_grad():
        tok = enc(x=torch.randn(*shape))
    _check_tokens(tok, shape[0], n, enc.out_dim)


def test_tiny_is_small_and_trains() -> None:
    enc = build_volume_encoder(VolumeEncoderConfig())
    assert 30_000 < sum(p.numel() for p in enc.parameters()) < 80_000
    tok = enc(x=torch.randn(2, 1, 32, 32, 32))
    tok.pooled().sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_tiny_token_order_is_spatial() -> None:
    # A bright blob in one octant must light up tokens of that octant (flatten keeps order).
    torch.manual_seed(0)
    enc = build_volume_encoder(VolumeEncoderConfig(out_dim=None)).eval()
    x = torch.zeros(1, 1, 32, 32, 32)
    x[..., 24:, 24:, 24:] = 5.0
    with torch.no_grad():
        base = enc(x=torch.zeros_like(x)).values
        diff = (enc(x=x).values - base).abs().sum(-1).view(4, 4, 4)
    assert diff[3, 3, 3] > 10 * diff[0, 0, 0]


def test_out_dim_projection_and_2d() -> None:
    enc = build_volume_encoder(VolumeEncoderConfig(spatial_dims=2, out_dim=24), in_channels=3)
    assert enc.out_dim == 24
    _check_tokens(enc.eval()(x=torch.randn(2, 3, 64, 64)), 2, 64, 24)


@pytest.mark.parametrize("name", ["tiny", "resnet10"])
def test_multichannel_input(name: str) -> None:
    enc = build_volume_encoder(VolumeEncoderConfig(name=name), in_channels=2).eval()
    with torch.no_grad():
        tok = enc(x=torch.randn(2, 2, 32, 32, 32))
    assert tok.values.shape[0] == 2 and tok.values.shape[2] == enc.out_dim
    # Both channels feed the network: changing only the second one changes the tokens.
    x = torch.randn(1, 2, 32, 32, 32)
    y = x.clone()
    y[:, 1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(enc(x=x).values, enc(x=y).values)


def test_freeze_keeps_backbone_fixed_projection_trainable() -> None:
    enc = build_volume_encoder(VolumeEncoderConfig(freeze=True, out_dim=16)).train()
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    assert all(p.requires_grad for p in enc.proj.parameters())
    assert not enc.backbone.training  # BatchNorm statistics are not updated
    stats = enc.backbone.net[1].running_mean.clone()
    enc(x=torch.randn(2, 1, 32, 32, 32))
    assert torch.equal(stats, enc.backbone.net[1].running_mean)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pretrained_round_trip(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    src = build_volume_encoder(VolumeEncoderConfig(out_dim=8)).eval()
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(src.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    torch.manual_seed(2)
    dst = build_volume_encoder(VolumeEncoderConfig(out_dim=8, pretrained=str(path))).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(src(x=x).values, dst(x=x).values)


def test_pretrained_backbone_only_with_ddp_prefix(tmp_path: Path) -> None:
    src = build_volume_encoder(VolumeEncoderConfig())
    sd = {f"module.{k}": v for k, v in src.backbone.state_dict().items()}
    sd["module.fc.weight"] = torch.zeros(2, 2)  # a classifier the encoder does not have
    torch.save({"state_dict": sd}, tmp_path / "ckpt.pth")
    dst = build_volume_encoder(VolumeEncoderConfig(pretrained=str(tmp_path / "ckpt.pth")))
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(v, dst.backbone.state_dict()[k])


def test_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build_volume_encoder(VolumeEncoderConfig(pretrained=str(tmp_path / "nope.pt")))
    torch.save(build_volume_encoder(VolumeEncoderConfig(width=8)).state_dict(), tmp_path / "a.pt")
    with pytest.raises(ConfigError, match="does not fit"):
        build_volume_encoder(VolumeEncoderConfig(pretrained=str(tmp_path / "a.pt")))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable weights file"):
        build_volume_encoder(VolumeEncoderConfig(pretrained=str(tmp_path / "junk.pt")))


@needs_einops
def test_vit_rejects_wrong_input_size() -> None:
    kw = SMALL["vit"][0]
    enc = build_volume_encoder(VolumeEncoderConfig(name="vit", **kw))
    with pytest.raises(ConfigError, match="img_size"):
        enc(x=torch.randn(1, 1, 16, 16, 16))


@needs_einops
def test_vit_img_size_from_input_size() -> None:
    kw = {k: v for k, v in SMALL["vit"][0].items() if k != "img_size"}
    enc = build_volume_encoder(VolumeEncoderConfig(name="vit", **kw), input_size=(16, 32, 32))
    assert enc(x=torch.randn(1, 1, 16, 32, 32)).values.shape == (1, 32, 32)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet121", "resnet10", "resnet18", "swin"])
def test_realistic_size(name: str) -> None:
    if name == "swin" and importlib.util.find_spec("einops") is None:
        pytest.skip("MONAI transformers need einops")
    enc = build_volume_encoder(VolumeEncoderConfig(name=name)).eval()
    with torch.no_grad():
        tok = enc(x=torch.randn(1, 1, 96, 96, 96))
    n = {"densenet121": 27, "resnet10": 27, "resnet18": 27, "swin": 27}[name]
    _check_tokens(tok, 1, n, enc.out_dim)


# ---------------------------------------------------------------------------- text

TINY = TextEncoderConfig(model="tiny-random", max_length=32, stride=8, max_chunks=4)
LONG_NOTE = " ".join(f"finding{i % 17} noted" for i in range(120))


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return load_tokenizer(TINY)


def test_long_note_is_chunked_with_overlap(tiny_tokenizer) -> None:
    cfg = TINY.model_copy(update={"max_chunks": 50})
    batch = tokenize_notes([LONG_NOTE, "short note"], tiny_tokenizer, cfg)
    ids, att, cm = batch["input_ids"], batch["attention_mask"], batch["chunk_mask"]
    assert ids.shape[:2] == cm.shape and ids.shape == att.shape and ids.shape[2] <= 32
    n_long = int(cm[0].sum())
    assert n_long > 4 and cm[1].tolist() == [True] + [False] * (cm.shape[1] - 1)
    # Consecutive windows overlap by `stride` tokens (between [CLS] and [SEP]).
    first, second = ids[0, 0][1:-1], ids[0, 1][1 : 1 + cfg.stride]
    assert first[-cfg.stride :].tolist() == second.tolist()
    # The short note is padded: pad ids and zero attention after its tokens.
    assert att[1, 0].sum() == 4 and (ids[1, 0, 4:] == tiny_tokenizer.pad_token_id).all()
    assert att[1, 1:].sum() == 0


def test_too_many_chunks_keeps_first_and_warns_once(tiny_tokenizer) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = tokenize_notes([LONG_NOTE, LONG_NOTE, "x"], tiny_tokenizer, TINY)
    msgs = [str(w.message) for w in caught if issubclass(w.category, NoteTruncatedWarning)]
    assert len(msgs) == 1 and "2 of 3 notes" in msgs[0]
    assert "finding" not in msgs[0]  # no note text in the warning
    assert batch["chunk_mask"].shape == (3, 4)
    full = tokenize_notes([LONG_NOTE], tiny_tokenizer, TINY.model_copy(update={"max_chunks": 99}))
    assert torch.equal(batch["input_ids"][0], full["input_ids"][0, :4])


@pytest.mark.filterwarnings("ignore::modalities.text_encoder.NoteTruncatedWarning")
def test_text_encoder_one_token_per_chunk(tiny_tokenizer) -> None:
    enc = TextEncoder(TINY.model_copy(update={"out_dim": 16}))
    batch = tokenize_notes([LONG_NOTE, "short note"], tiny_tokenizer, TINY)
    tok = enc(**batch)
    assert tok.values.shape == (2, 4, 16) and enc.out_dim == 16
    assert tok.mask.tolist() == [[True] * 4, [True, False, False, False]]
    # Padding chunks carry no content and padding does not change a note's embedding.
    alone = enc(**tokenize_notes(["short note"], tiny_tokenizer, TINY))
    assert torch.allclose(alone.values[0, 0], tok.values[1, 0], atol=1e-5)


def test_frozen_vs_trainable_layers() -> None:
    frozen = TextEncoder(TINY)
    assert not any(p.requires_grad for p in frozen.model.parameters())
    frozen.train()
    assert not frozen.model.training
    last = TextEncoder(TINY.model_copy(update={"trainable_layers": 1}))
    layers = last.model.encoder.layer
    assert all(p.requires_grad for p in layers[-1].parameters())
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert not any(p.requires_grad for p in last.model.embeddings.parameters())
    full = TextEncoder(TINY.model_copy(update={"trainable_layers": -1}))
    assert all(p.requires_grad for p in full.model.parameters())
    with pytest.raises(ConfigError, match="layers"):
        TextEncoder(TINY.model_copy(update={"trainable_layers": 5}))


def test_trainable_layers_get_gradients(tiny_tokenizer) -> None:
    enc = TextEncoder(TINY.model_copy(update={"trainable_layers": 1, "pooling": "cls"}))
    enc(**tokenize_notes(["chest pain", "fever"], tiny_tokenizer, TINY)).pooled().sum().backward()
    assert enc.model.encoder.layer[-1].attention.self.query.weight.grad is not None
    assert enc.model.encoder.layer[0].attention.self.query.weight.grad is None


@pytest.mark.filterwarnings("ignore::modalities.text_encoder.NoteTruncatedWarning")
def test_embedding_cache_reuses_chunks(tiny_tokenizer) -> None:
    enc = TextEncoder(TINY.model_copy(update={"embedding_cache": True}))
    enc._cache.clear()  # shared by every encoder of this model in the process
    batch = tokenize_notes([LONG_NOTE, "short note"], tiny_tokenizer, TINY)
    first = enc(**batch)
    n = len(enc._cache)
    assert n == int(batch["chunk_mask"].sum())
    again = enc(**tokenize_notes(["short note"], tiny_tokenizer, TINY))
    assert len(enc._cache) == n
    assert torch.allclose(again.values[0, 0], first.values[1, 0])
    other = TextEncoder(TINY.model_copy(update={"embedding_cache": True}))
    assert other._cache is enc._cache  # a second encoder of the same model reuses the work
    with pytest.raises(ValueError, match="frozen"):
        TextEncoderConfig(embedding_cache=True, trainable_layers=1)


def test_all_padding_batch(tiny_tokenizer) -> None:
    enc = TextEncoder(TINY)
    batch = tokenize_notes(["a"], tiny_tokenizer, TINY)
    batch["chunk_mask"][:] = False
    tok = enc(**batch)
    assert not tok.mask.any() and (tok.values == 0).all()


def test_config_validation_and_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stride"):
        TextEncoderConfig(max_length=16, stride=16)
    with pytest.raises(ConfigError, match="allow_download"):
        load_tokenizer(TextEncoderConfig(model="nobody/no-such-model-xyz"))
    with pytest.raises(ConfigError, match="could not be loaded"):
        TextEncoder(TextEncoderConfig(model=str(tmp_path)))


def test_minilm_loads_offline_and_embeds() -> None:
    cfg = TextEncoderConfig()
    assert (packaged_model_dir() / "model.safetensors").is_file()
    tokenizer = load_tokenizer(cfg)
    enc = TextEncoder(cfg)
    assert enc.out_dim == 384
    notes = ["chest pain with elevated troponin", "acute myocardial infarction", "a broken toe"]
    tok = enc(**tokenize_notes(notes, tokenizer, cfg))
    assert tok.values.shape == (3, 1, 384)
    e = torch.nn.functional.normalize(tok.pooled(), dim=-1)
    # A real sentence model: the two cardiac notes are closer than cardiac vs toe.
    assert e[0] @ e[1] > e[0] @ e[2]
