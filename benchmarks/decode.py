"""Batched beam search vs a loop over single images, same `beam_search` function, one run.

    .venv/bin/python benchmarks/decode.py [--images 64] [--beam 3] [--max-len 20] [--threads 2]

A CaptionDecoder of realistic size (vocab 3000, embed/hidden/attention 512, additive attention,
random weights, eval mode) decodes random (49, 2048) grids. A random model would end captions at
arbitrary points, so <eos> is suppressed: every image runs exactly max_len steps in both modes
and the two do equal work. Prints a table, then one line of JSON.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline.config import ModelConfig  # noqa: E402
from pipeline.decoder.decode import beam_search  # noqa: E402
from pipeline.decoder.lstm import CaptionDecoder  # noqa: E402

PAD, SOS, EOS, UNK = 0, 1, 2, 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="best of N timings per mode")
    return parser.parse_args()


def timed(run, repeats: int) -> float:
    """Best wall time of `repeats` calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig(attention="additive", embed_dim=512, hidden_dim=512, attention_dim=512)
    model = CaptionDecoder(args.vocab, config).eval()
    features = torch.randn(args.images, 49, 2048).half()  # (N, 49, 2048) as cached
    options = dict(sos=SOS, eos=EOS, beam_size=args.beam, max_len=args.max_len,
                   suppress=(PAD, SOS, EOS, UNK))

    def batched():
        return beam_search(model, features, **options)

    def one_by_one():
        return [beam_search(model, features[i:i + 1], **options)[0] for i in range(args.images)]

    batched()  # warm-up
    same = [d.tokens for d in batched()] == [d.tokens for d in one_by_one()]
    assert all(len(d.tokens) == args.max_len for d in batched())  # equal work: max_len steps
    seconds_batched = timed(batched, args.repeats)
    seconds_loop = timed(one_by_one, args.repeats)
    result = {
        "images": args.images, "beam_size": args.beam, "max_len": args.max_len,
        "vocab": args.vocab, "threads": args.threads, "torch": torch.__version__,
        "seconds_batched": round(seconds_batched, 3), "seconds_per_image_loop": round(seconds_loop, 3),
        "images_per_s": round(args.images / seconds_batched, 2),
        "images_per_s_loop": round(args.images / seconds_loop, 2),
        "speedup_batched_beam": round(seconds_loop / seconds_batched, 2),
        "same_captions": same,
    }
    print(f"beam search, k={args.beam}, max_len={args.max_len} (<eos> suppressed), "
          f"vocab {args.vocab}, {args.images} images, {args.threads} threads, CPU, "
          f"best of {args.repeats}")
    print(f"{'mode':<22}{'seconds':>10}{'images/s':>12}")
    print(f"{'batched (B*k rows)':<22}{seconds_batched:>10.3f}{result['images_per_s']:>12.2f}")
    print(f"{'loop, one image':<22}{seconds_loop:>10.3f}{result['images_per_s_loop']:>12.2f}")
    print(f"speedup {result['speedup_batched_beam']:.2f}x; same captions: {same}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
