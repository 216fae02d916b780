"""A finished sweep's table and JSON: per variant over seeds, each against its comparison."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.atomic import write_text_atomic
from pipeline.sweep.runner import PlannedRun, write_json
from pipeline.sweep.spec import Sweep
from pipeline.sweep.stats import compare, markdown_table, variant_row


def runs_by_variant(
    runs: dict[str, PlannedRun], results: dict[str, dict]
) -> dict[str, dict[int, dict]]:
    """variant -> seed -> result, for the runs that finished."""
    by_variant: dict[str, dict[int, dict]] = {}
    for key, run in runs.items():
        if key in results:
            for name, seed in run.users:
                by_variant.setdefault(name, {})[seed] = results[key]
    return by_variant


def summarise(sweep: Sweep, names: list[str], by_variant: dict[str, dict[int, dict]]) -> dict:
    """Rows (mean ± std over seeds) and comparisons (paired bootstrap) of the variants, greedy
    and at the sweep's beam."""
    decodings = ("greedy", f"beam{sweep.beam_size}")
    rows = {n: variant_row(by_variant[n], decodings) for n in names if n in by_variant}
    comparisons: dict[str, dict] = {}
    for name in rows:
        other = sweep.compared_with(name)
        if other is None or other not in by_variant:
            continue
        for decoding in decodings:
            result = compare(by_variant[name], by_variant[other], decoding)
            if result is not None:
                comparisons.setdefault(decoding, {})[name] = {"against": other, **result}
    return {"variants": rows, "comparisons": comparisons}


def write_summary(out: Path, sweep: Sweep, summary: dict) -> str:
    """OUT/summary.md (the table) and OUT/summary.json; returns the table."""
    beam = sweep.beam_size
    table = markdown_table(summary["variants"], summary["comparisons"].get(f"beam{beam}", {}), beam)
    header = (
        f"# sweep {sweep.name}: {sweep.split} split, CIDEr x100, mean ± std over seeds; "
        "comparisons: paired bootstrap over seeds and images\n\n"
    )
    write_text_atomic(out / "summary.md", header + table)
    write_json(out / "summary.json", summary)
    return table


def json_line(sweep: Sweep, summary: dict, minutes: float, failures: dict[str, str]) -> str:
    """The sweep's one JSON line."""
    return json.dumps(
        {
            "sweep": sweep.name,
            "split": sweep.split,
            "minutes": round(minutes, 1),
            **summary,
            "failed": failures,
        }
    )
