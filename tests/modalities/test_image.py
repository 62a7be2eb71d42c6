"""2D images: PNG/JPEG round trips, pydicom's bundled DICOM files, resizing, encoders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from modalities.errors import ConfigError, InputRejected, ReasonCode, UnknownNameError
from modalities.image import ImageModality, image_encoder_names


def dicom_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not installed")
    return Path(path)


def gradient(h: int = 40, w: int = 60) -> np.ndarray:
    """Left-to-right ramp 0..255 (uint8), easy to check after resizing."""
    return np.tile(np.linspace(0, 255, w), (h, 1)).astype(np.uint8)


def test_png_grey_round_trip(tmp_path: Path) -> None:
    Image.fromarray(gradient()).save(tmp_path / "g.png")
    mod = ImageModality(spec={"size": (20, 30)})
    raw = mod.load(tmp_path / "g.png")
    assert raw.source_format == "PNG" and raw.pixels.shape == (1, 40, 60)
    assert raw.pixels.min() == 0.0 and raw.pixels.max() == 1.0
    out = mod.preprocess(raw)
    assert out.shape == (1, 20, 30) and out.dtype == np.float16
    row = out[0, 10].astype(np.float32)
    assert np.all(np.diff(row) > 0) and row[0] < 0.05 and row[-1] > 0.95


def test_png_16bit_and_rgb_to_grey(tmp_path: Path) -> None:
    arr16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(arr16).save(tmp_path / "d.png")
    raw = ImageModality().load(tmp_path / "d.png")
    assert raw.pixels.shape == (1, 64, 64)
    assert np.isclose(raw.pixels.max(), arr16.max() / 65535.0, atol=1e-6)
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 1] = 255  # pure green
    Image.fromarray(rgb).save(tmp_path / "c.png")
    grey = ImageModality(spec={"size": (16, 16), "channels": 1})
    out = grey.preprocess(grey.load(tmp_path / "c.png"))
    assert out.shape == (1, 16, 16) and np.allclose(out, 0.587, atol=1e-2)
    colour = ImageModality(spec={"size": (16, 16), "channels": 3})
    out3 = colour.preprocess(colour.load(tmp_path / "c.png")).astype(np.float32)
    assert np.allclose(out3[1], 1.0) and np.allclose(out3[0], 0.0)


def test_jpeg_and_letterbox(tmp_path: Path) -> None:
    Image.fromarray(np.full((40, 80, 3), 200, np.uint8)).save(tmp_path / "p.jpg", quality=95)
    mod = ImageModality(spec={"size": (32, 32), "channels": 3, "resize": "letterbox"})
    raw = mod.load(tmp_path / "p.jpg")
    assert raw.source_format == "JPEG" and raw.pixels.shape == (3, 40, 80)
    out = mod.preprocess(raw).astype(np.float32)
    # 40x80 -> 16x32 content centred in 32x32: black bars above and below.
    assert np.allclose(out[:, :8], 0.0) and np.allclose(out[:, 24:], 0.0)
    assert np.allclose(out[:, 9:23], 200 / 255, atol=0.03)


def test_normalizations(tmp_path: Path) -> None:
    Image.fromarray(gradient()).save(tmp_path / "g.png")
    z = ImageModality(spec={"size": (20, 30), "normalization": "zscore"})
    out = z.preprocess(z.load(tmp_path / "g.png")).astype(np.float32)
    assert abs(out.mean()) < 0.01 and abs(out.std() - 1) < 0.01
    net = ImageModality(spec={"size": (20, 30), "channels": 3, "normalization": "imagenet"})
    out3 = net.preprocess(net.load(tmp_path / "g.png")).astype(np.float32)
    assert np.isclose(out3[0, 0, 0], -0.485 / 0.229, atol=0.1)
    assert np.isclose(out3[2, 0, -1], (1 - 0.406) / 0.225, atol=0.1)


def test_dicom_ct_small() -> None:
    path = dicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    mod = ImageModality(spec={"size": (64, 64)})
    raw = mod.load(path)
    assert raw.source_format == "DICOM" and raw.pixels.shape == (1, ds.Rows, ds.Columns)
    assert raw.pixels.min() == 0.0 and raw.pixels.max() == 1.0
    # Scaling is monotone: the brightest stored pixel stays the brightest.
    hu = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
    assert np.unravel_index(raw.pixels[0].argmax(), hu.shape) == np.unravel_index(
        hu.argmax(), hu.shape
    )
    assert mod.preprocess(raw).shape == (1, 64, 64)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    mod = ImageModality()
    normal = mod.load(dicom_file("CT_small.dcm")).pixels
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    inverted = mod.load(tmp_path / "m1.dcm").pixels
    assert np.allclose(inverted, 1.0 - normal)


def test_dicom_rgb() -> None:
    raw = ImageModality().load(dicom_file("SC_rgb_small_odd.dcm"))
    assert raw.pixels.shape[0] == 3 and raw.pixels.min() >= 0 and raw.pixels.max() <= 1


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("MR_truncated.dcm", ReasonCode.PIXEL_DECODE_FAILED),
        ("rtplan.dcm", ReasonCode.UNSUPPORTED_FORMAT),  # no pixel data
        ("examples_ybr_color.dcm", ReasonCode.UNSUPPORTED_FORMAT),  # 30 frames
        ("no_meta.dcm", ReasonCode.UNSUPPORTED_FORMAT),  # no DICM preamble
    ],
)
def test_bad_dicom_rejected(name: str, code: ReasonCode) -> None:
    with pytest.raises(InputRejected) as err:
        ImageModality().load(dicom_file(name))
    assert err.value.code == code


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", ReasonCode.UNREADABLE),
        (b"GIF89a" + b"\x00" * 50, ReasonCode.UNSUPPORTED_FORMAT),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, ReasonCode.UNREADABLE),
    ],
)
def test_bad_files_rejected(tmp_path: Path, content: bytes, code: ReasonCode) -> None:
    (tmp_path / "x.img").write_bytes(content)
    with pytest.raises(InputRejected) as err:
        ImageModality().load(tmp_path / "x.img")
    assert err.value.code == code


def test_truncated_png_and_missing(tmp_path: Path) -> None:
    Image.fromarray(gradient(100, 100)).save(tmp_path / "g.png")
    data = (tmp_path / "g.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    mod = ImageModality()
    with pytest.raises(InputRejected) as err:
        mod.load(tmp_path / "t.png")
    assert err.value.code == ReasonCode.UNREADABLE
    with pytest.raises(InputRejected) as err:
        mod.load(tmp_path / "none.png")
    assert err.value.code == ReasonCode.MISSING_FILE
    assert mod.content_hash(tmp_path / "g.png") != mod.content_hash(tmp_path / "t.png")


def test_encoder_names_and_unknown() -> None:
    assert image_encoder_names() == [
        "densenet121", "hf_vision", "resnet10", "resnet18", "swin", "tiny", "vit",
    ]  # fmt: skip
    with pytest.raises(UnknownNameError, match="hf_vision"):
        ImageModality(encoder={"name": "alexnet"}).encoder()
    with pytest.raises(ConfigError, match="2D"):
        ImageModality(encoder={"spatial_dims": 3}).encoder()


@pytest.mark.parametrize(
    ("encoder", "channels", "n_tokens"),
    [({"name": "tiny"}, 1, 64), ({"name": "tiny", "out_dim": 32}, 3, 64),
     ({"name": "resnet18"}, 1, 4), ({"name": "densenet121", "width": 16}, 3, 4)],
)  # fmt: skip
def test_encoders_on_collated_batch(encoder: dict, channels: int, n_tokens: int) -> None:
    mod = ImageModality(spec={"size": (64, 64), "channels": channels}, encoder=encoder)
    batch = mod.collate([np.zeros((channels, 64, 64), np.float16)] * 2)
    assert batch["x"].shape == (2, channels, 64, 64) and batch["x"].dtype == torch.float32
    enc = mod.encoder().eval()
    with torch.no_grad():
        tok = enc(**batch)
    assert tok.values.shape == (2, n_tokens, enc.out_dim) and tok.mask.all()


@pytest.mark.skipif(importlib.util.find_spec("einops") is None, reason="needs einops")
def test_vit_takes_its_size_from_the_spec() -> None:
    enc_cfg = {"name": "vit", "patch_size": 8, "width": 32, "layers": 1, "heads": 2}
    mod = ImageModality(spec={"size": (32, 48)}, encoder=enc_cfg)
    tok = mod.encoder().eval()(**mod.collate([np.zeros((1, 32, 48), np.float16)]))
    assert tok.values.shape == (1, 24, 32)


def test_hf_vision_from_local_folder(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64,
    )  # fmt: skip
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    mod = ImageModality(
        spec={"size": (32, 32)},
        encoder={"name": "hf_vision", "pretrained": str(tmp_path / "vit"), "freeze": True},
    )
    enc = mod.encoder().train()
    assert not enc.model.training and not any(p.requires_grad for p in enc.model.parameters())
    tok = enc(**mod.collate([np.zeros((1, 32, 32), np.float16)] * 2))
    assert tok.values.shape == (2, 17, 32)  # [CLS] + 16 patches
    with pytest.raises(ConfigError, match="does not exist"):
        ImageModality(encoder={"name": "hf_vision", "pretrained": str(tmp_path / "x")}).encoder()
