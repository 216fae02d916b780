"""Which inputs this process captions, batch by batch: its torchrun share, each image once,
none that its output already holds.

An image is known by `image_key`: a 16-byte blake2b digest of its normalised name
(`os.path.normpath`: `./a.jpg` and `a.jpg` are one image; relative paths are relative to the
folder the command runs in). Only digests are kept, about 70 bytes per image: the one thing
that grows with the number of images (resuming a million-image output holds ~70 MB).

Under torchrun, rank r takes the images whose key's first 8 bytes are r modulo the number of
ranks: deterministic whatever the order, balanced, and every copy of a duplicate goes to the
same rank. The key's last 8 bytes are the image's `sample_priority` (the HTML gallery shows
the images with the lowest), independent of the share.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePath

from pipeline.infer.caption_sources import Input

KEY_BYTES = 16
SHARE_BYTES = 8  # the key's first bytes pick the rank, the others are the sample priority


def image_key(image: str) -> bytes:
    """The 16-byte identity of an image name (its normalised path)."""
    name = os.path.normpath(image).encode("utf-8", "surrogateescape")
    return hashlib.blake2b(name, digest_size=KEY_BYTES).digest()


def rank_of(key: bytes, world_size: int) -> int:
    """The rank that captions the image with this key."""
    return int.from_bytes(key[:SHARE_BYTES], "big") % world_size


def sample_priority(key: bytes) -> int:
    """A fixed pseudo-random number per image: the gallery keeps the lowest ones."""
    return int.from_bytes(key[SHARE_BYTES:], "big")


class Stems:
    """Attention-map file stems in input order: the image's file stem, or STEM-2, STEM-3...
    when an earlier input had the same one (the same input sequence gives the same names)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def next(self, image: str) -> str:
        """The stem for the next input, `image`."""
        base = PurePath(image).stem
        stem, n = base, 1
        while stem in self.used:
            n += 1
            stem = f"{base}-{n}"
        self.used.add(stem)
        return stem


@dataclass
class Planner:
    """Filters an input sequence down to this rank's images still to caption."""

    done: set[bytes]  # keys of the images the output already holds (this rank's share)
    rank: int = 0
    world_size: int = 1
    stems: bool = False  # give each input its attention-map stem
    seen: set[bytes] = field(default_factory=set)
    already: int = 0  # inputs skipped: already in the output
    duplicates: int = 0  # inputs skipped: listed before in this run

    def plan(self, inputs: Iterable[Input]) -> Iterator[Input]:
        """This rank's inputs to caption, each image once, with its index (and stem)."""
        for item, key in self._mine(inputs):
            if key in self.done:
                self.already += 1
            elif key in self.seen:
                self.duplicates += 1
            else:
                self.seen.add(key)
                yield item

    def preview(self, inputs: Iterable[Input]) -> Iterator[Input]:
        """What `plan` would give, duplicates included, recording nothing (to count them)."""
        return (item for item, key in self._mine(inputs) if key not in self.done)

    def batches(self, inputs: Iterable[Input], size: int) -> Iterator[list[Input]]:
        """`plan`'s inputs in lists of `size` (the last one shorter)."""
        batch: list[Input] = []
        for item in self.plan(inputs):
            batch.append(item)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _mine(self, inputs: Iterable[Input]) -> Iterator[tuple[Input, bytes]]:
        """(input with index and stem, key) for the inputs of this rank's share."""
        stems = Stems() if self.stems else None
        for index, item in enumerate(inputs):
            stem = stems.next(item.image) if stems else ""
            key = image_key(item.image)
            if rank_of(key, self.world_size) == self.rank:
                yield item._replace(index=index, stem=stem), key
