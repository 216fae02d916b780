"""Self-critical training's reward: exactness against pycocoevalcap, speed, share of a step.

    .venv/bin/python -m benchmarks.scst [--images 600] [--xe-epochs 2]

Data: `--images` demo images (`generate_demo_data`, seed 0), grids extracted once as
`captioner extract` does with configs/demo.toml (random-init ResNet50), a cross-entropy run of
configs/demo.toml (`--xe-epochs`) to sample captions from, all kept under demo/bench-scst/
(git-ignored) and reused by later runs. Then:

1. `reward_equals_pycocoevalcap`: 32 train images x 5 captions sampled from the XE model, scored
   by `CiderD` built from the same 160 reference sets as pycocoevalcap's `Cider` sees: max
   per-caption difference <= 1e-6 (and the means).
2. `reward_speedup_vs_pycocoevalcap`: time of pycocoevalcap's `Cider` on that batch (it
   recomputes document frequencies and reference vectors every call) over the time of the
   SCST reward (`CaptionReward`: df and reference vectors of the whole train split computed
   once, before timing). Best of 5 each, alternating.
3. `reward_share_of_step`: reward time / the whole SCST step (sampling, reward, backward,
   Adam) at 32 images x 5 samples with the demo decoder, median of 5 steps.
Prints the three, then one line of JSON. What SCST gains is measured by `make quality`
(benchmarks/quality.py: `captioner sweep` on the testbeds, several seeds, paired intervals).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import torch
from pycocoevalcap.cider.cider import Cider

from benchmarks.common import REPO, DemoCache, alternate, demo_cache, timed, train_demo
from pipeline import output
from pipeline.dataset.batches import build_split
from pipeline.dataset.experiment import load_experiment_data
from pipeline.decoder.checkpoint import load_checkpoint, load_model
from pipeline.decoder.sample import sample_captions
from pipeline.metrics.cider import CiderD
from pipeline.metrics.coco import simple_tokenize
from pipeline.train import scst

ROOT = REPO / "demo" / "bench-scst"
SCST_CONFIG = REPO / "configs" / "demo-scst.toml"
BATCH_IMAGES = 32


def prepare_xe(images: int, xe_epochs: int) -> tuple[DemoCache, Path]:
    """Demo data, its cache and a finished XE run (each reused when already there)."""
    cache, _, _ = demo_cache(ROOT / f"n{images}", images)
    run = cache.runs / f"xe-{xe_epochs}"
    if (
        not (run / "best.pt").is_file()
        or load_checkpoint(run / "last.pt")["state"]["epoch"] < xe_epochs
    ):
        shutil.rmtree(run, ignore_errors=True)
        train_demo(cache, run.name, f"train.epochs={xe_epochs}")
    return cache, run


def reward_measures(cache: DemoCache, run: Path) -> dict:
    """Exactness, speed vs pycocoevalcap and share of an SCST step, on sampled captions."""
    config = cache.config(base=SCST_CONFIG)
    loaded = load_model(run / "best.pt", torch.device("cpu"))
    vocab = loaded.vocab
    payload = load_checkpoint(run / "best.pt")
    with output.quiet():
        data = load_experiment_data(config, loaded.features, saved_splits=payload.get("splits"))
    split = build_split(data.frame, "train", vocab, config.vocab.max_len, data.row_of)
    self_critical = scst.build_scst(config, split.references, vocab)
    images = np.arange(BATCH_IMAGES)
    features = torch.from_numpy(data.store.read(split.image_rows[images]))  # (32, 49, 2048)
    k = config.scst.samples
    with torch.no_grad():
        samples = sample_captions(
            loaded.model,
            features,
            vocab.sos,
            vocab.eos,
            vocab.pad,
            k,
            config.scst.max_len + 1,
            self_critical.suppress,
            torch.Generator().manual_seed(0),
        )
    tokens = samples.tokens.numpy()  # (160, T)
    owners = np.repeat(images, k)  # (160,)
    texts = [vocab.decode(row) for row in tokens]
    refs = [split.references[i] for i in owners]
    gts = {i: [simple_tokenize(r) for r in refs[i]] for i in range(len(texts))}
    res = {i: [simple_tokenize(t)] for i in range(len(texts)) for t in [texts[i]]}
    _, expected = Cider().compute_score(gts, res)
    same_df = CiderD(refs).score_texts(range(len(texts)), texts)
    difference = float(np.abs(same_df - expected).max())
    runs = alternate(
        {
            "ours": lambda _: timed(lambda: self_critical.reward(owners, tokens))[0],
            # references tokenized once, before: not timed
            "theirs": lambda _: timed(lambda: Cider().compute_score(gts, res))[0],
        },
        5,
    )
    ours, theirs = runs["ours"], runs["theirs"]
    share = step_share(loaded.model, features, images, self_critical, vocab)
    return {
        "reward_equals_pycocoevalcap": difference <= 1e-6
        and abs(float(same_df.mean()) - float(expected.mean())) <= 1e-6,
        "reward_max_abs_difference": difference,
        "reward_ms": 1000 * min(ours),
        "pycocoevalcap_ms": 1000 * min(theirs),
        "reward_speedup_vs_pycocoevalcap": min(theirs) / min(ours),
        **share,
    }


def step_share(
    model: torch.nn.Module,
    features: torch.Tensor,
    images: np.ndarray,
    self_critical: scst.Scst,
    vocab,
) -> dict:
    """Median over 5 SCST steps of reward time / step time (the step's own reward call)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    model.train()
    generator = torch.Generator().manual_seed(1)
    reward, rewarded = self_critical.reward, []

    def timed_reward(*args):
        seconds, out = timed(lambda: reward(*args))
        rewarded[-1] += seconds
        return out

    self_critical.reward = timed_reward
    shares, steps = [], []

    def step() -> None:
        loss, _ = scst.scst_loss(model, features, images, self_critical, vocab, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(5):
        rewarded.append(0.0)
        steps.append(timed(step)[0])
        shares.append(rewarded[-1] / steps[-1])
    self_critical.reward = reward
    return {
        "reward_share_of_step": statistics.median(shares),
        "scst_step_s": statistics.median(steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--xe-epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    seconds, measured = timed(lambda: reward_measures(*prepare_xe(args.images, args.xe_epochs)))
    result = {
        **measured,
        "images": args.images,
        "xe_epochs": args.xe_epochs,
        "total_seconds": seconds,
    }
    print(
        f"reward equals pycocoevalcap: {result['reward_equals_pycocoevalcap']} "
        f"(max |diff| {result['reward_max_abs_difference']:.2e})"
    )
    print(
        f"reward: {result['reward_ms']:.2f} ms vs pycocoevalcap {result['pycocoevalcap_ms']:.1f}"
        f" ms for 32 x 5 captions: {result['reward_speedup_vs_pycocoevalcap']:.1f}x "
        "(target >= 10)"
    )
    print(
        f"reward share of an SCST step: {result['reward_share_of_step']:.4f} "
        f"(step {result['scst_step_s']:.2f} s; target <= 0.25)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
