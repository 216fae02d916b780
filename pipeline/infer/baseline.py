"""The image-blind baseline: the most frequent training caption, given to every image.

A captioner that never looks at the images still scores well when the data set is
repetitive; a model should beat this baseline by a clear margin. `evaluate` reports it next
to the model's scores on the same split, and `make demo` prints both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pandas as pd

from pipeline.decoder.vocab import Vocabulary
from pipeline.metrics.coco import CaptionScorer, MetricReport


@dataclass
class Baseline:
    """The blind caption and its scores against the split's references."""

    caption: str
    report: MetricReport


def blind_caption(frame: pd.DataFrame, vocab: Vocabulary, max_len: int) -> str | None:
    """The most frequent training caption as the model would write it (its vocabulary and
    length), or None when the frame has no training captions."""
    train_captions = frame.loc[frame["split"] == "train", "caption"]
    if train_captions.empty:
        return None
    written = Counter(vocab.decode(vocab.encode(c, max_len)) for c in train_captions)
    return written.most_common(1)[0][0]


def baseline_scores(
    frame: pd.DataFrame,
    references: list[list[str]],
    vocab: Vocabulary,
    max_len: int,
    scorer: CaptionScorer,
    language: str,
) -> Baseline | None:
    """Score `blind_caption` for every image of a split (`references`: per image), as the
    model's captions are scored (`language`, the vocabulary's tokenizer)."""
    caption = blind_caption(frame, vocab, max_len)
    if caption is None or not references:
        return None
    keys = [str(i) for i in range(len(references))]
    report = scorer.score(
        dict(zip(keys, references, strict=True)),
        {key: caption for key in keys},
        language,
        vocab.tokenizer,
    )
    return Baseline(caption, report)
