"""Batch evaluation: caption a split from the cache with each checkpoint, score, compare.

Scores are pycocoevalcap's (PTB tokenizer; Bleu_1..4, METEOR, ROUGE_L, CIDEr) against all
references of every image of the split, on pycocoevalcap's 0-1 scale in metrics.json
(printouts and reports show ×100, as papers do), with each image's CIDEr
(`per_image_cider`: what paired comparisons such as `captioner sweep` resample). Each checkpoint gets OUT/<run label>/ with
predictions.json, metrics.json and report.html (scores next to the image-blind baseline,
decode health, a gallery, training curves); several checkpoints also get table.md,
table.csv and comparison.html at the top of OUT.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from html import escape
from importlib.metadata import version
from pathlib import Path

import pandas as pd

from pipeline import output
from pipeline.config import with_flags
from pipeline.contract import feature_shape
from pipeline.dataset.batches import SplitData, build_split
from pipeline.dataset.experiment import load_experiment_data
from pipeline.dataset.teacher_forced import split_loss
from pipeline.decoder.checkpoint import LoadedModel, load_model, resolve_checkpoint
from pipeline.decoder.decode import Decoded
from pipeline.decoder.generate import decode_rows, effective_beam_size
from pipeline.decoder.vocab import SPECIALS
from pipeline.device import resolve_device
from pipeline.errors import UserError
from pipeline.extract.images import preprocessing_of
from pipeline.infer.baseline import baseline_scores
from pipeline.infer.curves import read_history
from pipeline.infer.files import OutputFolder
from pipeline.infer.gallery import Card, load_crop
from pipeline.infer.health import decode_health
from pipeline.infer.report import comparison_report, run_report
from pipeline.infer.selection import GALLERY_SIZE, select_gallery
from pipeline.metrics.coco import METRIC_NAMES, CaptionScorer, format_scores

RUN_OUTPUTS = ("predictions.json", "metrics.json", "report.html")
COMPARISON_OUTPUTS = ("table.md", "table.csv", "comparison.html")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads these as a formula
LOOSE_CHECKPOINT = "checkpoint"  # the label of a checkpoint with no folder name (at /)


def predictions_json(
    image_names: list[str], image_ids: list[str], captions: list[str]
) -> list[dict]:
    """COCO results format: numeric ids (COCO) become ints, others stay file stems; images
    whose ids would collide (a/x.jpg and b/x.jpg) are named by their path instead."""
    ids = [int(i) if i.isascii() and i.isdigit() else i for i in image_ids]
    counts = Counter(ids)
    ids = [i if counts[i] == 1 else n for i, n in zip(ids, image_names, strict=True)]
    if len(set(ids)) != len(ids):  # a path equal to another image's id
        ids = list(image_names)
    return [{"image_id": i, "caption": c} for i, c in zip(ids, captions, strict=True)]


def evaluate_checkpoint(
    path: str | Path,
    split: str | None,
    beam_size: int | None,
    out_dir: Path,
    features_path: str | None = None,
    examples: int | None = None,
    device_name: str = "auto",
    gallery: int = GALLERY_SIZE,
    scorer: CaptionScorer | None = None,
) -> dict:
    """Caption every image of `split` with one checkpoint; write predictions, metrics and
    report.html into `out_dir` (only those files; a foreign file of that name is refused).
    `split`, `beam_size` and `examples` (images printed) that are None take the checkpoint's
    eval.split, eval.beam_size and eval.examples.

    `scorer` scores the model and the baseline; pass one to share its METEOR process between
    evaluations. Without one, the evaluation starts its own before decoding (so METEOR loads
    while the model decodes) and stops it at the end.
    """
    folder = OutputFolder(out_dir)
    for name in RUN_OUTPUTS:
        folder.check(name)  # before the work: a refusal costs nothing
    if scorer is None:
        with CaptionScorer() as own:
            return evaluate_checkpoint(
                path, split, beam_size, out_dir, features_path, examples, device_name, gallery, own
            )
    device = resolve_device(device_name)
    loaded = load_model(path, device)
    config = loaded.config
    config.eval = with_flags(config.eval, split=split, beam_size=beam_size, examples=examples)
    split, beam_size = config.eval.split, config.eval.beam_size
    if features_path:
        config.features.path = features_path
    with output.quiet():  # what the data holds was said when the run was trained
        data = load_experiment_data(
            config, expected_fingerprint=loaded.features, saved_splits=loaded.splits
        )
    split_data = build_split(data.frame, split, loaded.vocab, config.vocab.max_len, data.row_of)
    if not split_data.image_names:
        raise UserError(f"split {split!r} has no images in {config.data.captions}")
    decoded = decode_rows(
        loaded.model,
        data.store,
        split_data.image_rows,
        loaded.vocab,
        config.eval,
        beam_size,
        device,
    )
    captions = [loaded.vocab.decode(d.tokens) for d in decoded]
    keys = [str(i) for i in range(len(captions))]
    language, tokenizer = config.data.language, config.vocab.tokenizer
    report = scorer.score(
        dict(zip(keys, split_data.references, strict=True)),
        dict(zip(keys, captions, strict=True)),
        language,
        tokenizer,
    )
    baseline = baseline_scores(
        data.frame, split_data.references, loaded.vocab, config.vocab.max_len, scorer, language
    )
    health = decode_health(
        captions,
        [d.finished for d in decoded],
        split_data.references,
        len(loaded.vocab) - len(SPECIALS),
        tokenizer,
    )
    loss = split_loss(loaded.model, data.store, split_data, config, loaded.vocab.pad, device)
    reference_counts = [len(r) for r in split_data.references]
    result = {
        "checkpoint": str(loaded.path),
        "run": run_label(loaded.path),
        "epoch": loaded.epoch,
        "split": split,
        "beam_size": beam_size,
        "num_images": len(captions),
        "scores": report.scores,
        "scale": "pycocoevalcap 0-1 (papers print x100)",
        "loss": loss,
        "tokenizer": report.tokenizer,  # what the scores were computed on
        "language": language,
        "vocab_tokenizer": tokenizer,
        "notes": report.notes,
        "features": config.features.path,
        "baseline": None
        if baseline is None
        else {
            "caption": baseline.caption,
            "scores": baseline.report.scores,
            "what": "the most frequent training caption, given to every image of the split",
        },
        "health": health.to_json(),
        "decoding": {
            "beam_size": beam_size,
            "effective_beam_size": effective_beam_size(beam_size, loaded.vocab, config.eval),
            "length_penalty": config.eval.length_penalty,
            "max_len": config.eval.max_len,
            "suppress_unk": config.eval.suppress_unk,
        },
        "references_per_image": {
            "min": min(reference_counts),
            "max": max(reference_counts),
            "mean": sum(reference_counts) / len(reference_counts),
        },
        "pycocoevalcap": version("pycocoevalcap"),
        "feature_fingerprint": data.fingerprint,
        "per_image_cider": {
            name: report.per_image_cider[key]
            for name, key in zip(split_data.image_names, keys, strict=True)
        },
    }
    folder.write_text(
        "predictions.json",
        json.dumps(
            predictions_json(split_data.image_names, split_data.image_ids, captions), indent=1
        ),
    )
    folder.write_text("metrics.json", json.dumps(result, indent=2))
    cider = [report.per_image_cider[key] for key in keys]
    sections, images_note = gallery_cards(loaded, split_data, decoded, captions, cider, gallery)
    html = run_report(result, sections, read_history(loaded.path.parent), images_note)
    report_path = folder.write_text("report.html", html)
    print_result(result, split_data, captions, config.eval.examples)
    output.say(f"  report: {report_path}")
    return result


def gallery_cards(
    loaded: LoadedModel,
    split_data: SplitData,
    decoded: list[Decoded],
    captions: list[str],
    cider: list[float],
    count: int,
) -> tuple[dict[str, list[Card]], str | None]:
    """Best / worst / random cards by per-image CIDEr, and a note when images are missing."""
    images_root = loaded.config.data.images
    pre = preprocessing_of(loaded.features)  # the crops the checkpoint's backbone saw
    class_token = feature_shape(loaded.features).class_token
    sections: dict[str, list[Card]] = {}
    missing = shown = 0
    for key, positions in select_gallery(cider, count).items():
        sections[key] = []
        for i in positions:
            image = load_crop(images_root, split_data.image_names[i], pre)
            missing += image is None
            shown += 1
            sections[key].append(
                Card(
                    name=split_data.image_names[i],
                    caption=captions[i],
                    words=[loaded.vocab.itos[t] for t in decoded[i].tokens],
                    attention=decoded[i].attention,
                    image=image,
                    references=split_data.references[i],
                    cider=cider[i],
                    class_token=class_token,
                )
            )
    note = None
    if missing:
        where = f"data.images = {images_root!r}" if images_root else "data.images is not set"
        note = (
            f"{missing} of {shown} gallery images were not found ({where}): their "
            "attention is drawn on a neutral grey background."
        )
    return sections, note


def print_result(result: dict, split_data: SplitData, captions: list[str], examples: int) -> None:
    """The seed's evaluation printout: scores, loss, and references vs generated."""
    output.say(
        f"{result['run']} (epoch {result['epoch']}) on {result['split']}, "
        f"{result['num_images']} images, beam {result['beam_size']}:"
    )
    output.say(f"  {format_scores(result['scores'])}  loss {result['loss']:.4f}")
    if result["baseline"]:
        output.say(
            f"  image-blind baseline ({result['baseline']['caption']!r} for every "
            f"image): {format_scores(result['baseline']['scores'])}"
        )
    for note in result["notes"]:
        output.say(f"  note: {note}")
    for flag in result["health"]["flags"].values():
        output.say(f"  warning: decoding looks degenerate: {flag}")
    for i in range(min(examples, len(captions))):
        output.say(f"  {split_data.image_names[i]}")
        output.say(f"    generated: {captions[i]}")
        for reference in split_data.references[i][:3]:
            output.say(f"    reference: {reference}")


def run_label(path: Path) -> str:
    """A checkpoint's name in tables: its run folder as the filesystem names it (`RUN/sub/..`
    is RUN, `best.pt` is the current folder's name), plus the file stem unless best.pt;
    control characters become `_`."""
    path = Path(path).resolve()
    folder = path.parent.name or LOOSE_CHECKPOINT
    label = folder if path.name == "best.pt" else f"{folder}/{path.stem}"
    return CONTROL_CHARACTERS.sub("_", label)


def output_name(path: Path) -> str:
    """The folder under --out that a checkpoint's outputs go to: its label, one plain name."""
    return run_label(path).replace("/", "-")


def comparison_table(results: list[dict]) -> pd.DataFrame:
    """One row per checkpoint, ranked by CIDEr."""
    rows = []
    for r in results:
        row = {
            "run": r["run"],
            "epoch": r["epoch"],
            "split": r["split"],
            "beam": r["beam_size"],
            "images": r["num_images"],
        }
        row.update({name: r["scores"].get(name) for name in METRIC_NAMES})
        row["loss"] = r["loss"]
        rows.append(row)
    return pd.DataFrame(rows).sort_values("CIDEr", ascending=False, na_position="last")


def write_comparison(results: list[dict], folder: OutputFolder) -> pd.DataFrame:
    """table.md, table.csv and comparison.html at the top of the output folder."""
    table = comparison_table(results)
    folder.write_text("table.csv", csv_safe(table).to_csv(index=False))
    folder.write_text("table.md", markdown_table(table))
    histories = {r["run"]: read_history(Path(r["checkpoint"]).parent) for r in results}
    folder.write_text("comparison.html", comparison_report(results, histories))
    return table


def csv_safe(table: pd.DataFrame) -> pd.DataFrame:
    """The table with text cells that a spreadsheet would run as a formula quoted by a `'`."""

    def safe(value):
        return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value

    return table.map(safe)


def markdown_cell(text: str) -> str:
    """Text for a Markdown table cell: HTML escaped, pipes escaped, no line breaks."""
    return escape(CONTROL_CHARACTERS.sub(" ", text), quote=False).replace("|", "\\|")


def markdown_table(table: pd.DataFrame) -> str:
    """Metrics ×100 (as papers print them), loss as is; '–' where unavailable."""

    def cell(column: str, value) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "–"
        if column in METRIC_NAMES:
            return f"{100 * value:.1f}"
        return f"{value:.4f}" if isinstance(value, float) else markdown_cell(str(value))

    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = [
        "| " + " | ".join(cell(c, row[c]) for c in table.columns) + " |"
        for _, row in table.iterrows()
    ]
    return "\n".join([header, rule, *body]) + "\n"


def evaluate_many(
    paths: list[str],
    split: str | None,
    beam_size: int | None,
    out: Path,
    features_path: str | None = None,
    examples: int | None = None,
    device_name: str = "auto",
    gallery: int = GALLERY_SIZE,
) -> list[dict]:
    """Evaluate each checkpoint into out/<run label>/ (one METEOR process for all); a
    comparison when several. None settings: each checkpoint's eval section's."""
    labels: list[str] = []
    for path in paths:
        label = output_name(resolve_checkpoint(path))
        if label in labels:
            raise UserError(f"two checkpoints would both write {out / label}")
        labels.append(label)
    for label in labels:  # refuse before any work, not after the first run
        run_folder = OutputFolder(out / label)
        for name in RUN_OUTPUTS:
            run_folder.check(name)
    folder = OutputFolder(out)
    if len(paths) > 1:
        for name in COMPARISON_OUTPUTS:
            folder.check(name)
    with CaptionScorer() as scorer:
        results = [
            evaluate_checkpoint(
                path,
                split,
                beam_size,
                out / label,
                features_path,
                examples,
                device_name,
                gallery,
                scorer,
            )
            for path, label in zip(paths, labels, strict=True)
        ]
    if len(results) > 1:
        table = write_comparison(results, folder)
        output.say(
            f"\ncomparison ({out / 'table.md'}, {out / 'comparison.html'}):\n"
            f"{markdown_table(table)}"
        )
    return results
