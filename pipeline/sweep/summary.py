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
    and at the sweep's beam; with a backbone axis, the backbones ranked (`ranking`)."""
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
    summary = {"variants": rows, "comparisons": comparisons}
    if sweep.backbones:
        summary["ranking"] = ranking(rows, [n for n in sweep.backbones if n in rows], decodings[1])
    return summary


def ranking(rows: dict[str, dict], names: list[str], decoding: str) -> list[str]:
    """`names` by mean CIDEr at `decoding` over seeds, best first."""
    return sorted(names, key=lambda n: -(rows[n][f"CIDEr_{decoding}"] or [float("-inf")])[0])


def ranking_line(sweep: Sweep, summary: dict) -> str:
    """The backbones ranked, with their CIDEr at the beam and each one's interval against the
    reference."""
    decoding = f"beam{sweep.beam_size}"
    versus = summary["comparisons"].get(decoding, {})
    parts = []
    for name in summary["ranking"]:
        text = f"{name} {summary['variants'][name][f'CIDEr_{decoding}'][0]:.1f}"
        if name in versus:
            low, high = versus[name]["difference_ci"]
            text += (
                f" ({100 * versus[name]['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}])"
            )
        parts.append(text)
    return f"backbones by CIDEr beam {sweep.beam_size} (vs {sweep.reference}): " + " > ".join(parts)


def write_summary(out: Path, sweep: Sweep, summary: dict) -> str:
    """OUT/summary.md (the table) and OUT/summary.json; returns the table."""
    beam = sweep.beam_size
    table = markdown_table(summary["variants"], summary["comparisons"].get(f"beam{beam}", {}), beam)
    header = (
        f"# sweep {sweep.name}: {sweep.split} split, CIDEr x100, mean ± std over seeds; "
        "comparisons: paired bootstrap over seeds and images\n\n"
    )
    if "ranking" in summary:
        header += ranking_line(sweep, summary) + "\n\n"
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
