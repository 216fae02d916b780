"""Embedded demo data: coloured shapes on muted backgrounds with five true captions each.

The images are built so that a captioner fed RANDOM-INIT ResNet50 grids can still learn
something: captions talk mostly about colour and position (which survive random conv
features), shapes are large (40-72 px on 224, several 7x7 cells) and sit in the cells of
a 3x3 layout, never overlapping. Output goes through the same readers as real data: a
Kaggle-Flickr30k `results.csv` and a Karpathy-style `dataset.json` with 80/10/10 splits.
Everything is drawn from one `numpy.random.default_rng(seed)`: same seed, same bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.atomic import write_text_atomic
from pipeline.capacity import DISK_FULL, require_space
from pipeline.captions.demo_grammar import (
    ENGLISH,
    Grammar,
    Phrase,
    clauses,
    column_where,
    count,
    demo_grammar,
    inventory,
    noun,
    relation,
    row_where,
    sentence,
    where,
)
from pipeline.captions.text import tokenize
from pipeline.config import DEFAULT_LANGUAGE, DEFAULT_TOKENIZER
from pipeline.errors import UserError

COLOURS = {  # well separated in hue and lightness, none close to the muted backgrounds
    "red": (215, 35, 35),
    "green": (40, 170, 60),
    "blue": (35, 75, 215),
    "yellow": (245, 215, 30),
    "purple": (140, 45, 175),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
CAPTIONS_PER_IMAGE = 5
IMAGE_SIZE = 224  # pixels per side of a demo image
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train, val, test
LOCATIONS = 2  # phrases per 3x3 cell in every grammar (demo_grammar.Grammar.where)
JPEG_BYTES_PER_PIXEL = 0.25  # bound on a demo JPEG's size (quality 90: at most 0.23 measured)
CAPTION_BYTES_PER_IMAGE = 4096  # bound on an image's share of dataset.json + results.csv


@dataclass(frozen=True)
class Shape:
    """One drawn shape: what it is, its 3x3 cell, and its pixel box (centre, half side)."""

    colour: str
    kind: str
    large: bool
    row: int
    column: int
    cx: float
    cy: float
    half: float

    def noun(self, det: str | int = "a", sized: bool = False) -> Phrase:
        """ "a red circle"; `sized`: "a large red circle"."""
        size = ("large" if self.large else "small") if sized else ""
        return noun(self.colour, self.kind, det, size)

    def shape_noun(self) -> Phrase:
        """ "a red shape" """
        return noun(self.colour, "shape")

    def where(self, variant: int) -> Phrase:
        """One of the `LOCATIONS` phrases true for a shape centred in its cell."""
        return where(self.row, self.column, variant)


def _sample_scene(rng: np.random.Generator, size: int) -> list[Shape]:
    """1-3 shapes in distinct cells of a 3x3 layout, boxes never overlapping.

    The first shape is the largest (the "dominant" one). With two or more shapes the
    second sometimes repeats the first's colour and kind, so counts ("two red circles")
    occur in captions.
    """
    n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    cells = rng.choice(9, size=n, replace=False)
    large = np.sort(rng.random(n) < 0.5)[::-1]  # large shapes first
    colours = rng.choice(len(COLOURS), size=n)
    kinds = rng.choice(len(SHAPES), size=n)
    if n >= 2 and rng.random() < 0.3:
        colours[1], kinds[1], large[1] = colours[0], kinds[0], large[0]
    halves = np.where(large, rng.uniform(0.14, 0.16, n), rng.uniform(0.09, 0.115, n)) * size
    halves[0] = halves.max()
    pitch = size / 3
    for _ in range(20):
        jitter = rng.uniform(-0.05, 0.05, size=(n, 2)) * size
        boxes = _place(cells, halves, jitter, pitch, size)
        if not _overlapping(boxes):
            break
    else:
        boxes = _place(cells, halves, np.zeros((n, 2)), pitch, size)
    names = list(COLOURS)
    return [
        Shape(
            names[colours[i]],
            SHAPES[kinds[i]],
            bool(large[i]),
            int(cells[i] // 3),
            int(cells[i] % 3),
            *boxes[i],
        )
        for i in range(n)
    ]


def _place(
    cells: np.ndarray, halves: np.ndarray, jitter: np.ndarray, pitch: float, size: int
) -> list[tuple[float, float, float]]:
    """(cx, cy, half) per shape: its cell centre plus jitter, clamped inside the image."""
    boxes = []
    for cell, half, (dx, dy) in zip(cells, halves, jitter, strict=True):
        cx = (cell % 3 + 0.5) * pitch + dx
        cy = (cell // 3 + 0.5) * pitch + dy
        cx = float(np.clip(cx, half + 2, size - half - 2))
        cy = float(np.clip(cy, half + 2, size - half - 2))
        boxes.append((cx, cy, float(half)))
    return boxes


def _overlapping(boxes: list[tuple[float, float, float]], gap: float = 3.0) -> bool:
    for i, (xa, ya, ha) in enumerate(boxes):
        for xb, yb, hb in boxes[i + 1 :]:
            if abs(xa - xb) < ha + hb + gap and abs(ya - yb) < ha + hb + gap:
                return True
    return False


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted (low-saturation, mid-lightness) colour with a gentle gradient and noise."""
    grey = rng.uniform(95, 165)
    tint = rng.uniform(-22, 22, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-1.0, 1.0, size)
    gradient = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]  # (H, W)
    amplitude = rng.uniform(0, 22)
    noise = rng.normal(0.0, rng.uniform(0, 6), size=(size, size, 3))
    pixels = grey + tint + amplitude * gradient[:, :, None] + noise  # (H, W, 3)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _draw(scene: list[Shape], background: np.ndarray) -> Image.Image:
    image = Image.fromarray(background)
    pen = ImageDraw.Draw(image)
    for shape in scene:
        x, y, h = shape.cx, shape.cy, shape.half
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            pen.ellipse((x - h, y - h, x + h, y + h), fill=fill)
        elif shape.kind == "square":
            pen.rectangle((x - h, y - h, x + h, y + h), fill=fill)
        else:
            pen.polygon([(x, y - h), (x + h, y + h), (x - h, y + h)], fill=fill)
    return image


def _inventory(scene: list[Shape]) -> Phrase:
    """'two green triangles and a red circle', left to right."""
    groups: dict[tuple[str, str], int] = {}
    for shape in sorted(scene, key=lambda s: (s.column, s.row)):
        groups[(shape.colour, shape.kind)] = groups.get((shape.colour, shape.kind), 0) + 1
    return inventory([(colour, kind, n) for (colour, kind), n in groups.items()])


def _relations(a: Shape, b: Shape) -> list[str]:
    """Spatial relations that hold from shape a to shape b (demo_grammar.relation names)."""
    found = []
    if a.column != b.column:
        found.append("left" if a.column < b.column else "right")
    if a.row != b.row:
        found.append("above" if a.row < b.row else "below")
    if abs(a.row - b.row) + abs(a.column - b.column) == 1:
        found.append("next")
    return found


def _located_captions(scene: list[Shape], rng: np.random.Generator) -> list[Phrase]:
    """Captions that say where things are (the bulk of every image's five)."""
    out = []
    for shape in scene:
        for variant in range(LOCATIONS):
            sized = bool(rng.random() < 0.4)
            out.append(
                sentence("located", noun=shape.noun(sized=sized), where=shape.where(variant))
            )
            out.append(sentence("located", noun=shape.shape_noun(), where=shape.where(variant)))
    if len(scene) == 1:
        shape = scene[0]
        out.append(sentence("single", noun=shape.noun("single"), where=shape.where(0)))
        out.append(sentence("there_is", noun=shape.noun("one"), where=shape.where(1)))
        return out
    for a in scene:
        for b in scene:
            if a is b or (a.colour, a.kind) == (b.colour, b.kind):
                continue
            for name in _relations(a, b):
                out.append(sentence("relation", a=a.noun(), relation=relation(name), b=b.noun()))
    first, second = scene[0], scene[1]
    out.append(
        clauses(
            sentence("located", noun=first.noun(), where=first.where(0)),
            sentence("located", noun=second.noun(), where=second.where(0)),
        )
    )
    out.append(
        clauses(
            sentence("located", noun=first.shape_noun(), where=first.where(1)),
            sentence("located", noun=second.shape_noun(), where=second.where(1)),
        )
    )
    if len({shape.row for shape in scene}) == 1:
        out.append(sentence("line", inventory=_inventory(scene), where=row_where(first.row)))
    if len({shape.column for shape in scene}) == 1:
        out.append(sentence("line", inventory=_inventory(scene), where=column_where(first.column)))
    return out


def _plain_captions(scene: list[Shape]) -> list[Phrase]:
    """Captions that say what is there, not where."""
    n = len(scene)
    if n == 1:
        return [_inventory(scene), sentence("alone", noun=scene[0].noun("one"))]
    out = [_inventory(scene), sentence("including", count=count(n), noun=scene[0].noun(sized=True))]
    if len({(shape.colour, shape.kind) for shape in scene}) > 1:  # "two shapes: a red ..."
        out.append(sentence("listing", count=count(n), inventory=_inventory(scene)))
    return out


def _distinct(phrases: list[Phrase]) -> dict[str, Phrase]:
    """English text -> phrase, the first of each text (the choice is made on English text
    whatever the language, so every language draws the same random numbers)."""
    found: dict[str, Phrase] = {}
    for phrase in phrases:
        found.setdefault(phrase(ENGLISH), phrase)
    return found


def make_captions(
    scene: list[Shape], rng: np.random.Generator, grammar: Grammar = ENGLISH
) -> list[str]:
    """Five distinct captions true for `scene`, in `grammar`'s language: one about what is
    there, four about where."""
    located = _distinct(_located_captions(scene, rng))
    plain = [
        phrase for text, phrase in _distinct(_plain_captions(scene)).items() if text not in located
    ]
    chosen = [plain[int(rng.integers(len(plain)))]]
    picks = rng.choice(len(located), size=CAPTIONS_PER_IMAGE - 1, replace=False)
    located_phrases = list(located.values())
    chosen += [located_phrases[int(i)] for i in picks]
    order = rng.permutation(CAPTIONS_PER_IMAGE)
    return [chosen[int(i)](grammar) for i in order]


def _split_names(n_images: int, rng: np.random.Generator) -> list[str]:
    """Deterministic ~80/10/10 train/val/test assignment by shuffled image index."""
    n_val = round(SPLIT_FRACTIONS[1] * n_images)
    n_test = round(SPLIT_FRACTIONS[2] * n_images)
    names = ["val"] * n_val + ["test"] * n_test + ["train"] * (n_images - n_val - n_test)
    return [names[int(i)] for i in rng.permutation(n_images)]


def _check_arguments(n_images: int, size: int) -> None:
    if n_images < 1:
        raise UserError(f"--images must be at least 1, got {n_images}")
    if size < 64:
        raise UserError(f"demo image size must be at least 64 pixels, got {size}")


def _check_target(out_dir: Path, overwrite: bool) -> None:
    """A file, or a folder holding anything, is refused unless `overwrite` (a folder)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"cannot write demo data to {out_dir}: it is not a folder")
    if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        raise UserError(
            f"{out_dir} already holds files: demo-data writes only into a new or "
            "empty folder (--overwrite replaces its images/, results.csv and "
            "dataset.json)"
        )


def _check_space(out_dir: Path, n_images: int, size: int) -> None:
    """UserError when `n_images` demo images of `size` px and their captions cannot fit."""
    captions = n_images * CAPTION_BYTES_PER_IMAGE  # dataset.json, the largest file, is less
    images = round(n_images * size * size * JPEG_BYTES_PER_PIXEL)
    require_space(out_dir / "images", images + captions, captions, hint="ask for fewer --images")


def _why(exc: OSError) -> str:
    """An OS error while writing, in a few words."""
    if exc.errno in DISK_FULL:
        return "the disk is full (nothing was kept); free some space or ask for fewer --images"
    return exc.strerror or str(exc)


def _exit_on_sigterm(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_as_exit():
    """Inside the block SIGTERM raises SystemExit (exit 143), so the caller's cleanup runs
    instead of the process vanishing with its temporary folder (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _staging_dir(out_dir: Path, overwrite: bool) -> Path:
    """Where files are written: `out_dir` itself with `overwrite`, else a temp sibling
    renamed into place at the end (a killed run never leaves a half-made folder)."""
    target = out_dir if overwrite else out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if target != out_dir and target.exists():
        shutil.rmtree(target)
    try:
        (target / "images").mkdir(parents=True, exist_ok=overwrite)
    except OSError as error:
        raise UserError(f"cannot write demo data to {out_dir}: {error.strerror}") from None
    return target


def _move_into_place(staging: Path, out_dir: Path) -> None:
    if staging == out_dir:
        return
    try:
        os.rename(staging, out_dir)  # fails if out_dir was filled meanwhile
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"cannot write demo data to {out_dir}: {error.strerror}") from None


def _write_results_csv(path: Path, names: list[str], captions: list[list[str]]) -> None:
    """Kaggle Flickr30k layout: `image_name| comment_number| comment`."""
    lines = ["image_name| comment_number| comment"]
    for name, texts in zip(names, captions, strict=True):
        lines += [f"{name}| {number}| {text}" for number, text in enumerate(texts)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def karpathy_json_text(
    names: list[str],
    captions: list[list[str]],
    splits: list[str],
    dataset: str = "demo",
    language: str = "",
    tokenizer: str = DEFAULT_TOKENIZER,
) -> str:
    """The Karpathy dataset_*.json layout (Flickr style: no filepath, no cocoid) as text;
    sentence tokens by `tokenizer`, and a top-level "language" key when `language` is set."""
    images, sentid = [], 0
    for imgid, (name, texts, split) in enumerate(zip(names, captions, splits, strict=True)):
        sentids = list(range(sentid, sentid + len(texts)))
        sentid += len(texts)
        sentences = [
            {"tokens": tokenize(text, tokenizer), "raw": text, "imgid": imgid, "sentid": number}
            for text, number in zip(texts, sentids, strict=True)
        ]
        images.append(
            {
                "sentids": sentids,
                "imgid": imgid,
                "sentences": sentences,
                "split": split,
                "filename": name,
            }
        )
    data = {"images": images, "dataset": dataset, **({"language": language} if language else {})}
    return json.dumps(data, ensure_ascii=False) + "\n"


def generate_demo_data(
    out_dir: str | Path,
    n_images: int = 1500,
    seed: int = 0,
    size: int = IMAGE_SIZE,
    overwrite: bool = False,
    language: str = DEFAULT_LANGUAGE,
) -> dict:
    """Write `n_images` demo JPEGs (size x size) and their captions under `out_dir`.

    Files: images/demo_00000.jpg..., results.csv (Kaggle Flickr30k layout) and dataset.json
    (Karpathy layout with train/val/test). Captions are in `language` (`GRAMMARS`: the same
    images whatever the language); dataset.json names a language other than English in its
    "language" key (English files stay as they were before languages existed). `out_dir`
    must be new or empty unless `overwrite`. Returns the paths and counts written.
    """
    out_dir = Path(out_dir)
    grammar = demo_grammar(language)
    _check_arguments(n_images, size)
    _check_target(out_dir, overwrite)
    _check_space(out_dir, n_images, size)
    staging = _staging_dir(out_dir, overwrite)
    try:
        with _sigterm_as_exit():
            splits = _write_files(staging, n_images, seed, size, grammar)
    except BaseException as exc:
        if staging != out_dir:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write demo data to {out_dir}: {_why(exc)}") from None
        raise
    _move_into_place(staging, out_dir)
    return {
        "images_dir": str(out_dir / "images"),
        "results_csv": str(out_dir / "results.csv"),
        "dataset_json": str(out_dir / "dataset.json"),
        "images": n_images,
        "captions": n_images * CAPTIONS_PER_IMAGE,
        "splits": {name: splits.count(name) for name in ("train", "val", "test")},
        "language": grammar.language,
        "tokenizer": grammar.tokenizer,
    }


def _write_files(root: Path, n_images: int, seed: int, size: int, grammar: Grammar) -> list[str]:
    """Images, results.csv and dataset.json under `root`; returns the splits."""
    demo = demo_scenes(n_images, seed, size, images_dir=root / "images", grammar=grammar)
    _write_results_csv(root / "results.csv", demo.names, demo.captions)
    language = "" if grammar is ENGLISH else grammar.language
    text = karpathy_json_text(
        demo.names, demo.captions, demo.splits, language=language, tokenizer=grammar.tokenizer
    )
    write_text_atomic(root / "dataset.json", text)
    return demo.splits


@dataclass
class DemoScenes:
    """The demo data set without its pixels: what every image shows and says."""

    names: list[str]  # demo_00000.jpg, ...
    scenes: list[list[Shape]]  # per image: its shapes, the largest first
    captions: list[list[str]]  # per image: its five captions
    splits: list[str]  # per image: train, val or test


def demo_scenes(
    n_images: int,
    seed: int = 0,
    size: int = IMAGE_SIZE,
    images_dir: Path | None = None,
    grammar: Grammar = ENGLISH,
) -> DemoScenes:
    """The scenes, captions (in `grammar`'s language) and splits `generate_demo_data(n_images,
    seed, size)` writes (the same random stream); the JPEGs too when `images_dir` is given."""
    rng = np.random.default_rng(seed)
    width = max(5, len(str(n_images - 1)))
    names, scenes, captions = [], [], []
    for index in range(n_images):
        scene = _sample_scene(rng, size)
        background = _background(rng, size)  # (size, size, 3): drawn either way (same stream)
        name = f"demo_{index:0{width}d}.jpg"
        if images_dir is not None:
            _draw(scene, background).save(images_dir / name, format="JPEG", quality=90)
        names.append(name)
        scenes.append(scene)
        captions.append(make_captions(scene, rng, grammar))
    return DemoScenes(names, scenes, captions, _split_names(n_images, rng))
