"""Caption quality ablation on the demo cache: recipe variants x seeds, scored on the test split.

    .venv/bin/python benchmarks/quality.py [--seeds 3] [--variants shipped,images,...]
                                          [--jobs 2] [--set section.key=value ...]

Each variant is `configs/demo.toml` (or its own config, e.g. `transformer`) plus a few
`--set`-style overrides (VARIANTS below: adding a variant is one line). Every (variant, seed) trains a fresh run
with `train.seed = seed` through the real trainer (best.pt chosen on val CIDEr, as shipped),
then `evaluate` scores best.pt on the test split greedy and with beam 3 (pycocoevalcap, x100).
The table shows mean ± sample standard deviation over seeds of CIDEr, BLEU-4 and METEOR, the
mean training epoch in seconds, and each variant's greedy CIDEr as a ratio to the `tutorial`
variant's (our re-implementation of sgrvinod's public recipe, the reference point) measured
in the same run. Ends with one JSON line holding every run.

Data: the demo data and its feature cache (`configs/demo.toml`: demo/data, demo/features.h5)
are made once if missing (`demo-data`, then `extract`, which skips a complete file). Runs go
to demo/quality/<timestamp>/<variant>-s<seed>/run (or under --out), logs and scores beside;
an --out holding finished runs of the same recipes reuses them instead of retraining.

Time: one run is 12 demo epochs plus two evaluations. The default is two recipes (`shipped`,
`tutorial`) x 3 seeds = 6 runs; on the project's 2-core CPU (no native bf16) two runs side by
side (--jobs 2, one torch thread each) took 10 minutes, so the default took 32.5 minutes, 2.5
of them extracting the missing demo cache.
Other load on the machine slows everything: epoch seconds compare variants within one run only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.options import add_set_option  # noqa: E402

DEMO_CONFIG = REPO / "configs" / "demo.toml"
REFERENCE = "tutorial"  # the variant every ratio is taken against
BEAM = 3
SHOWN_METRICS = (("CIDEr", "CIDEr"), ("Bleu_4", "BLEU-4"), ("METEOR", "METEOR"))


@dataclass(frozen=True)
class Variant:
    """A recipe: overrides (`section.key=value`) on a config (the base config, --config, if
    None) and what it tests."""

    about: str
    overrides: tuple[str, ...] = ()
    config: str | None = None


TUTORIAL = (
    "model.dropout=0.2",  # the demo budget (the tutorial itself uses 0.5)
    "train.batching=captions",
    "model.attention_activation=relu",
    "model.init=uniform",
    "model.init_state_tanh=false",
    "model.attention_penalty=mean",
    "model.doubly_stochastic=1.0",
)
VARIANTS = {
    "shipped": Variant("configs/demo.toml as shipped"),
    "images": Variant(
        "whole-image batches (all 5 captions of ~13 images per batch of 64)",
        ("train.batching=images",),
    ),
    "penalty-sum": Variant(
        "λ = 1 on the penalty summed over the 49 regions (Xu et al.)",
        ("model.attention_penalty=sum", "model.doubly_stochastic=1.0"),
    ),
    "penalty-mean": Variant(
        "λ = 1 on the penalty averaged over the 49 regions",
        ("model.attention_penalty=mean", "model.doubly_stochastic=1.0"),
    ),
    "no-penalty": Variant("no doubly stochastic penalty (λ = 0)", ("model.doubly_stochastic=0.0",)),
    "former-decoder": Variant(
        "the decoder choices shipped before: tanh attention, tanh on "
        "h0/c0, Xavier embedding and PyTorch's default output layer",
        ("model.attention_activation=tanh", "model.init_state_tanh=true", "model.init=xavier"),
    ),
    "tanh-attention": Variant(
        "tanh in the additive attention", ("model.attention_activation=tanh",)
    ),
    "relu-attention": Variant(
        "ReLU in the additive attention", ("model.attention_activation=relu",)
    ),
    "tanh-h0": Variant("h0, c0 = tanh(Linear(mean grid))", ("model.init_state_tanh=true",)),
    "linear-h0": Variant("h0, c0 = Linear(mean grid), no tanh", ("model.init_state_tanh=false",)),
    "xavier-init": Variant(
        "Xavier embedding, PyTorch default output layer", ("model.init=xavier",)
    ),
    "uniform-init": Variant(
        "embedding and output U(-0.1, 0.1), output bias 0", ("model.init=uniform",)
    ),
    "decay-4x0.5": Variant(
        "learning rate halved every 4 epochs (2e-3, 1e-3, 5e-4)",
        ("train.step_size=4", "train.gamma=0.5"),
    ),
    "decay-6x0.3": Variant(
        "learning rate x0.3 after 6 epochs (2e-3, 6e-4)", ("train.step_size=6", "train.gamma=0.3")
    ),
    "batch-32": Variant(
        "batches of 32 captions (twice the updates per epoch)", ("train.batch_size=32",)
    ),
    "batch-32-e10": Variant(
        "batches of 32 captions, 10 epochs, x0.3 after 7",
        ("train.batch_size=32", "train.epochs=10", "train.step_size=7"),
    ),
    "dropout-0": Variant(
        "no dropout before the output layer (0.2 shipped)", ("model.dropout=0.0",)
    ),
    "lr-4e-3": Variant("Adam learning rate 4e-3 (2e-3 shipped)", ("train.lr=4e-3",)),
    "attention-256": Variant("attention width 256 (128 shipped)", ("model.attention_dim=256",)),
    "transformer": Variant(
        "the Transformer decoder (README, Two decoders)",
        config=str(REPO / "configs" / "demo-transformer.toml"),
    ),
    REFERENCE: Variant(
        "our re-implementation of sgrvinod's tutorial recipe: caption batches, "
        "ReLU attention, U(-0.1, 0.1) init, no tanh on h0/c0, λ = 1 averaged "
        "over regions",
        TUTORIAL,
    ),
}
DEFAULT_VARIANTS = ("shipped", REFERENCE)  # 6 runs; the full ablation: README


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="base config (the demo's)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, from: {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="runs side by side (each gets cores / jobs torch threads)",
    )
    add_set_option(parser, "applied to every variant, first")
    parser.add_argument("--out", default="", help="default demo/quality/<timestamp>")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be >= 1")
    return args


def ensure_cache(config_path: str) -> None:
    """Demo data and features.h5 for the config, made once (extract skips a complete file)."""
    from pipeline.config import load_config
    from pipeline.data.demo_data import generate_demo_data

    config = load_config(config_path)
    if not Path(config.data.captions).is_file():
        generate_demo_data(Path(config.data.captions).parent, n_images=1500, seed=0)
    subprocess.run(
        [sys.executable, "-m", "pipeline", "extract", "--config", config_path],
        check=True,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )


def train_and_score(config_path: str, overrides: list[str], run_dir: str, threads: int) -> dict:
    """One run: train, then score best.pt on the test split, greedy and beam; logs to run_dir.

    A run folder holding result.json for the same config and overrides is reused, not rerun
    (so an interrupted ablation continues where it stopped); any other folder there is replaced.
    """
    import torch

    from pipeline.config import load_config
    from pipeline.decoder.metrics import CaptionScorer
    from pipeline.infer.evaluate import evaluate_checkpoint
    from pipeline.train.trainer import train

    folder = Path(run_dir)
    recipe = {"config": config_path, "overrides": overrides}
    if (folder / "result.json").is_file():
        saved = json.loads((folder / "result.json").read_text("utf-8"))
        if saved["recipe"] == recipe:
            return saved["result"]
    shutil.rmtree(folder, ignore_errors=True)
    torch.set_num_threads(threads)
    folder.mkdir(parents=True)
    run = folder / "run"
    config = load_config(
        config_path, [*overrides, f"train.out_dir={str(folder)!r}", "train.name='run'"]
    )
    started = time.perf_counter()
    with open(folder / "log.txt", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
        train(config)
        with CaptionScorer() as scorer:  # one METEOR start for both evaluations
            scores = {
                beam: evaluate_checkpoint(
                    run / "best.pt",
                    "test",
                    beam,
                    folder / f"eval-beam{beam}",
                    examples=0,
                    scorer=scorer,
                )["scores"]
                for beam in (1, BEAM)
            }
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    result = {
        "greedy": scores[1],
        f"beam{BEAM}": scores[BEAM],
        "epoch_seconds": statistics.mean(h["epoch_seconds"] for h in history),
        "best_epoch": max(history, key=lambda h: h.get("CIDEr", 0))["epoch"],
        "seconds": time.perf_counter() - started,
    }
    (folder / "result.json").write_text(json.dumps({"recipe": recipe, "result": result}), "utf-8")
    return result


def overrides_of(args: argparse.Namespace, name: str, seed: int) -> list[str]:
    return [*args.overrides, *VARIANTS[name].overrides, f"train.seed={seed}"]


def config_of(args: argparse.Namespace, name: str) -> str:
    return VARIANTS[name].config or args.config


def planned_runs(args: argparse.Namespace) -> dict[str, list[tuple[str, int]]]:
    """Distinct resolved configs -> the (variant, seed) pairs they serve, seed-major.

    Variants that resolve to the same config (e.g. `shipped` once it adopts a variant's
    choice) share one training run per seed instead of repeating it.
    """
    from pipeline.config import config_to_dict, load_config

    runs: dict[str, list[tuple[str, int]]] = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name in args.variants:
            config = load_config(config_of(args, name), overrides_of(args, name, seed))
            resolved = config_to_dict(config)
            runs.setdefault(json.dumps(resolved, sort_keys=True), []).append((name, seed))
    return runs


def run_all(args: argparse.Namespace, out: Path) -> list[dict]:
    """Every (variant, seed), `args.jobs` runs at a time; prints each result as it comes."""
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    context = multiprocessing.get_context("spawn")
    results = []
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = {
            pool.submit(
                train_and_score,
                config_of(args, name),
                overrides_of(args, name, seed),
                str(out / f"{name}-s{seed}"),
                threads,
            ): users
            for users in planned_runs(args).values()
            for name, seed in users[:1]
        }
        for future in concurrent.futures.as_completed(futures):
            for name, seed in futures[future]:
                record = {"variant": name, "seed": seed, **future.result()}
                results.append(record)
                print(
                    f"  {name:<16} seed {seed}: CIDEr greedy "
                    f"{100 * record['greedy']['CIDEr']:.1f}  beam{BEAM} "
                    f"{100 * record[f'beam{BEAM}']['CIDEr']:.1f}  (best epoch "
                    f"{record['best_epoch']}, {record['epoch_seconds']:.1f} s/epoch, "
                    f"{record['seconds']:.0f} s)",
                    flush=True,
                )
    return results


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: list[dict], variants: list[str]) -> dict[str, dict]:
    """Per variant: mean/std of each shown metric (x100) per decoding, epoch seconds, seeds."""
    summary = {}
    for name in variants:
        runs = [r for r in results if r["variant"] == name]
        row = {
            "seeds": sorted(r["seed"] for r in runs),
            "epoch_seconds": statistics.mean(r["epoch_seconds"] for r in runs),
        }
        for decoding in ("greedy", f"beam{BEAM}"):
            for key, _ in SHOWN_METRICS:
                values = [r[decoding][key] for r in runs if r[decoding].get(key) is not None]
                row[f"{key}_{decoding}"] = mean_std([100 * v for v in values]) if values else None
        summary[name] = row
    reference = summary.get(REFERENCE)
    for row in summary.values():
        row["cider_vs_tutorial"] = (
            row["CIDEr_greedy"][0] / reference["CIDEr_greedy"][0] if reference else None
        )
    return summary


def print_table(summary: dict[str, dict]) -> None:
    """Markdown table: mean ± std over seeds, x100."""

    def cell(value) -> str:
        return "–" if value is None else f"{value[0]:.1f} ± {value[1]:.1f}"

    columns = [
        f"{label} {decoding}"
        for decoding in ("greedy", f"beam {BEAM}")
        for _, label in SHOWN_METRICS
    ]
    print("| variant | seeds | " + " | ".join(columns) + " | epoch s | CIDEr vs tutorial |")
    print("|---|---|" + "---|" * len(columns) + "---|---|")
    for name, row in summary.items():
        cells = [
            cell(row[f"{key}_{decoding}"])
            for decoding in ("greedy", f"beam{BEAM}")
            for key, _ in SHOWN_METRICS
        ]
        ratio = "–" if row["cider_vs_tutorial"] is None else f"{row['cider_vs_tutorial']:.3f}"
        print(
            f"| {name} | {len(row['seeds'])} | "
            + " | ".join(cells)
            + f" | {row['epoch_seconds']:.1f} | {ratio} |"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = (
        Path(args.out)
        if args.out
        else (REPO / "demo" / "quality" / datetime.now().strftime("%Y%m%d-%H%M%S"))
    )
    started = time.perf_counter()
    ensure_cache(args.config)
    print(
        f"quality ablation: {len(args.variants)} variants x {args.seeds} seeds on "
        f"{args.config}, {args.jobs} jobs, extra overrides {args.overrides or 'none'}; "
        f"runs in {out}",
        flush=True,
    )
    for name in args.variants:
        print(f"  {name}: {VARIANTS[name].about} {list(VARIANTS[name].overrides)}")
    results = run_all(args, out)
    summary = summarise(results, args.variants)
    print("\ntest split (150 images), x100, mean ± std over seeds; best.pt by val CIDEr:")
    print_table(summary)
    minutes = (time.perf_counter() - started) / 60
    print(f"\n{minutes:.1f} min in all")
    print(
        json.dumps(
            {
                "benchmark": "quality",
                "minutes": round(minutes, 1),
                "variants": summary,
                "runs": sorted(results, key=lambda r: (r["variant"], r["seed"])),
            }
        )
    )


if __name__ == "__main__":
    main()
