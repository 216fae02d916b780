"""Batched beam search vs a loop over single images, for both decoder kinds, and the
Transformer's key/value cache vs re-running the whole prefix at every step. One run.

    .venv/bin/python -m benchmarks.decode [--images 64] [--beam 3] [--max-len 20] [--threads 2]

Decoders of realistic size (vocab 3000, width 512, random weights, eval mode) decode random
(49, 2048) grids: the LSTM (embed/hidden/attention 512, additive attention) and the
Transformer (3 layers, 8 heads, ff 2048: the Flickr30k config). A random model would end
captions at arbitrary points, so <eos> is suppressed: every image runs exactly max_len steps in
every mode and all modes do equal work. "uncached" is `PrefixRecompute`: each step re-runs
the Transformer over the whole prefix, as a decoder without a cache must. Prints a table,
then one line of JSON.
"""

import argparse
import json

import torch

from benchmarks.common import alternate, timed
from pipeline.config import ModelConfig
from pipeline.decoder.decode import beam_search
from pipeline.decoder.lstm import CaptionDecoder
from pipeline.decoder.transformer import PrefixRecompute, TransformerDecoder
from pipeline.decoder.vocab import SPECIALS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="best of N timings per mode")
    return parser.parse_args()


def best_seconds(runs: dict, repeats: int) -> dict[str, float]:
    """Each mode's best wall time of `repeats` calls (alternated), in seconds."""
    timings = alternate(
        {mode: lambda _, run=run: timed(run)[0] for mode, run in runs.items()}, repeats
    )
    return {mode: min(values) for mode, values in timings.items()}


def build_models(vocab: int) -> dict[str, torch.nn.Module]:
    """The two kinds at Flickr30k size, random weights, eval mode."""
    torch.manual_seed(0)
    lstm = ModelConfig(
        kind="lstm", attention="additive", embed_dim=512, hidden_dim=512, attention_dim=512
    )
    transformer = ModelConfig(kind="transformer", embed_dim=512, layers=3, heads=8, ff_dim=2048)
    return {
        "lstm": CaptionDecoder(vocab, lstm).eval(),
        "transformer": TransformerDecoder(vocab, transformer).eval(),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    models = build_models(args.vocab)
    features = torch.randn(args.images, 49, 2048).half()  # (N, 49, 2048) as cached
    specials = {token: index for index, token in enumerate(SPECIALS)}
    options = dict(
        sos=specials["<sos>"],
        eos=specials["<eos>"],
        beam_size=args.beam,
        max_len=args.max_len,
        suppress=tuple(specials.values()),
    )

    def batched(model):
        return beam_search(model, features, **options)

    def one_by_one(model):
        return [beam_search(model, features[i : i + 1], **options)[0] for i in range(args.images)]

    result = {
        "images": args.images,
        "beam_size": args.beam,
        "max_len": args.max_len,
        "vocab": args.vocab,
        "threads": args.threads,
        "torch": torch.__version__,
    }
    rows = []
    for kind, model in models.items():
        reference = [d.tokens for d in batched(model)]  # also the warm-up
        assert all(len(tokens) == args.max_len for tokens in reference)  # equal work
        same = reference == [d.tokens for d in one_by_one(model)]
        runs = {"batched": lambda m=model: batched(m), "loop": lambda m=model: one_by_one(m)}
        if kind == "transformer":
            uncached = PrefixRecompute(model)
            same_cache = reference == [d.tokens for d in batched(uncached)]
            runs["uncached"] = lambda m=uncached: batched(m)
        seconds = best_seconds(runs, args.repeats)
        if kind == "transformer":
            result["speedup_kv_cache"] = round(seconds["uncached"] / seconds["batched"], 2)
            result["same_captions_kv_cache"] = same_cache
        suffix = "" if kind == "lstm" else f"_{kind}"  # the LSTM keeps the historical keys
        result[f"images_per_s{suffix}"] = round(args.images / seconds["batched"], 2)
        result[f"images_per_s_loop{suffix}"] = round(args.images / seconds["loop"], 2)
        result[f"speedup_batched_beam{suffix}"] = round(seconds["loop"] / seconds["batched"], 2)
        result[f"same_captions{suffix}"] = same
        rows += [(kind, mode, s) for mode, s in seconds.items()]

    print(
        f"beam search, k={args.beam}, max_len={args.max_len} (<eos> suppressed), "
        f"vocab {args.vocab}, {args.images} images, {args.threads} threads, CPU, "
        f"best of {args.repeats}"
    )
    print(f"{'decoder':<13}{'mode':<34}{'seconds':>10}{'images/s':>12}")
    labels = {
        "batched": "batched (B*k rows)",
        "loop": "loop, one image",
        "uncached": "batched, no cache (prefix re-run)",
    }
    for kind, mode, seconds in rows:
        print(f"{kind:<13}{labels[mode]:<34}{seconds:>10.3f}{args.images / seconds:>12.2f}")
    print(
        f"batched beam speedup: LSTM {result['speedup_batched_beam']:.2f}x, Transformer "
        f"{result['speedup_batched_beam_transformer']:.2f}x; Transformer key/value cache "
        f"{result['speedup_kv_cache']:.2f}x; same captions: {result['same_captions']}, "
        f"{result['same_captions_transformer']}, {result['same_captions_kv_cache']}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
