"""Image encoders for volumes (3D) and images (2D): MONAI networks behind a name registry.

Every encoder maps ``x`` (B, C, *spatial) to ``Tokens``: one token per position of the last
feature map (CNNs) or per patch (transformers), flattened in C order (depth, height, width)
with nothing added - the fusion layer owns positional and modality embeddings. The
tokens of a CNN encoder are the activated feature map before global pooling, so
``Tokens.pooled()`` is the usual pooled vector.

Networks are built by name (``register_volume_net``); MONAI is imported lazily because
``import monai`` costs seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import field_validator
from torch import nn

from modalities.base import EncoderConfig, Tokens
from modalities.errors import ConfigError
from modalities.registry import Registry, encoder_registry

log = logging.getLogger(__name__)


class VolumeEncoderConfig(EncoderConfig):
    """Which network encodes a volume (or a 2D image) and how.

    ``width`` is the network's base width (tiny: first conv channels; densenet121:
    ``init_features``; resnet: ``widen_factor`` x 64 channels in the first stage; vit: hidden
    size; swin: ``feature_size``); ``None`` keeps the network's default. ``out_dim``
    projects tokens to that size with a linear layer (``None``: the network's native width).
    ``img_size``/``patch_size``/``layers``/``heads`` configure the transformers (ViT needs
    the input size up front because its position embedding is learned per patch).
    """

    name: str = "tiny"
    pretrained: str | None = None
    out_dim: int | None = None
    width: int | None = None
    spatial_dims: int = 3
    freeze: bool = False
    img_size: int | tuple[int, ...] = 96
    patch_size: int = 16
    layers: int | None = None
    heads: int | None = None

    @field_validator("spatial_dims")
    @classmethod
    def _dims(cls, v: int) -> int:
        if v not in (2, 3):
            raise ValueError("spatial_dims must be 3 (volumes) or 2 (images)")
        return v

    def size_tuple(self) -> tuple[int, ...]:
        """``img_size`` as one entry per spatial dimension."""
        s = self.img_size
        return tuple(s) if isinstance(s, tuple) else (s,) * self.spatial_dims


class Backbone(nn.Module):
    """A network cut before its pooling: ``forward(x) -> (B, N, C)`` tokens; ``dim`` = C."""

    dim: int


def _need_einops(net: str) -> None:
    """MONAI's transformer blocks import einops lazily; fail early with what to install."""
    import importlib.util

    if importlib.util.find_spec("einops") is None:
        raise ConfigError(f"encoder {net!r} needs the 'einops' package: pip install einops")


def _feature_tokens(fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) feature map -> (B, prod(S), C), positions in C (row-major) order."""
    return fmap.flatten(2).transpose(1, 2)


class TinyConvNet(Backbone):
    """Three stride-2 conv blocks (~56k params at width 16): fast on CPU, for tests and toys."""

    def __init__(self, in_channels: int, spatial_dims: int, width: int | None) -> None:
        super().__init__()
        w = width or 16
        chans = (w, 2 * w, 3 * w)
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        # BatchNorm (not instance norm) so absolute intensity, which carries meaning in
        # HU-windowed CT, survives normalisation.
        norm = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
        blocks: list[nn.Module] = []
        c_in = in_channels
        for c in chans:
            blocks += [conv(c_in, c, 3, stride=2, padding=1, bias=False), norm(c), nn.GELU()]
            c_in = c
        self.net = nn.Sequential(*blocks)
        self.dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _feature_tokens(self.net(x))


class DenseNetFeatures(Backbone):
    """MONAI DenseNet121 ``features`` + ReLU (the classifier's first step), as tokens."""

    def __init__(self, in_channels: int, spatial_dims: int, width: int | None) -> None:
        super().__init__()
        from monai.networks.nets import DenseNet121

        kw = {"init_features": width} if width else {}
        net = DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1, **kw)
        # Keep only the feature trunk: unused classifier weights would break DDP and freeze
        # logic; checkpoint keys stay "features.*" as in MONAI's own DenseNet.
        self.features = net.features
        self.dim = net.class_layers.out.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _feature_tokens(torch.relu(self.features(x)))


class ResNetFeatures(Backbone):
    """MONAI ResNet with a stride-2 stem (half the CPU time, FACTS.md), cut before pooling."""

    def __init__(self, depth: int, in_channels: int, spatial_dims: int, width: int | None) -> None:
        super().__init__()
        from monai.networks.nets import resnet

        net = getattr(resnet, f"resnet{depth}")(
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_stride=2,
            feed_forward=False,
            widen_factor=float(width or 1),
        )
        for part in ("conv1", "bn1", "act", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, part, getattr(net, part))
        self.no_max_pool = net.no_max_pool
        self.dim = self.layer4[-1].conv2.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return _feature_tokens(x)


class ViTPatches(Backbone):
    """MONAI ViT (no class token): one token per patch after the final LayerNorm."""

    def __init__(self, cfg: VolumeEncoderConfig, in_channels: int) -> None:
        super().__init__()
        _need_einops("vit")
        from monai.networks.nets import ViT

        hidden = cfg.width or 768
        heads = cfg.heads or max(1, hidden // 64)
        if hidden % heads:
            raise ConfigError(f"vit: width {hidden} must be divisible by heads {heads}")
        self.img_size = cfg.size_tuple()
        if any(s % cfg.patch_size for s in self.img_size):
            raise ConfigError(
                f"vit: img_size {self.img_size} must be a multiple of patch_size {cfg.patch_size}"
            )
        self.vit = ViT(
            in_channels=in_channels,
            img_size=self.img_size,
            patch_size=cfg.patch_size,
            hidden_size=hidden,
            mlp_dim=4 * hidden,
            num_layers=cfg.layers or 12,
            num_heads=heads,
            classification=False,
            spatial_dims=cfg.spatial_dims,
        )
        self.dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.img_size:
            raise ConfigError(
                f"vit encoder built for img_size {self.img_size} got input "
                f"{tuple(x.shape[2:])}; set the encoder's img_size to the spec's size"
            )
        return self.vit(x)[0]


class SwinLastStage(Backbone):
    """SwinUNETR's ``swinViT`` (MONAI SwinTransformer), tokens from its last stage.

    Built standalone (no decoder) with SwinUNETR's arguments, so a SwinUNETR checkpoint loads
    after its ``swinViT.`` prefix is stripped (done by ``load_pretrained``).
    """

    def __init__(self, cfg: VolumeEncoderConfig, in_channels: int) -> None:
        super().__init__()
        _need_einops("swin")
        from monai.networks.nets.swin_unetr import SwinTransformer

        feat = cfg.width or 48
        if feat % 12:
            raise ConfigError(f"swin: width (feature_size) {feat} must be divisible by 12")
        depths = (2,) * 4 if cfg.layers is None else (cfg.layers,) * 4
        heads = (3, 6, 12, 24) if cfg.heads is None else tuple(cfg.heads * 2**i for i in range(4))
        nd = cfg.spatial_dims
        self.swin = SwinTransformer(
            in_chans=in_channels,
            embed_dim=feat,
            window_size=(7,) * nd,
            patch_size=(2,) * nd,
            depths=depths,
            num_heads=heads,
            spatial_dims=nd,
        )
        self.dim = feat * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % 32 for s in x.shape[2:]):
            raise ConfigError(
                f"swin needs every spatial size divisible by 32, got {tuple(x.shape[2:])}; "
                "change the spec's size"
            )
        return _feature_tokens(self.swin(x, normalize=True)[-1])


BackboneBuilder = Callable[[VolumeEncoderConfig, int], Backbone]
_NETS: Registry[BackboneBuilder] = encoder_registry("volume encoder")
# ``@register_volume_net("name")`` adds a builder ``(cfg, in_channels) -> Backbone``.
register_volume_net: Callable[[str], Callable[[BackboneBuilder], BackboneBuilder]] = (
    _NETS.register
)


def volume_net_names() -> list[str]:
    """Names accepted by ``VolumeEncoderConfig.name`` (plugins' included), sorted."""
    return _NETS.names()


register_volume_net("tiny")(lambda c, i: TinyConvNet(i, c.spatial_dims, c.width))
register_volume_net("densenet121")(lambda c, i: DenseNetFeatures(i, c.spatial_dims, c.width))
register_volume_net("resnet10")(lambda c, i: ResNetFeatures(10, i, c.spatial_dims, c.width))
register_volume_net("resnet18")(lambda c, i: ResNetFeatures(18, i, c.spatial_dims, c.width))
register_volume_net("vit")(lambda c, i: ViTPatches(c, i))
register_volume_net("swin")(lambda c, i: SwinLastStage(c, i))


class VolumeEncoder(nn.Module):
    """Backbone + optional linear projection; ``forward(x) -> Tokens`` (mask all True).

    Volumes in a batch share one spatial size (the spec's), so every token is real.
    ``freeze`` fixes the backbone (no grads, BatchNorm statistics kept in eval mode); the
    projection stays trainable.
    """

    def __init__(self, backbone: Backbone, out_dim: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Linear(backbone.dim, out_dim) if out_dim else nn.Identity()
        self.out_dim = out_dim or backbone.dim
        self.frozen = False

    def freeze_backbone(self) -> None:
        """Fix the backbone's weights and BatchNorm statistics (the projection still trains)."""
        self.frozen = True
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> VolumeEncoder:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> Tokens:
        if self.frozen:
            with torch.no_grad():
                feats = self.backbone(x)
        else:
            feats = self.backbone(x)
        values = self.proj(feats)
        mask = torch.ones(values.shape[:2], dtype=torch.bool, device=values.device)
        return Tokens(values, mask)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a torch state dict (``weights_only``: never unpickle code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"pretrained checkpoint {path} is not a readable weights file ({type(e).__name__}); "
            "give a .safetensors file or a torch state dict saved with torch.save"
        ) from None
    # Common wrappers: {"state_dict": ...} (Lightning, MedicalNet), {"model": ...}.
    for key in ("state_dict", "model", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ConfigError(f"pretrained checkpoint {path} does not hold a state dict")
    return obj


_STRIP_PREFIXES = ("module.", "swinViT.")


def load_pretrained(encoder: VolumeEncoder, path_str: str) -> None:
    """Load weights into ``encoder``: a whole-encoder state dict, or the backbone's alone.

    Backbone checkpoints may carry DDP's ``module.`` or SwinUNETR's ``swinViT.`` prefixes
    and extra keys (a classifier); every backbone weight must be found, else ConfigError.
    """
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"pretrained checkpoint {path} does not exist; fix encoder.pretrained or remove it"
        )
    sd = _read_state_dict(path)
    for prefix in _STRIP_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    target: nn.Module = encoder
    if not any(k.startswith("backbone.") for k in sd):
        target = encoder.backbone
        # A bare MONAI net's keys ("features.*", "layer1.*") lack our wrapper's attribute.
        inner = {"vit", "swin"} & set(dict(encoder.backbone.named_children()))
        if inner:
            sd = {f"{next(iter(inner))}.{k}": v for k, v in sd.items()}
    misfit = f"pretrained checkpoint {path} does not fit encoder {type(encoder.backbone).__name__}"
    try:
        result = target.load_state_dict(sd, strict=False)
    except RuntimeError:  # shape mismatches raise even with strict=False
        raise ConfigError(f"{misfit}: weight shapes differ; check encoder.name/width") from None
    missing = result.missing_keys
    if missing:
        raise ConfigError(
            f"{misfit}: {len(missing)} weights missing (e.g. {missing[0]}); "
            "check encoder.name/width"
        )
    if result.unexpected_keys:
        log.info("pretrained %s: ignored %d extra keys", path.name, len(result.unexpected_keys))
    encoder.backbone.clinfuse_pretrained = True  # fine-tuned at a lower rate (fusion.train)


def build_volume_encoder(
    cfg: VolumeEncoderConfig,
    in_channels: int = 1,
    input_size: tuple[int, ...] | None = None,
) -> VolumeEncoder:
    """Build the encoder ``cfg`` names for inputs with ``in_channels`` channels.

    ``in_channels > 1`` takes co-registered sequences (or CT+MRI early fusion) as channels.
    ``input_size`` (the spec's spatial size) sets ``img_size`` for ViT unless the config
    names one explicitly.
    """
    if not isinstance(cfg, VolumeEncoderConfig):
        cfg = VolumeEncoderConfig.model_validate(cfg.model_dump() if cfg else {})
    if input_size is not None and "img_size" not in cfg.model_fields_set:
        cfg = cfg.model_copy(update={"img_size": tuple(int(s) for s in input_size)})
    builder = _NETS.get(cfg.name)
    if in_channels < 1:
        raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
    backbone = builder(cfg, in_channels)
    # Load before freezing so the projection (not in backbone checkpoints) stays trainable.
    enc = VolumeEncoder(backbone, cfg.out_dim)
    if cfg.pretrained:
        load_pretrained(enc, cfg.pretrained)
    if cfg.freeze:
        enc.freeze_backbone()
    return enc
