"""The frozen ResNet50 grid encoder: (B, 3, 224, 224) -> (B, 49, 2048).

Weights come from one of three sources, each recorded in the feature file's `weights` attr
so the exact same network can be rebuilt later (`build_backbone_from_attrs`):

- `imagenet` -> "imagenet:IMAGENET1K_V2": torchvision's weights API (downloaded once into
  torchvision's cache, TORCH_HOME).
- `none`     -> "none:seed=0": random init from a fixed seed, made inside `fork_rng` so the
  caller's RNG state is untouched. Features carry no visual meaning (for tests and demos).
- `PATH`     -> "file:sha256:<hex>": a local torchvision resnet50 state_dict (fc keys allowed),
  read with `torch.load(weights_only=True)`; the path itself is kept in `weights_path`.

The frozen network's batch norms are folded into the convolutions before them: the same function
(outputs differ only by float rounding, below the float16 storage step) with one pass over each
activation fewer, so faster (docs/benchmarks.md, "Stage one: extraction").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models import ResNet50_Weights

from pipeline.checksum import file_sha256
from pipeline.contract import BACKBONE, GRID
from pipeline.errors import UserError

IMAGENET_TAG = "imagenet:IMAGENET1K_V2"
NONE_SEED = 0
_OTHER_OPTIONS = (
    "use --weights none (random features, for trying the pipeline) or "
    "--weights PATH (a local torchvision resnet50 state_dict file)"
)


@dataclass(frozen=True)
class WeightsSource:
    """Where the backbone's weights come from: `tag` is the file's `weights` attr."""

    tag: str  # "imagenet:IMAGENET1K_V2" | "none:seed=0" | "file:sha256:<hex>"
    path: str = ""  # absolute path of a weights file ("" otherwise)

    @property
    def warning(self) -> str:
        """A line to show the user before extracting with these weights ("" if none)."""
        if self.tag.startswith("none:"):
            return (
                "--weights none: a randomly initialised ResNet50 (seeded); the features "
                "carry no visual meaning and captions trained on them will be poor"
            )
        return ""


def resolve_weights(spec: str) -> WeightsSource:
    """`imagenet` | `none` | a state_dict file path -> WeightsSource (a file is hashed)."""
    if spec == "imagenet":
        return WeightsSource(IMAGENET_TAG)
    if spec == "none":
        return WeightsSource(f"none:seed={NONE_SEED}")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(
            f"--weights must be imagenet, none or a state_dict file; "
            f"{spec!r} is none of these (file not found)"
        )
    return WeightsSource(f"file:sha256:{file_sha256(path)}", str(path.resolve()))


class GridEncoder(nn.Module):
    """ResNet50 without avgpool and fc, then AdaptiveAvgPool2d(7), as 49 region vectors."""

    def __init__(self, resnet: torchvision.models.ResNet) -> None:
        super().__init__()
        self.body = nn.Sequential(
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
            resnet.layer1,
            resnet.layer2,
            resnet.layer3,
            resnet.layer4,
        )
        self.pool = nn.AdaptiveAvgPool2d(GRID)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) normalised -> (B, 49, 2048)."""
        grid = self.pool(self.body(images))  # (B, 2048, 7, 7)
        return grid.flatten(2).transpose(1, 2)  # (B, 49, 2048)


def fold_batch_norms(resnet: torchvision.models.ResNet) -> torchvision.models.ResNet:
    """Fold every BatchNorm of an eval-mode torchvision ResNet into the conv before it (in place)."""
    pairs = [(resnet, "conv1", "bn1")]
    for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        for block in layer:
            pairs += [(block, f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
            if block.downsample is not None:
                pairs.append((block.downsample, "0", "1"))  # Sequential(conv, bn)
    for parent, conv, norm in pairs:
        folded = fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, norm))
        setattr(parent, conv, folded)
        setattr(parent, norm, nn.Identity())
    return resnet


def _seeded_resnet(seed: int) -> torchvision.models.ResNet:
    """torchvision resnet50 with its init drawn from `seed`, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchvision.models.resnet50(weights=None)


def _imagenet_state_dict() -> dict:
    try:
        return ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # urllib, socket, SSL, hash and disk errors all end the same way
        raise UserError(
            f"could not download the ImageNet ResNet50 weights ({exc}); {_OTHER_OPTIONS}"
        ) from None


def _file_state_dict(path: str, expected_sha256: str | None = None) -> dict:
    if not Path(path).is_file():
        raise UserError(f"weights file not found: {path}")
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise UserError(
            f"weights file {path} is not the one the features were made with "
            f"(sha256 differs from {expected_sha256[:12]}...)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and format errors from an arbitrary file
        raise UserError(f"cannot read weights file {path} as a torch state_dict ({exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file {path} is not a state_dict (a dict of tensors)")
    return state


def _load_resnet_weights(resnet: torchvision.models.ResNet, state: dict, where: str) -> None:
    """Load a resnet50 state_dict, ignoring fc.*; anything else missing or extra is an error."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        result = resnet.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise UserError(f"{where} does not fit torchvision's resnet50 ({str(exc)[:200]})") from None
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise UserError(
            f"{where} is not a torchvision resnet50 state_dict "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )


def build_backbone(source: WeightsSource, device: torch.device | str) -> GridEncoder:
    """The frozen, eval-mode, channels_last grid encoder for `source`, on `device`."""
    tag = source.tag
    if tag.startswith("none:seed="):
        resnet = _seeded_resnet(int(tag.split("=", 1)[1]))
    elif tag == IMAGENET_TAG:
        resnet = _seeded_resnet(NONE_SEED)
        _load_resnet_weights(resnet, _imagenet_state_dict(), "ImageNet weights")
    elif tag.startswith("file:sha256:"):
        resnet = _seeded_resnet(NONE_SEED)
        expected = tag.removeprefix("file:sha256:")
        _load_resnet_weights(resnet, _file_state_dict(source.path, expected), source.path)
    else:
        raise UserError(
            f"unknown weights {tag!r} (expected imagenet:..., none:seed=N or file:sha256:...)"
        )
    model = GridEncoder(fold_batch_norms(resnet.eval())).eval().requires_grad_(False)
    return model.to(device, memory_format=torch.channels_last)


def build_backbone_from_attrs(
    attrs: dict, device: torch.device | str, weights_path: str | None = None
) -> GridEncoder:
    """Rebuild the exact encoder a feature file was made with, from its attrs.

    `weights_path` replaces the recorded `weights_path` for file weights (e.g. moved); the
    file's sha256 must still match. UserError if the file's backbone is not ours.
    """
    if attrs.get("backbone") != BACKBONE or int(attrs.get("grid", 0)) != GRID:
        raise UserError(
            f"features come from backbone {attrs.get('backbone')!r} grid "
            f"{attrs.get('grid')!r}; this code builds {BACKBONE} grid {GRID}"
        )
    tag = str(attrs.get("weights", ""))
    path = weights_path or str(attrs.get("weights_path", ""))
    return build_backbone(WeightsSource(tag, path), device)
