"""`caption --attention-dir DIR` and `caption --html PAGE`: what the decoder looked at.

- `--attention-dir`: STEM.png (the image, then one tile per word) and STEM.npy ((T, R)
  float32: one weight per region, ResNet50's 49) for every captioned image, stems in input
  order (`caption_plan.Stems`). A batch's names are claimed together before its lines are written (OutputFolder: a file captioner
  did not write is refused). Two files per image: meant for hundreds of images, not millions.
- `--html`: one page of at most `limit` cards of this run's images: those with the lowest
  `sample_priority`, a fixed pseudo-random sample whatever the input order, the batch size or
  the torchrun split, shown in input order. Only those cards are held in memory; under
  torchrun each rank keeps its own and rank 0 merges them.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from pathlib import Path

from PIL import Image

from pipeline import distributed
from pipeline.decoder.decode import Decoded
from pipeline.decoder.vocab import Vocabulary
from pipeline.distributed import DistInfo
from pipeline.extract.images import DEFAULT
from pipeline.infer.attention_maps import attention_npy, attention_png
from pipeline.infer.caption_plan import Stems, image_key, sample_priority
from pipeline.infer.caption_sources import Input
from pipeline.infer.files import OutputFolder
from pipeline.infer.gallery import NEUTRAL, Card
from pipeline.infer.report import caption_report

Crop = Callable[[], Image.Image | None]  # the crop the CNN saw (224 x 224), made on demand


class GallerySample:
    """The `limit` offered cards with the lowest priority."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.heap: list[tuple[int, int, Card]] = []  # (-priority, index, card): max-heap

    def wants(self, priority: int) -> bool:
        """Whether a card of this priority would be kept."""
        return len(self.heap) < self.limit or (self.limit > 0 and -self.heap[0][0] > priority)

    def add(self, priority: int, index: int, card: Card) -> None:
        """Keep the card (dropping the highest-priority one if full); call when `wants`."""
        if len(self.heap) < self.limit:
            heapq.heappush(self.heap, (-priority, index, card))
        else:
            heapq.heapreplace(self.heap, (-priority, index, card))

    def entries(self) -> list[tuple[int, int, Card]]:
        """(priority, input index, card) of every kept card."""
        return [(-negated, index, card) for negated, index, card in self.heap]


def merge_samples(samples: list[list[tuple[int, int, Card]]], limit: int) -> list[Card]:
    """The `limit` lowest-priority cards of several samples, in input order."""
    lowest = sorted((entry for sample in samples for entry in sample), key=lambda e: e[:2])
    return [card for _, _, card in sorted(lowest[:limit], key=lambda e: e[1])]


class Pictures:
    """The attention maps and the gallery page of one run (either may be off)."""

    def __init__(self, attention_dir: Path | None, html_path: Path | None, html_limit: int) -> None:
        self.maps = OutputFolder(attention_dir) if attention_dir is not None else None
        self.html_path = html_path
        self.page = OutputFolder(html_path.parent) if html_path is not None else None
        if self.page:
            self.page.check(html_path.name)
        self.sample = GallerySample(html_limit) if html_path is not None else None
        self.captioned = 0

    @property
    def stems(self) -> bool:
        """Whether inputs need attention-map stems."""
        return self.maps is not None

    def check(self, inputs: Iterable[Input]) -> None:
        """UserError now if an input's maps would replace a file captioner did not write."""
        if not self.maps:
            return
        stems = Stems()
        for item in inputs:
            stem = stems.next(item.image)
            self.maps.check(f"{stem}.png")
            self.maps.check(f"{stem}.npy")

    def add(
        self,
        captioned: list[tuple[Input, Decoded, Crop]],
        vocab: Vocabulary,
        class_token: bool = False,
    ) -> None:
        """Draw a batch's attention maps and offer its cards to the gallery (`class_token`:
        the attention's last region is a class token, left out of the maps)."""
        self.captioned += len(captioned)
        if self.maps and captioned:
            self.maps.claim([f"{i.stem}.{ext}" for i, _, _ in captioned for ext in ("png", "npy")])
        for item, decoded, crop in captioned:
            priority = sample_priority(image_key(item.image))
            kept = self.sample is not None and self.sample.wants(priority)
            if not kept and not self.maps:
                continue
            words = [vocab.itos[t] for t in decoded.tokens]
            image = crop()
            if kept:
                caption = vocab.decode(decoded.tokens)
                card = Card(
                    item.image, caption, words, decoded.attention, image, class_token=class_token
                )
                self.sample.add(priority, item.index, card)
            if self.maps:
                self._draw(item.stem, image, words, decoded, class_token)

    def _draw(
        self,
        stem: str,
        image: Image.Image | None,
        words: list[str],
        decoded: Decoded,
        class_token: bool,
    ) -> None:
        """STEM.png over the crop (a neutral square without one) and STEM.npy."""
        image = image or Image.new("RGB", (DEFAULT.crop, DEFAULT.crop), NEUTRAL)
        png = attention_png(image, words, decoded.attention, class_token=class_token)
        self.maps.write_bytes(f"{stem}.png", png)
        self.maps.write_bytes(f"{stem}.npy", attention_npy(decoded.attention, class_token))

    def gather(self, dist: DistInfo) -> tuple[list, int]:
        """Every rank's sample and count of captioned images (a collective; rank 0 uses it)."""
        entries = self.sample.entries() if self.sample is not None else []
        samples = distributed.all_gather(entries, dist)
        return samples, sum(distributed.all_gather(self.captioned, dist))

    def write_page(self, gathered: tuple[list, int], checkpoint: str, beam_size: int):
        """Write the page from `gather`'s samples; its path, or None without --html."""
        if self.sample is None:
            return None
        samples, captioned = gathered
        cards = merge_samples(samples, self.sample.limit)
        html = caption_report(cards, checkpoint, beam_size, captioned)
        return self.page.write_text(self.html_path.name, html)
