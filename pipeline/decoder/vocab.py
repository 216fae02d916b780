"""Vocabulary from train-split captions only (never val/test: that leaks test words)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.captions.text import join_tokens, tokenize
from pipeline.config import DEFAULT_TOKENIZER, LEGACY_KEYS
from pipeline.errors import UserError

PAD, SOS, EOS, UNK = "<pad>", "<sos>", "<eos>", "<unk>"
MOST_FREQUENT = 10  # the words train and inspect show beside a vocabulary's size
SPECIALS = (PAD, SOS, EOS, UNK)


@dataclass
class Vocabulary:
    """word <-> index; `<pad>` is 0, then `<sos>`, `<eos>`, `<unk>`, then words by frequency.

    `tokenizer` (`vocab.tokenizer`, pipeline.captions.text) splits captions into these words and
    joins decoded words back into a caption.
    """

    itos: list[str]
    tokenizer: str = DEFAULT_TOKENIZER

    def __post_init__(self) -> None:
        if tuple(self.itos[:4]) != SPECIALS:
            raise UserError(f"vocabulary must start with {SPECIALS}")
        self.stoi = {word: index for index, word in enumerate(self.itos)}

    @property
    def pad(self) -> int:
        return 0

    @property
    def sos(self) -> int:
        return 1

    @property
    def eos(self) -> int:
        return 2

    @property
    def unk(self) -> int:
        return 3

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, caption: str, max_len: int) -> list[int]:
        """`<sos>` + at most `max_len` word ids + `<eos>`."""
        words = tokenize(caption, self.tokenizer)[:max_len]
        return [self.sos, *(self.stoi.get(w, self.unk) for w in words), self.eos]

    def decode(self, ids: Iterable[int]) -> str:
        """The caption of `ids` (words joined as the tokenizer writes them: no spaces between
        Chinese characters), stopping at `<eos>` and skipping `<sos>`/`<pad>`."""
        words = []
        for index in ids:
            if index == self.eos:
                break
            if index not in (self.pad, self.sos):
                words.append(self.itos[index])
        return join_tokens(words, self.tokenizer)

    def save(self, path: str | Path) -> None:
        """Write `{"itos": [...], "tokenizer": ...}` as JSON (RUN/vocab.json)."""
        saved = {"itos": self.itos, "tokenizer": self.tokenizer}
        Path(path).write_text(json.dumps(saved, ensure_ascii=False), "utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocab.json written by `save` (one without a tokenizer is from before
        vocab.tokenizer existed: `LEGACY_KEYS`'s)."""
        saved = json.loads(Path(path).read_text("utf-8"))
        return cls(saved["itos"], saved.get("tokenizer", LEGACY_KEYS[("vocab", "tokenizer")]))


def build_vocabulary(
    captions: Iterable[str], min_freq: int, tokenizer: str = DEFAULT_TOKENIZER
) -> tuple[Vocabulary, Counter]:
    """Words seen at least `min_freq` times, most frequent first (ties alphabetical)."""
    counts = Counter(word for caption in captions for word in tokenize(caption, tokenizer))
    words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    return Vocabulary([*SPECIALS, *words], tokenizer), counts
