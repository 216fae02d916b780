"""The frozen grid encoder: (B, 3, S, S) -> (B, R, C), for any backbone of the table.

`pipeline/backbones.py` names the torchvision models (ResNet50 by default: 224 px ->
(B, 49, 2048)); this module builds one, takes its grid (`GridEncoder`: the last
convolutional stage, or a ViT's patch tokens), and average-pools it to `grid` x `grid`.

Weights come from one of three sources, each recorded in the feature file's `weights` attr
so the exact same network can be rebuilt later (`build_backbone_from_attrs`):

- `imagenet` -> "imagenet:<member>" (e.g. IMAGENET1K_V2): the table's torchvision weights
  (downloaded once into torchvision's cache, TORCH_HOME).
- `none`     -> "none:seed=0": random init from a fixed seed, made inside `fork_rng` so the
  caller's RNG state is untouched; nothing is downloaded. Features carry no visual meaning
  (for tests and demos).
- `PATH`     -> "file:sha256:<hex>": a local state_dict of the same torchvision model
  (classifier keys allowed), read with `torch.load(weights_only=True)`; the path itself is
  kept in `weights_path`.

A frozen ResNet's batch norms are folded into the convolutions before them: the same function
(outputs differ only by float rounding, below the float16 storage step) with one pass over each
activation fewer, so faster (docs/benchmarks.md, "Stage one: extraction").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models import get_model, get_weight
from torchvision.ops.misc import Permute

from pipeline.backbones import DEFAULT_BACKBONE, Backbone, backbone
from pipeline.checksum import file_sha256
from pipeline.contract import GRID, TESTBED_PREFIX
from pipeline.errors import UserError

NONE_SEED = 0


def _other_options(name: str) -> str:
    return (
        "use --weights none (random features, for trying the pipeline) or "
        f"--weights PATH (a local torchvision {name} state_dict file)"
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
                "--weights none: a randomly initialised backbone (seeded); the features "
                "carry no visual meaning and captions trained on them will be poor"
            )
        return ""


def imagenet_tag(name: str) -> str:
    """The `weights` attr of backbone `name`'s ImageNet weights, e.g. "imagenet:IMAGENET1K_V2"."""
    return "imagenet:" + backbone(name).weights.split(".", 1)[1]


def resolve_weights(spec: str, name: str = DEFAULT_BACKBONE) -> WeightsSource:
    """`imagenet` | `none` | a state_dict file path -> WeightsSource for backbone `name` (a
    file is hashed)."""
    if spec == "imagenet":
        return WeightsSource(imagenet_tag(name))
    if spec == "none":
        return WeightsSource(f"none:seed={NONE_SEED}")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(
            f"--weights must be imagenet, none or a state_dict file; "
            f"{spec!r} is none of these (file not found)"
        )
    return WeightsSource(f"file:sha256:{file_sha256(path)}", str(path.resolve()))


class VitTokens(nn.Module):
    """A torchvision VisionTransformer up to its encoder's output: (B, 1 + P, C) tokens, the
    class token first (the classification head is left out)."""

    def __init__(self, vit: torchvision.models.VisionTransformer) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised -> (B, 1 + P, C)."""
        patches = self.vit._process_input(images)  # (B, P, C)
        token = self.vit.class_token.expand(patches.shape[0], -1, -1)  # (B, 1, C)
        return self.vit.encoder(torch.cat([token, patches], dim=1))


def trunk_of(model: nn.Module, trunk: str) -> nn.Module:
    """The part of a torchvision model that makes its grid: (B, 3, S, S) -> (B, C, h, w), or
    for "vit" the tokens (B, 1 + h * w, C). `trunk` is a pipeline.backbones.TRUNKS kind."""
    if trunk == "resnet":
        return nn.Sequential(
            model.conv1,
            model.bn1,
            model.relu,
            model.maxpool,
            model.layer1,
            model.layer2,
            model.layer3,
            model.layer4,
        )
    if trunk == "regnet":
        return nn.Sequential(model.stem, model.trunk_output)
    if trunk == "convnext":
        return model.features
    if trunk == "swin":  # tokens (B, h, w, C), normalised -> (B, C, h, w)
        return nn.Sequential(model.features, model.norm, Permute([0, 3, 1, 2]))
    if trunk == "vit":
        return VitTokens(model)
    raise ValueError(f"unknown trunk {trunk!r}")


class GridEncoder(nn.Module):
    """A backbone's trunk, then AdaptiveAvgPool2d(grid), as grid * grid region vectors (row
    major), plus a ViT's class token as the last region when `class_token`.

    `GridEncoder(resnet)` is ResNet50's: (B, 3, 224, 224) -> (B, 49, 2048).
    """

    def __init__(
        self,
        model: nn.Module,
        trunk: str = "resnet",
        grid: int = GRID,
        class_token: bool = False,
    ) -> None:
        super().__init__()
        self.tokens = trunk == "vit"
        self.class_token = class_token
        self.body = trunk_of(model, trunk)
        self.pool = nn.AdaptiveAvgPool2d(grid)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised -> (B, R, C): R = grid * grid (+ 1 with the class token)."""
        out = self.body(images)  # (B, C, h, w), or ViT tokens (B, 1 + h * w, C)
        token = None
        if self.tokens:
            token, patches = out[:, 0], out[:, 1:]  # (B, C), (B, P, C)
            side = math.isqrt(patches.shape[1])
            out = patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side)
        grid = self.pool(out).flatten(2).transpose(1, 2)  # (B, grid * grid, C)
        if self.class_token:
            grid = torch.cat([grid, token.unsqueeze(1)], dim=1)  # (B, grid * grid + 1, C)
        return grid


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


def seeded_model(entry: Backbone, seed: int = NONE_SEED) -> nn.Module:
    """The torchvision model of `entry` with its init drawn from `seed` (no weights: nothing
    is downloaded), leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_model(entry.name, weights=None)


def _imagenet_state_dict(entry: Backbone) -> dict:
    try:
        return get_weight(entry.weights).get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # urllib, socket, SSL, hash and disk errors all end the same way
        raise UserError(
            f"could not download the ImageNet {entry.name} weights ({exc}); "
            f"{_other_options(entry.name)}"
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


def _load_weights(model: nn.Module, entry: Backbone, state: dict, where: str) -> None:
    """Load a state_dict of `entry`'s model, ignoring its classifier (`entry.head`); anything
    else missing or extra is an error."""
    state = {k: v for k, v in state.items() if not k.startswith(entry.head)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise UserError(
            f"{where} does not fit torchvision's {entry.name} ({str(exc)[:200]})"
        ) from None
    missing = [k for k in result.missing_keys if not k.startswith(entry.head)]
    if missing or result.unexpected_keys:
        raise UserError(
            f"{where} is not a torchvision {entry.name} state_dict "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )


def build_backbone(
    source: WeightsSource,
    device: torch.device | str,
    name: str = DEFAULT_BACKBONE,
    grid: int = GRID,
    class_token: bool = False,
) -> GridEncoder:
    """The frozen, eval-mode, channels_last grid encoder of backbone `name` with weights
    `source`, pooled to `grid` x `grid` (plus the class token if kept), on `device`."""
    entry = backbone(name)
    tag = source.tag
    if tag.startswith("none:seed="):
        model = seeded_model(entry, int(tag.split("=", 1)[1]))
    elif tag == imagenet_tag(name):
        model = seeded_model(entry)
        _load_weights(model, entry, _imagenet_state_dict(entry), "ImageNet weights")
    elif tag.startswith("file:sha256:"):
        model = seeded_model(entry)
        expected = tag.removeprefix("file:sha256:")
        _load_weights(model, entry, _file_state_dict(source.path, expected), source.path)
    else:
        raise UserError(
            f"unknown weights {tag!r} for {name} (expected {imagenet_tag(name)}, "
            "none:seed=N or file:sha256:...)"
        )
    model = model.eval()
    if entry.trunk == "resnet":
        model = fold_batch_norms(model)
    encoder = GridEncoder(model, entry.trunk, grid, class_token).eval().requires_grad_(False)
    return encoder.to(device, memory_format=torch.channels_last)


def build_backbone_from_attrs(
    attrs: dict, device: torch.device | str, weights_path: str | None = None
) -> GridEncoder:
    """Rebuild the exact encoder a feature file was made with, from its attrs.

    `weights_path` replaces the recorded `weights_path` for file weights (e.g. moved); the
    file's sha256 must still match. UserError if the file's backbone is not one of ours.
    """
    name = str(attrs.get("backbone", ""))
    if name.startswith(TESTBED_PREFIX):
        raise UserError(f"features of {name} were written without images: no backbone makes them")
    backbone(name)  # UserError naming the known backbones
    tag = str(attrs.get("weights", ""))
    path = weights_path or str(attrs.get("weights_path", ""))
    grid, class_token = int(attrs.get("grid", GRID)), bool(attrs.get("class_token", False))
    return build_backbone(WeightsSource(tag, path), device, name, grid, class_token)
