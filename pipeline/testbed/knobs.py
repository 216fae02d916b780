"""The knobs of the two testbeds (pipeline/testbed/scene.py, language.py): their
defaults, ranges and checks, in one light module the CLI reads its defaults from."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import SEED_LIMIT
from pipeline.errors import UserError

SCENE_CODES = ("blocks", "projection")  # a block of channels per code value | the control


@dataclass(frozen=True)
class SceneKnobs:
    """What the scene-code testbed writes (all recorded in the feature file)."""

    images: int = 1500
    extra_test: int = 1000  # more test scenes after the demo's (tighter intervals)
    seed: int = 0
    colour_error: float = 0.25  # defaults: captions at the demo's level (XE CIDEr ~2.2);
    shape_error: float = 0.0  # what a linear probe finds in random-init ResNet50 grids is
    cell_error: float = 0.0  # harder: colour 0.3, shape 0.67 (chance), cell 0.2
    noise: float = 0.0
    code: str = "blocks"

    def check(self) -> None:
        """UserError naming the first knob out of range."""
        for name in ("colour_error", "shape_error", "cell_error"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
        if not self.noise >= 0.0:
            raise UserError(f"--noise must be >= 0, got {self.noise}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise UserError(f"--seed must be in [0, 2**32), got {self.seed}")
        if self.images < 10:
            raise UserError(f"--images must be at least 10, got {self.images}")
        if self.extra_test < 0:
            raise UserError(f"--extra-test must be >= 0, got {self.extra_test}")
        if self.code not in SCENE_CODES:
            raise UserError(f"--code must be one of {', '.join(SCENE_CODES)}, got {self.code!r}")


@dataclass(frozen=True)
class LanguageKnobs:
    """What the real-language testbed writes (all recorded in the feature file)."""

    captions_sha256: str
    train_images: int = 2000
    seed: int = 0
    recall: float = 0.5
    distractors: float = 2.0
    noise: float = 0.0
    min_count: int = 5

    def check(self) -> None:
        """UserError naming the first knob out of range."""
        if not 0.0 <= self.recall <= 1.0:
            raise UserError(f"--recall must be in [0, 1], got {self.recall}")
        if not self.distractors >= 0.0:
            raise UserError(f"--distractors must be >= 0, got {self.distractors}")
        if not self.noise >= 0.0:
            raise UserError(f"--noise must be >= 0, got {self.noise}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise UserError(f"--seed must be in [0, 2**32), got {self.seed}")
        if self.train_images < 1 or self.min_count < 1:
            raise UserError("--train-images and --min-count must be at least 1")
