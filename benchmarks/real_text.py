"""Real human captions: our no-Java tokenizer against coco-caption's PTB, our CIDEr-D against
pycocoevalcap's, on the whole Flickr8k caption file.

    .venv/bin/python -m benchmarks.real_text [--flickr8k DIR]

1. `tokens_identical_share`: the share of Flickr8k's 40,460 captions whose tokens from
   `simple_tokenize` (the stand-in used without Java, and by the SCST reward) equal those of
   pycocoevalcap's `PTBTokenizer` (Java); every differing caption is printed.
2. `cider_max_abs_difference`: each image's 5th caption scored against its other 4 by our
   `CiderD` and by pycocoevalcap's `Cider` on the same tokens, all 8,091 five-caption images.
Ends with one JSON line. Needs Java and the Flickr8k captions (DIR, default
../shared/data/flickr8k).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from benchmarks.common import FLICKR8K
from pipeline.metrics.cider import CiderD
from pipeline.metrics.coco import simple_tokenize


def read_token_file(path: Path) -> dict[str, list[str]]:
    """Flickr8k.token.txt: image id -> its captions, in file order."""
    captions: dict[str, list[str]] = defaultdict(list)
    for line in path.read_text(encoding="utf-8").splitlines():
        if "\t" in line:
            key, caption = line.split("\t", 1)
            captions[key.rsplit("#", 1)[0]].append(caption)
    return captions


def tokenizer_agreement(captions: list[str]) -> tuple[int, list[tuple[str, str, str]]]:
    """How many captions get the same tokens from both, and the ones that do not."""
    ptb = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    differing = [
        (caption, ptb[i][0], simple_tokenize(caption))
        for i, caption in enumerate(captions)
        if ptb[i][0] != simple_tokenize(caption)
    ]
    return len(captions) - len(differing), differing


def cider_difference(by_image: dict[str, list[str]]) -> tuple[int, float, float, float]:
    """Images, max |ours - pycocoevalcap|, and both means: 5th caption against the other 4."""
    five = [refs for refs in by_image.values() if len(refs) == 5]
    references, candidates = [refs[:4] for refs in five], [refs[4] for refs in five]
    gts = {i: [simple_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [simple_tokenize(c)] for i, c in enumerate(candidates)}
    _, theirs = Cider().compute_score(gts, res)
    ours = CiderD(references).score_texts(range(len(five)), candidates)
    return len(five), float(np.abs(ours - theirs).max()), float(ours.mean()), float(np.mean(theirs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flickr8k", default=str(FLICKR8K))
    path = Path(parser.parse_args().flickr8k) / "Flickr8k.token.txt"
    if not path.is_file():
        raise SystemExit(f"the Flickr8k captions are not at {path}")
    by_image = read_token_file(path)
    captions = [c for refs in by_image.values() for c in refs]
    same, differing = tokenizer_agreement(captions)
    for caption, ptb, ours in differing:
        print(f"differs: {caption!r}\n  ptb:  {ptb}\n  ours: {ours}")
    images, difference, ours, theirs = cider_difference(by_image)
    share = same / len(captions)
    print(f"tokens identical to PTB: {same:,} of {len(captions):,} captions ({100 * share:.4f}%)")
    print(f"CIDEr-D vs pycocoevalcap on {images:,} images: max |difference| {difference:.2e}")
    print(
        json.dumps(
            {
                "benchmark": "real_text",
                "captions": len(captions),
                "tokens_identical_share": share,
                "tokens_differing": len(differing),
                "cider_images": images,
                "cider_max_abs_difference": difference,
                "cider_mean_ours": ours,
                "cider_mean_pycocoevalcap": theirs,
            }
        )
    )


if __name__ == "__main__":
    main()
