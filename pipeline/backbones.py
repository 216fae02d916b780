"""The image backbones `captioner extract` can run: one table, names to torchvision models.

Each entry names a torchvision model builder and the weights enum member `weights =
"imagenet"` loads (both resolved by torchvision's registry, `torchvision.models.get_model`
and `get_weight`, only when a backbone is built), how its grid is taken (`trunk`), its
channels and its stride (input pixels per grid cell: 224 px give a 7 x 7 grid at stride 32,
14 x 14 at 16). The preprocessing (resize, crop, interpolation, mean, std) is read from the
weights' declared `transforms()` (`pipeline/extract/images.py`), never typed here.

Trunks, the grid each takes:

- `resnet`: conv1 .. layer4 (ResNet, Wide ResNet); its batch norms are folded into the convs.
- `regnet`: stem, trunk_output.
- `convnext`: `features` (the last stage, before the classifier's norm and pooling).
- `swin`: `features`, then its final `norm` (per token), as a grid.
- `vit`: the encoder's output tokens: the patch tokens as a grid, the class token dropped or
  kept as one more region after the cells (`features.class_token`).

This module holds plain data (no torch import), so the config can check names against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError

DEFAULT_BACKBONE = "resnet50"
DEFAULT_GRID = 7  # cells per side of the stored grid (ResNet50's own at 224 px)
TRUNKS = ("resnet", "regnet", "convnext", "swin", "vit")


@dataclass(frozen=True)
class Backbone:
    """One torchvision image model as a grid encoder."""

    name: str  # torchvision's builder name, also the feature file's `backbone` attr
    weights: str  # "Enum.MEMBER" loaded by `weights = "imagenet"`
    trunk: str  # how the grid is taken: one of TRUNKS
    channels: int  # C of the (R, C) grid
    stride: int = 32  # input pixels per grid cell
    head: tuple[str, ...] = ("fc.",)  # state_dict prefixes of the classifier (not loaded)
    transforms: str = ""  # "Enum.MEMBER" whose transforms() give the preprocessing; "": weights

    @property
    def has_class_token(self) -> bool:
        """Whether the model has a class token that `features.class_token` may keep."""
        return self.trunk == "vit"

    @property
    def preprocessing_weights(self) -> str:
        """The weights enum member whose declared transforms this backbone's images get."""
        return self.transforms or self.weights


BACKBONES = {
    entry.name: entry
    for entry in (
        # ResNet50 keeps the preprocessing of every file made before backbones were selectable:
        # IMAGENET1K_V1's declared transforms (shorter side 256), with the V2 weights.
        Backbone(
            "resnet50",
            "ResNet50_Weights.IMAGENET1K_V2",
            "resnet",
            2048,
            transforms="ResNet50_Weights.IMAGENET1K_V1",
        ),
        Backbone("resnet101", "ResNet101_Weights.IMAGENET1K_V2", "resnet", 2048),
        Backbone("resnet152", "ResNet152_Weights.IMAGENET1K_V2", "resnet", 2048),
        Backbone("wide_resnet50_2", "Wide_ResNet50_2_Weights.IMAGENET1K_V2", "resnet", 2048),
        Backbone("regnet_y_16gf", "RegNet_Y_16GF_Weights.IMAGENET1K_V2", "regnet", 3024),
        Backbone(
            "convnext_tiny",
            "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
            "convnext",
            768,
            head=("classifier.",),
        ),
        Backbone(
            "convnext_base",
            "ConvNeXt_Base_Weights.IMAGENET1K_V1",
            "convnext",
            1024,
            head=("classifier.",),
        ),
        Backbone("swin_t", "Swin_T_Weights.IMAGENET1K_V1", "swin", 768, head=("head.",)),
        Backbone(
            "vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1", "vit", 768, stride=16, head=("heads.",)
        ),
    )
}


def backbone(name: str) -> Backbone:
    """The table's entry for `name`; UserError naming the known backbones otherwise."""
    if name not in BACKBONES:
        raise UserError(
            f"unknown backbone {name!r}; known: {', '.join(BACKBONES)} (features.backbone)"
        )
    return BACKBONES[name]
