"""Batch evaluation: caption a split from the cache with each checkpoint, score, compare.

Scores are pycocoevalcap's (PTB tokenizer; Bleu_1..4, METEOR, ROUGE_L, CIDEr) against all
references of every image of the split, on pycocoevalcap's 0-1 scale in metrics.json
(printouts show ×100, as papers do).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import pandas as pd

from pipeline.dataset.batches import build_split
from pipeline.dataset.experiment import load_experiment_data
from pipeline.dataset.teacher_forced import split_loss
from pipeline.decoder.checkpoint import load_model, resolve_checkpoint
from pipeline.decoder.generate import decode_rows
from pipeline.decoder.metrics import METRIC_NAMES, format_scores, score_captions
from pipeline.device import resolve_device
from pipeline.errors import UserError


def predictions_json(image_ids: list[str], captions: list[str]) -> list[dict]:
    """COCO results format; numeric ids (COCO) become ints, others stay file stems."""
    return [{"image_id": int(i) if i.isdigit() else i, "caption": c}
            for i, c in zip(image_ids, captions, strict=True)]


def evaluate_checkpoint(path: str | Path, split: str, beam_size: int, out_dir: Path,
                        features_path: str | None = None, examples: int = 5,
                        device_name: str = "auto") -> dict:
    """Caption every image of `split` with one checkpoint; write predictions and metrics."""
    device = resolve_device(device_name)
    loaded = load_model(path, device)
    config = loaded.config
    if features_path:
        config.features.path = features_path
    data = load_experiment_data(config, expected_fingerprint=loaded.features, echo=False)
    split_data = build_split(data.frame, split, loaded.vocab, config.vocab.max_len, data.row_of)
    if not split_data.image_names:
        raise UserError(f"split {split!r} has no images in {config.data.captions}")
    decoded = decode_rows(loaded.model, data.store, split_data.image_rows, loaded.vocab,
                          config.eval, beam_size, device)
    captions = [loaded.vocab.decode(d.tokens) for d in decoded]
    keys = [str(i) for i in range(len(captions))]
    report = score_captions(dict(zip(keys, split_data.references, strict=True)),
                            dict(zip(keys, captions, strict=True)))
    loss = split_loss(loaded.model, data.store, split_data, config, loaded.vocab.pad, device)
    result = {
        "checkpoint": str(loaded.path), "run": run_label(loaded.path), "epoch": loaded.epoch,
        "split": split, "beam_size": beam_size, "num_images": len(captions),
        "scores": report.scores, "scale": "pycocoevalcap 0-1 (papers print x100)",
        "loss": loss, "tokenizer": report.tokenizer, "notes": report.notes,
        "features": config.features.path,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "predictions.json").write_text(
        json.dumps(predictions_json(split_data.image_ids, captions), indent=1), "utf-8")
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2), "utf-8")
    print_result(result, split_data, captions, examples)
    return result


def print_result(result: dict, split_data, captions: list[str], examples: int) -> None:
    """The seed's evaluation printout: scores, loss, and references vs generated."""
    click.echo(f"{result['run']} (epoch {result['epoch']}) on {result['split']}, "
               f"{result['num_images']} images, beam {result['beam_size']}:")
    click.echo(f"  {format_scores(result['scores'])}  loss {result['loss']:.4f}")
    for note in result["notes"]:
        click.echo(f"  note: {note}")
    for i in range(min(examples, len(captions))):
        click.echo(f"  {split_data.image_names[i]}")
        click.echo(f"    generated: {captions[i]}")
        for reference in split_data.references[i][:3]:
            click.echo(f"    reference: {reference}")


def run_label(path: Path) -> str:
    """A checkpoint's name in tables: its run folder, plus the file stem unless best.pt."""
    return path.parent.name if path.name == "best.pt" else f"{path.parent.name}/{path.stem}"


def write_comparison(results: list[dict], out: Path) -> pd.DataFrame:
    """table.md and table.csv at the top of `out`: one row per checkpoint, ranked by CIDEr."""
    rows = []
    for r in results:
        row = {"run": r["run"], "epoch": r["epoch"], "split": r["split"], "beam": r["beam_size"],
               "images": r["num_images"]}
        row.update({name: r["scores"].get(name) for name in METRIC_NAMES})
        row["loss"] = r["loss"]
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("CIDEr", ascending=False, na_position="last")
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(markdown_table(table), "utf-8")
    return table


def markdown_table(table: pd.DataFrame) -> str:
    """Metrics ×100 (as papers print them), loss as is; '–' where unavailable."""
    def cell(column: str, value) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "–"
        if column in METRIC_NAMES:
            return f"{100 * value:.1f}"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(c, row[c]) for c in table.columns) + " |"
            for _, row in table.iterrows()]
    return "\n".join([header, rule, *body]) + "\n"


def evaluate_many(paths: list[str], split: str, beam_size: int, out: Path,
                  features_path: str | None = None, examples: int = 5,
                  device_name: str = "auto") -> list[dict]:
    """Evaluate each checkpoint into out/<run label>/; a comparison table when several."""
    results = []
    labels = set()
    for path in paths:
        label = run_label(resolve_checkpoint(path)).replace("/", "-")
        if label in labels:
            raise UserError(f"two checkpoints would both write {out / label}")
        labels.add(label)
        results.append(evaluate_checkpoint(path, split, beam_size, out / label, features_path,
                                           examples, device_name))
    if len(results) > 1:
        table = write_comparison(results, out)
        click.echo(f"\ncomparison ({out / 'table.md'}):\n{markdown_table(table)}")
    return results
