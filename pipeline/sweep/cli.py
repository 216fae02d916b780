"""`captioner sweep SWEEP.toml`: train variants x seeds, score them, compare with intervals."""

from __future__ import annotations

import time
from pathlib import Path

import click

from pipeline import output
from pipeline.errors import UserError


@click.command("sweep")
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a config key of every variant (first, before the variant's own); "
    "repeatable. E.g. point the sweep at your cache: --set features.path=F.h5.",
)
@click.option(
    "--seeds", type=click.IntRange(min=1), help="Seeds per variant (default: the file's)."
)
@click.option("--first-seed", type=int, help="The first seed (default: the file's).")
@click.option(
    "--variants",
    "only",
    default="",
    help="Comma-separated variants to run (with what they start from and compare with).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runs side by side, each with cores / jobs torch threads.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the runs go (default: the base config's train.out_dir/sweep-<file stem>). "
    "Rerunning with the same --out reuses finished runs and resumes interrupted ones.",
)
def sweep_command(sweep_file, overrides, seeds, first_seed, only, jobs, out):
    """Train every variant of SWEEP_FILE with each seed, score best.pt on the test split
    (greedy and beam), and compare each variant with its reference: mean ± std over seeds
    and a paired bootstrap over seeds and test images (95% intervals). Ends with one JSON
    line.

    With sweep.backbones, each backbone's features are extracted first (once; a complete
    file is reused), the same decoder is trained on each, and the backbones are ranked."""
    from pipeline.config import load_config
    from pipeline.sweep.extraction import extract_backbones
    from pipeline.sweep.runner import check_folders, execute, lock_out, plan_runs
    from pipeline.sweep.spec import check_sweep, load_sweep, select
    from pipeline.sweep.summary import (
        json_line,
        ranking_line,
        runs_by_variant,
        summarise,
        write_summary,
    )

    started = time.perf_counter()
    sweep = load_sweep(sweep_file, tuple(overrides))
    if seeds is not None:
        sweep.seeds = seeds
    if first_seed is not None:
        sweep.first_seed = first_seed
    check_sweep(sweep)
    names = select(sweep, [n.strip() for n in only.split(",") if n.strip()])
    if out is None:
        base = load_config(sweep.config, sweep.extra)
        out = Path(base.train.out_dir) / f"sweep-{sweep.name}"
    with lock_out(out):
        extract_backbones(sweep, names)
        runs = plan_runs(sweep, names, out)
        check_folders(runs)
        output.say(
            f"sweep {sweep.name}: {len(names)} variants x {sweep.seeds} seeds = {len(runs)} runs, "
            f"{jobs} at a time; {sweep.split} split, greedy and beam {sweep.beam_size}; in {out}"
        )
        for name in names:
            variant = sweep.variants[name]
            start = f" (from {variant.start})" if variant.start else ""
            output.say(
                f"  {name}{start}: {variant.about or ', '.join(variant.overrides) or 'base'}"
            )
        results, failures = execute(runs, sweep, jobs)
        summary = summarise(sweep, names, runs_by_variant(runs, results))
        table = write_summary(out, sweep, summary)
        output.say(f"\n{table}\n(written to {out / 'summary.md'} and {out / 'summary.json'})")
        if "ranking" in summary:
            output.say(ranking_line(sweep, summary))
        output.say(json_line(sweep, summary, (time.perf_counter() - started) / 60, failures))
    if failures:
        raise UserError(
            f"{len(failures)} of {len(runs)} runs failed: "
            + "; ".join(f"{runs[k].folder.name}: {why}" for k, why in failures.items())
        )
