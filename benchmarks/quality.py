"""Caption quality where the features carry information: SCST's gain on both testbeds.

    .venv/bin/python -m benchmarks.quality [--jobs 2] [--seeds 3] [--flickr8k DIR]
                                           [--sweeps scene,language] [--out DIR]
                                           [-- SWEEP OPTIONS]

1. Makes the testbeds when missing (`captioner testbed scene demo/testbeds/scene`, and
   `captioner testbed language demo/testbeds/language --captions DIR/Flickr8k.token.txt`: the
   real Flickr8k captions, `--flickr8k`, default ../shared/data/flickr8k; without them the
   language testbed is skipped, saying why).
2. Runs `captioner sweep configs/sweeps/scene.toml` and `configs/sweeps/language.toml` with
   their default variants: cross-entropy, then SCST from each seed's best.pt, 3 seeds, scored
   on the test split greedy and at beam 3 (a rerun reuses finished runs).
3. Ends with one JSON line: `scst_gain_rel_<testbed>` (SCST's mean test CIDEr at beam 3 over
   its cross-entropy start's, minus 1) and `scst_gain_ci_low_<testbed>` (the low end of its
   95% paired-bootstrap interval over seeds and test images), plus each sweep's summary.
Targets: both gains >= 0.05 with the interval's low end above 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import FLICKR8K, REPO

TESTBEDS = {
    "scene": (REPO / "demo" / "testbeds" / "scene", ["scene"]),
    "language": (REPO / "demo" / "testbeds" / "language", ["language"]),
}
GAIN_VARIANT, START_VARIANT = "scst", "xe"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (sweep --jobs)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--flickr8k", default=str(FLICKR8K))
    parser.add_argument("--sweeps", default="scene,language", help="which testbeds")
    parser.add_argument(
        "--out", help="runs under OUT/sweep-<testbed> (default: each sweep's own, reused)"
    )
    parser.add_argument("extra", nargs="*", help="more `captioner sweep` options, after --")
    return parser.parse_args(argv)


def captioner(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


def ensure_testbed(name: str, flickr8k: Path) -> str | None:
    """Make the testbed if missing (a complete one is left alone); why not, or None."""
    folder, command = TESTBEDS[name]
    if name == "language":
        captions = flickr8k / "Flickr8k.token.txt"
        if not captions.is_file():
            return f"the Flickr8k captions are not at {captions}"
        command = [*command, "--captions", str(captions)]
    subprocess.run(captioner("testbed", *command, str(folder)), cwd=REPO, check=True)
    return None


def run_sweep(name: str, args: argparse.Namespace) -> dict:
    """`captioner sweep configs/sweeps/NAME.toml`, its output shown as it comes; its JSON."""
    command = captioner(
        "sweep", f"configs/sweeps/{name}.toml", "--jobs", str(args.jobs), "--seeds",
        str(args.seeds), *(["--out", f"{args.out}/sweep-{name}"] if args.out else []),
        *args.extra,
    )  # fmt: skip
    last = ""
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            last = line if line.strip() else last
    if process.returncode != 0:
        raise SystemExit(f"sweep {name} failed (exit {process.returncode})")
    return json.loads(last)


def gain(summary: dict) -> tuple[float | None, float | None]:
    """SCST's relative test CIDEr gain over its start at beam 3, and its interval's low end."""
    beam = next(k for k in summary["comparisons"] if k.startswith("beam"))
    versus = summary["comparisons"][beam].get(GAIN_VARIANT)
    if not versus or versus["against"] != START_VARIANT or versus["relative"] is None:
        return None, None
    return versus["relative"], versus["relative_ci"][0]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    line: dict = {"benchmark": "quality", "seeds": args.seeds, "jobs": args.jobs}
    for name in [n.strip() for n in args.sweeps.split(",") if n.strip()]:
        why_not = ensure_testbed(name, Path(args.flickr8k))
        if why_not:
            print(f"skipping the {name} testbed: {why_not}", flush=True)
            line[f"skipped_{name}"] = why_not
            continue
        summary = run_sweep(name, args)
        line[f"scst_gain_rel_{name}"], line[f"scst_gain_ci_low_{name}"] = gain(summary)
        line[f"sweep_{name}"] = summary
    line["minutes"] = round((time.perf_counter() - started) / 60, 1)
    for name in TESTBEDS:
        if f"scst_gain_rel_{name}" in line and line[f"scst_gain_rel_{name}"] is not None:
            low = line[f"scst_gain_ci_low_{name}"]
            print(
                f"{name}: SCST vs its cross-entropy start, test CIDEr beam 3: "
                f"{100 * line[f'scst_gain_rel_{name}']:+.1f}% (95% interval from "
                f"{100 * low:+.1f}%; target >= +5.0% with the low end above 0)"
            )
    print(f"{line['minutes']} min in all")
    print(json.dumps(line))


if __name__ == "__main__":
    main()
