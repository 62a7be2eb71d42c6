"""2D images (X-rays, photographs, slides): PNG/JPEG/TIFF via Pillow, 2D DICOM via pydicom.

``load`` returns pixels scaled to the display range [0, 1]: 8/16-bit files by their bit
depth, DICOM through its modality LUT and VOI window (min-max when it has none), with
MONOCHROME1 inverted so bright always means dense. ``preprocess`` converts channels,
resizes (stretch or letterbox) and normalises per the spec -> float16 (C, H, W).

Encoders are the volume networks in 2D (``tiny``, ``densenet121``, ``resnet18``, ``vit``,
``swin``) plus ``hf_vision``: a Hugging Face vision model loaded from a local folder.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import field_validator
from torch import nn

from modalities.base import SingleFileModality, Spec, Tokens, register_modality
from modalities.errors import ConfigError, InputRejected, ReasonCode, UnknownNameError
from modalities.registry import Registry
from modalities.volume_encoders import (
    VolumeEncoderConfig,
    build_volume_encoder,
    volume_net_names,
)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Image2D:
    """Decoded pixels (C, H, W) float32 in [0, 1]; C is 1 (grey) or 3 (RGB)."""

    pixels: np.ndarray
    source_format: str


class ImageSpec(Spec):
    """How images are prepared: output size (H, W), channels, resize and normalisation.

    ``resize``: ``stretch`` to ``size``, or ``letterbox`` (keep aspect, pad with black).
    ``normalization``: ``unit`` keeps [0, 1]; ``imagenet`` applies ImageNet mean/std (for
    ImageNet-pretrained encoders); ``zscore`` standardises each image.
    """

    size: tuple[int, int] = (224, 224)
    channels: Literal[1, 3] = 1
    resize: Literal["stretch", "letterbox"] = "stretch"
    normalization: Literal["unit", "imagenet", "zscore"] = "unit"

    @field_validator("size")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 8:
            raise ValueError("size must be at least 8x8 pixels")
        return v


class ImageEncoderConfig(VolumeEncoderConfig):
    """A volume encoder config in 2D; ``hf_vision`` reads ``pretrained`` as a model folder."""

    spatial_dims: int = 2
    img_size: int | tuple[int, ...] = 224


# ---------------------------------------------------------------------------- reading


def _read_pil(data: bytes, fmt: str) -> Image2D:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputRejected(
            ReasonCode.UNREADABLE, f"{fmt} image is corrupt or truncated; re-export it"
        ) from None
    if getattr(img, "n_frames", 1) > 1:
        raise InputRejected(
            ReasonCode.UNSUPPORTED_FORMAT, f"{fmt} holds several frames; export one image"
        )
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() <= 65535 else float(arr.max())
        pixels = (arr / top)[None]
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        pixels = _minmax(arr)[None]
    elif img.mode in ("1", "L", "LA", "P") and _is_grey(img):
        pixels = (np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None]
    else:
        pixels = np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    return Image2D(np.ascontiguousarray(pixels), fmt)


def _is_grey(img: Any) -> bool:
    """A palette image is grey only if its palette is; other listed modes always are."""
    if img.mode != "P":
        return True
    rgb = np.asarray(img.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _dicom_error(e: Exception) -> InputRejected:
    text = str(e).lower()
    if isinstance(e, NotImplementedError) or (
        "missing" in text and ("plugin" in text or "dependenc" in text)
    ):
        return InputRejected(
            ReasonCode.CODEC_UNAVAILABLE,
            "DICOM pixel data uses a compression with no installed decoder; install "
            "pylibjpeg with its openjpeg/libjpeg plugins, or re-export uncompressed",
        )
    if isinstance(e, AttributeError) and "pixel data" in text:
        return InputRejected(
            ReasonCode.UNSUPPORTED_FORMAT, "DICOM file has no image (pixel data); pick an image"
        )
    return InputRejected(
        ReasonCode.PIXEL_DECODE_FAILED,
        f"DICOM pixel data cannot be decoded ({type(e).__name__}); re-export the image",
    )


def _read_dicom(data: bytes, fmt: str) -> Image2D:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise InputRejected(ReasonCode.NOT_DICOM, "file is not valid DICOM; re-export") from None
    except Exception as e:
        raise InputRejected(
            ReasonCode.UNREADABLE, f"DICOM header cannot be parsed ({type(e).__name__})"
        ) from None
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InputRejected(
            ReasonCode.UNSUPPORTED_FORMAT,
            "DICOM file is multi-frame (a volume or cine); use the ct/mri modality or export "
            "one frame",
        )
    try:
        arr = ds.pixel_array
    except Exception as e:
        raise _dicom_error(e) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if arr.ndim == 3:  # colour (pydicom converts YBR to RGB)
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        return Image2D(arr.transpose(2, 0, 1).astype(np.float32) / top, fmt)
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = np.asarray(apply_voi_lut(values, ds), dtype=np.float32)
    if not np.isfinite(values).all():
        raise InputRejected(ReasonCode.NON_FINITE_VALUES, "DICOM image holds NaN/inf values")
    pixels = _minmax(values)
    if photometric == "MONOCHROME1":  # bright = low values: invert so bright = dense
        pixels = 1.0 - pixels
    return Image2D(pixels[None].astype(np.float32), fmt)


# Magic-byte sniffers -> readers (a lookup table, so adding a format is one line).
# DICOM first: a DICOM preamble may itself be a TIFF header (dual-format files).
_FORMATS: list[tuple[str, Callable[[bytes], bool], Callable[[bytes, str], Image2D]]] = [
    ("DICOM", lambda b: b[128:132] == b"DICM", _read_dicom),
    ("PNG", lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"), _read_pil),
    ("JPEG", lambda b: b.startswith(b"\xff\xd8\xff"), _read_pil),
    ("TIFF", lambda b: b[:4] in (b"II*\x00", b"MM\x00*"), _read_pil),
]


def read_image(data: bytes) -> Image2D:
    """Decode image bytes by their magic number; raise ``InputRejected`` when unusable."""
    if not data:
        raise InputRejected(ReasonCode.UNREADABLE, "image file is empty; re-export it")
    for fmt, sniff, reader in _FORMATS:
        if sniff(data):
            image = reader(data, fmt)
            break
    else:
        raise InputRejected(
            ReasonCode.UNSUPPORTED_FORMAT,
            "image is not PNG, JPEG, TIFF or DICOM (with its 128-byte preamble); convert it",
        )
    if image.pixels.shape[1] < 2 or image.pixels.shape[2] < 2:
        raise InputRejected(ReasonCode.UNSUPPORTED_FORMAT, "image is smaller than 2x2 pixels")
    if not np.isfinite(image.pixels).all():
        raise InputRejected(ReasonCode.NON_FINITE_VALUES, "image holds NaN/inf values")
    return image


# ---------------------------------------------------------------------------- encoders


class HFVisionEncoder(nn.Module):
    """A Hugging Face vision model from a local folder: last hidden state as tokens.

    CNN backbones (last_hidden_state (B, C, h, w)) are flattened to h*w tokens; grey input
    is repeated to the model's channel count.
    """

    def __init__(self, cfg: ImageEncoderConfig, in_channels: int) -> None:
        super().__init__()
        if not cfg.pretrained:
            raise ConfigError("encoder hf_vision needs pretrained: <local model folder>")
        path = Path(cfg.pretrained).expanduser()
        if not path.is_dir():
            raise ConfigError(
                f"hf_vision model folder {path} does not exist; save the model there with "
                "save_pretrained()"
            )
        from transformers import AutoModel

        try:
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"hf_vision folder {path} holds no loadable model ({type(e).__name__})"
            ) from None
        config = self.model.config
        self.channels = int(getattr(config, "num_channels", 3))
        if in_channels not in (1, self.channels):
            raise ConfigError(f"model expects {self.channels} channels, spec gives {in_channels}")
        hidden = getattr(config, "hidden_size", None) or config.hidden_sizes[-1]
        self.proj = nn.Linear(hidden, cfg.out_dim) if cfg.out_dim else nn.Identity()
        self.out_dim = cfg.out_dim or int(hidden)
        self.frozen = cfg.freeze
        if cfg.freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    def train(self, mode: bool = True) -> HFVisionEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, x: torch.Tensor) -> Tokens:
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.model(pixel_values=x).last_hidden_state
        if hidden.ndim == 4:
            hidden = hidden.flatten(2).transpose(1, 2)
        values = self.proj(hidden)
        return Tokens(values, torch.ones(values.shape[:2], dtype=torch.bool, device=x.device))


ImageBuilder = Callable[[ImageEncoderConfig, int], nn.Module]
# Plugins add 2D encoders as volume nets (``register_volume_net``; they get spatial_dims 2).
IMAGE_ONLY_ENCODERS: Registry[ImageBuilder] = Registry("image encoder", stamp=False)
IMAGE_ONLY_ENCODERS.add("hf_vision", HFVisionEncoder)


def image_encoder_names() -> list[str]:
    """Every name ``ImageEncoderConfig.name`` accepts: 2D volume nets + image-only ones."""
    return sorted(set(volume_net_names()) | set(IMAGE_ONLY_ENCODERS.names()))


def build_image_encoder(
    cfg: ImageEncoderConfig, in_channels: int, input_size: tuple[int, int] | None = None
) -> nn.Module:
    """The 2D encoder ``cfg.name`` names; ``forward(x (B, C, H, W)) -> Tokens``.

    ``input_size`` (the spec's size) tells ViT its input size unless the config sets one.
    """
    if cfg.spatial_dims != 2:
        raise ConfigError("image encoders are 2D: leave encoder.spatial_dims at 2")
    if cfg.name in IMAGE_ONLY_ENCODERS:
        return IMAGE_ONLY_ENCODERS.get(cfg.name)(cfg, in_channels)
    if cfg.name not in volume_net_names():
        raise UnknownNameError("image encoder", cfg.name, image_encoder_names())
    return build_volume_encoder(cfg, in_channels=in_channels, input_size=input_size)


# ---------------------------------------------------------------------------- modality


@register_modality("image")
class ImageModality(SingleFileModality):
    """2D images (chest X-rays as DICOM, or PNG/JPEG/TIFF) as feature-map tokens."""

    kind = "image"
    what = "image"
    version = 1
    Spec = ImageSpec
    EncoderSpec = ImageEncoderConfig

    def load(self, source: Path | str) -> Image2D:
        return read_image(self.read_bytes(source))

    def preprocess(self, raw: Image2D) -> np.ndarray:
        """Channels -> resize -> normalise: float16 (channels, H, W)."""
        spec = self.spec
        x = torch.from_numpy(raw.pixels).float()
        if x.shape[0] != spec.channels:
            # Grey -> RGB repeats; RGB -> grey uses ITU-R 601 luma weights.
            luma = torch.tensor([0.299, 0.587, 0.114])[:, None, None]
            x = x.repeat(3, 1, 1) if spec.channels == 3 else (x * luma).sum(0, keepdim=True)
        x = _resize(x, spec.size, spec.resize)
        if spec.normalization == "imagenet":
            mean = torch.tensor(_IMAGENET_MEAN[: spec.channels])[:, None, None]
            std = torch.tensor(_IMAGENET_STD[: spec.channels])[:, None, None]
            if spec.channels == 1:  # grey: the mean/std of the luma channel
                mean, std = mean.new_tensor([[[0.449]]]), std.new_tensor([[[0.226]]])
            x = (x - mean) / std
        elif spec.normalization == "zscore":
            x = (x - x.mean()) / x.std().clamp_min(1e-6)
        return x.numpy().astype(np.float16)

    def collate(self, items: list[np.ndarray]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Stack same-size images -> ``{"x": (B, C, H, W) float32}``."""
        return {
            "x": torch.stack([torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in items])
        }

    def encoder(self) -> nn.Module:
        return build_image_encoder(
            self.encoder_config, in_channels=self.spec.channels, input_size=self.spec.size
        )


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(C, h, w) -> (C, *size): bilinear with antialiasing; letterbox pads with 0 (black)."""
    h, w = x.shape[1:]
    if mode == "letterbox":
        scale = min(size[0] / h, size[1] / w)
        inner = (max(1, round(h * scale)), max(1, round(w * scale)))
    else:
        inner = size
    x = torch.nn.functional.interpolate(
        x[None], size=inner, mode="bilinear", antialias=True, align_corners=False
    )[0].clamp(0.0, 1.0)
    if inner != tuple(size):
        top, left = (size[0] - inner[0]) // 2, (size[1] - inner[1]) // 2
        x = torch.nn.functional.pad(
            x, (left, size[1] - inner[1] - left, top, size[0] - inner[0] - top)
        )
    return x
