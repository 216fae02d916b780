"""Decode health: the signs of degenerate decoding, measured on one split's predictions.

A model that collapsed to one caption, loops on a word, or never emits <eos> can still get a
non-trivial corpus score; these numbers show it at a glance. Each check has a threshold
(THRESHOLDS); `flags` names the checks that crossed it, with a sentence for the report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from pipeline.captions.text import tokenize
from pipeline.config import DEFAULT_TOKENIZER

TOP_REPEATED = 5  # most repeated captions listed
# (check, limit, direction, message): flagged when the value is above ("max") / below ("min")
THRESHOLDS = (
    ("top_caption_share", 0.25, "max", "one caption is given to {:.0%} of the images"),
    ("unfinished_share", 0.05, "max", "{:.0%} of the captions hit the max length without <eos>"),
    # Small caption spaces (the demo: shapes x colours x places) give healthy models ~45%.
    ("distinct_share", 0.2, "min", "only {:.0%} of the captions are distinct"),
    ("repetition_share", 0.1, "max", "{:.0%} of the captions repeat a word or a bigram"),
    ("length_ratio", 0.67, "min", "predictions are {:.2f}x as long as the references"),
    ("length_ratio", 1.5, "max", "predictions are {:.2f}x as long as the references"),
)


@dataclass
class DecodeHealth:
    """Health numbers of one split's predictions (shares are 0-1)."""

    images: int
    unfinished_share: float  # hit the max length without <eos>
    distinct_share: float  # distinct captions / images
    top_repeated: list[tuple[str, int]]  # most repeated captions (count > 1), most first
    top_caption_share: float  # share of images given the most frequent caption (0: all differ)
    mean_length: float  # words per prediction
    mean_reference_length: float  # words per reference caption
    length_ratio: float  # mean_length / mean_reference_length
    vocabulary_used: int  # distinct words in the predictions
    vocabulary_size: int  # words the model can emit (specials excluded)
    repetition_share: float  # with a word said twice in a row or a bigram said twice
    flags: dict[str, str] = field(default_factory=dict)  # check -> why it looks degenerate

    def to_json(self) -> dict:
        """Plain types for metrics.json."""
        out = asdict(self)
        out["top_repeated"] = [[caption, count] for caption, count in self.top_repeated]
        return out


def has_repetition(words: list[str]) -> bool:
    """True if a word follows itself ("a a") or a bigram occurs twice."""
    if any(a == b for a, b in zip(words, words[1:], strict=False)):
        return True
    bigrams = list(zip(words, words[1:], strict=False))
    return len(set(bigrams)) < len(bigrams)


def decode_health(
    captions: list[str],
    finished: list[bool],
    references: list[list[str]],
    vocabulary_size: int,
    tokenizer: str = DEFAULT_TOKENIZER,
) -> DecodeHealth:
    """Measure `captions` (one per image, with whether each ended in <eos>) and flag problems;
    words are the run's `tokenizer`'s tokens (characters for a Chinese run)."""
    n = len(captions)
    if n == 0 or len(finished) != n or len(references) != n:
        raise ValueError(
            "decode_health needs one caption, one finished flag and one "
            "reference list per image, and at least one image"
        )
    words = [tokenize(c, tokenizer) for c in captions]
    reference_words = [tokenize(r, tokenizer) for refs in references for r in refs]
    counts = Counter(captions)
    top_count = counts.most_common(1)[0][1]
    mean_length = sum(map(len, words)) / n
    mean_reference = sum(map(len, reference_words)) / max(len(reference_words), 1)
    health = DecodeHealth(
        images=n,
        unfinished_share=sum(not f for f in finished) / n,
        distinct_share=len(counts) / n,
        top_repeated=[(c, k) for c, k in counts.most_common(TOP_REPEATED) if k > 1],
        top_caption_share=top_count / n if top_count > 1 else 0.0,
        mean_length=mean_length,
        mean_reference_length=mean_reference,
        length_ratio=mean_length / mean_reference if mean_reference else 0.0,
        vocabulary_used=len({w for ws in words for w in ws}),
        vocabulary_size=vocabulary_size,
        repetition_share=sum(has_repetition(ws) for ws in words) / n,
    )
    health.flags = health_flags(health)
    return health


def health_flags(health: DecodeHealth) -> dict[str, str]:
    """check -> a sentence, for each check past its threshold in THRESHOLDS."""
    flags = {}
    for check, limit, direction, message in THRESHOLDS:
        value = getattr(health, check)
        if (value > limit) if direction == "max" else (value < limit):
            flags[check] = message.format(value)
    return flags
