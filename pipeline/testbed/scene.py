"""The scene-code testbed: the demo's scenes and captions, with grids that say what is where.

A random-init ResNet50 tells a decoder little about the demo's shapes (a linear probe finds
about 70% of colours, shapes at chance), so no objective or decoder can show a difference on
its grids. This testbed keeps the demo's images' content and captions (`demo_scenes`, the same
random stream as `captioner demo-data` with the same seed) and writes, instead of CNN grids, a
code of each shape into the 7x7 cells it covers, with controlled perception errors:

- each shape's colour is seen wrong with probability `colour_error` (another colour, uniform),
  its kind with `shape_error` (0.67 with three kinds is chance), its size always right;
- each covered cell moves to a random neighbouring cell with probability `cell_error`;
- every cell holds its own row and column code (where it is), and every channel gets Gaussian
  noise of standard deviation `noise`.

`extra_test` more scenes from another seed of the same generator (test_00000.jpg, ...) join
the test split, so that comparisons get tight intervals. The defaults (a quarter of the
colours seen wrong, kinds and places exact) put cross-entropy captions at the demo's level;
the probe's reading of the random-init grids (`--colour-error 0.3 --shape-error 0.67
--cell-error 0.2`) is harder. `code = "blocks"` writes every code value into its own block of
channels; `code = "projection"` (the control) maps the same code
through one fixed random projection onto all 2048 channels, as distributed as a CNN's. The
scene's 224-px canvas maps onto the grid directly (32 px per cell). It measures decoders and
objectives, not a vision model.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline import contract
from pipeline.captions.demo_data import COLOURS, IMAGE_SIZE, SHAPES, Shape, demo_scenes
from pipeline.testbed.files import CODE_ENERGY, write_testbed
from pipeline.testbed.knobs import SceneKnobs

BLOCK = int(CODE_ENERGY)  # channels of value 1 per code value with code = "blocks"
# code layout, one slot per value: colours, kinds, small/large, "a shape is here", row, column
SLOTS = {
    "colour": 0,
    "kind": len(COLOURS),
    "size": len(COLOURS) + len(SHAPES),
    "object": len(COLOURS) + len(SHAPES) + 2,
    "row": len(COLOURS) + len(SHAPES) + 3,
    "column": len(COLOURS) + len(SHAPES) + 3 + contract.GRID,
}
CODE_SIZE = SLOTS["column"] + contract.GRID  # 26 values


def covered_cells(shape: Shape) -> list[tuple[int, int]]:
    """(row, column) of the grid cells whose centre lies in the shape's box, or the cell of
    its centre when none does."""
    pitch = IMAGE_SIZE / contract.GRID
    centres = (np.arange(contract.GRID) + 0.5) * pitch  # (7,)
    rows = np.nonzero(np.abs(centres - shape.cy) <= shape.half)[0]
    columns = np.nonzero(np.abs(centres - shape.cx) <= shape.half)[0]
    cells = [(int(r), int(c)) for r in rows for c in columns]
    if not cells:
        last = contract.GRID - 1
        cells = [(min(int(shape.cy // pitch), last), min(int(shape.cx // pitch), last))]
    return cells


def _misread(true: int, choices: int, error: float, rng: np.random.Generator) -> int:
    """`true` with probability 1 - error, else one of the other `choices - 1` values."""
    if rng.random() >= error:
        return true
    return int((true + rng.integers(1, choices)) % choices)


def _moved(cell: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    """A random neighbour of `cell` inside the grid (8-neighbourhood)."""
    last = contract.GRID - 1
    while True:
        dr, dc = rng.integers(-1, 2, size=2)
        row, column = cell[0] + int(dr), cell[1] + int(dc)
        if (dr or dc) and 0 <= row <= last and 0 <= column <= last:
            return row, column


def scene_code(scene: list[Shape], knobs: SceneKnobs, rng: np.random.Generator) -> np.ndarray:
    """(49, CODE_SIZE) float32: each cell's code as perceived (errors drawn from `rng`)."""
    code = np.zeros((contract.GRID, contract.GRID, CODE_SIZE), dtype=np.float32)
    rows = np.arange(contract.GRID)
    code[rows, :, SLOTS["row"] + rows] = 1.0
    code[:, rows, SLOTS["column"] + rows] = 1.0
    colours = list(COLOURS)
    for shape in reversed(scene):  # the largest shape is first: it is drawn last, on top
        colour = _misread(colours.index(shape.colour), len(colours), knobs.colour_error, rng)
        kind = _misread(SHAPES.index(shape.kind), len(SHAPES), knobs.shape_error, rng)
        for cell in covered_cells(shape):
            row, column = _moved(cell, rng) if rng.random() < knobs.cell_error else cell
            code[row, column, : SLOTS["row"]] = 0.0
            code[row, column, SLOTS["colour"] + colour] = 1.0
            code[row, column, SLOTS["kind"] + kind] = 1.0
            code[row, column, SLOTS["size"] + int(shape.large)] = 1.0
            code[row, column, SLOTS["object"]] = 1.0
    return code.reshape(contract.REGIONS, CODE_SIZE)


def code_to_channels(knobs: SceneKnobs) -> np.ndarray:
    """(CODE_SIZE, 2048) float32: how code values become channels. "blocks": value i fills
    channels i*BLOCK .. (i+1)*BLOCK-1 with 1; "projection": a fixed random direction per
    value with the same energy (CODE_ENERGY)."""
    if knobs.code == "blocks":
        matrix = np.zeros((CODE_SIZE, contract.CHANNELS), dtype=np.float32)
        for value in range(CODE_SIZE):
            matrix[value, value * BLOCK : (value + 1) * BLOCK] = 1.0
        return matrix
    rng = np.random.default_rng([knobs.seed, 0x5CE7E])
    directions = rng.standard_normal((CODE_SIZE, contract.CHANNELS))
    directions *= np.sqrt(CODE_ENERGY) / np.linalg.norm(directions, axis=1, keepdims=True)
    return directions.astype(np.float32)


def write_scene_testbed(out_dir: str | Path, knobs: SceneKnobs, overwrite: bool = False) -> bool:
    """Write the scene-code testbed (dataset.json + features.h5) into `out_dir`; False when it
    was already there, complete."""
    knobs.check()
    demo = demo_scenes(knobs.images, knobs.seed)
    extra = demo_scenes(knobs.extra_test, [knobs.seed, 1]) if knobs.extra_test else None
    names, scenes, captions, splits = demo.names, demo.scenes, demo.captions, demo.splits
    if extra is not None:
        names = names + [f"test_{i:05d}.jpg" for i in range(knobs.extra_test)]
        scenes, captions = scenes + extra.scenes, captions + extra.captions
        splits = splits + ["test"] * knobs.extra_test
    channels = code_to_channels(knobs)  # (CODE_SIZE, 2048)

    def grids(start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, contract.REGIONS, contract.CHANNELS), dtype=np.float32)
        for i in range(start, stop):
            rng = np.random.default_rng([knobs.seed, i])
            code = scene_code(scenes[i], knobs, rng)  # (49, CODE_SIZE)
            noise = rng.standard_normal((contract.REGIONS, contract.CHANNELS), np.float32)
            out[i - start] = code @ channels + knobs.noise * noise
        return out  # (n, 49, 2048)

    return write_testbed(
        Path(out_dir),
        "scene",
        asdict(knobs),
        names,
        captions,
        splits,
        grids,
        overwrite,
    )
