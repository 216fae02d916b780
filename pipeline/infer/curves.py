"""Training curves from a run's metrics.jsonl (one JSON object per epoch), as inline SVG."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.infer.svg import Series, line_chart

# chart title -> [(series name, metrics.jsonl key, scale)]
TRAINING_CHARTS = {
    "loss (cross-entropy per word)": [("train", "train_loss", 1.0), ("val", "val_loss", 1.0)],
    "val scores (x100, greedy)": [("CIDEr", "CIDEr", 100.0), ("BLEU-4", "Bleu_4", 100.0)],
    "learning rate": [("lr", "lr", 1.0)],
}


def read_history(run_dir: Path) -> list[dict]:
    """The epoch records of RUN/metrics.jsonl; unreadable lines (a torn last line after a
    crash) are skipped, and a missing file gives []."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
    return records


def column(history: list[dict], key: str, scale: float = 1.0) -> list[float | None]:
    """Per epoch, `key` x scale, or None where the record lacks a number for it."""
    values = (record.get(key) for record in history)
    return [v * scale if isinstance(v, (int, float)) else None for v in values]


def training_charts(history: list[dict], epoch: int | None = None) -> list[str]:
    """One SVG per TRAINING_CHARTS entry; `epoch` marks the evaluated checkpoint."""
    epochs = [record["epoch"] for record in history]
    return [
        line_chart(
            [Series(name, epochs, column(history, key, scale)) for name, key, scale in lines],
            title,
            epoch,
            f"epoch {epoch}" if epoch else "",
        )
        for title, lines in TRAINING_CHARTS.items()
    ]


def cider_comparison_chart(histories: dict[str, list[dict]]) -> str:
    """Val CIDEr (x100) per epoch of several runs on one chart (legend left to the page)."""
    series = [
        Series(run, [r["epoch"] for r in history], column(history, "CIDEr", 100.0))
        for run, history in histories.items()
    ]
    return line_chart(series, "val CIDEr (x100) per epoch", legend=False)
