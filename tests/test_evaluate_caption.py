"""evaluate (batch, metrics files, comparison table) and caption (new images, attention maps)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pipeline import contract
from pipeline.cli import main
from pipeline.config import EvalConfig
from pipeline.decoder.checkpoint import load_checkpoint
from pipeline.extract.extractor import FeatureEncoder
from pipeline.extract.images import preprocess_image
from pipeline.metrics.coco import java_available, score_captions
from tests.conftest import install_logging_java, meteor_starts


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_cache) -> dict[str, Path]:
    """Two tiny runs (1 and 2 epochs) trained on the shared demo cache."""
    from tests.conftest import write_tiny_config

    root = tmp_path_factory.mktemp("trained")
    config = write_tiny_config(root, demo_cache)
    for name, epochs in (("one", 1), ("two", 3)):
        result = cli(
            "train",
            "--config",
            config,
            "--set",
            f"train.name={name}",
            "--set",
            f"train.epochs={epochs}",
        )
        assert result.exit_code == 0, result.output
    return {
        "config": config,
        "one": root / "runs" / "one",
        "two": root / "runs" / "two",
        **demo_cache,
    }


def test_evaluate_writes_predictions_metrics_and_a_ranked_table(trained, tmp_path):
    out = tmp_path / "ev"
    result = cli(
        "evaluate",
        trained["one"],
        trained["two"] / "last.pt",
        "--out",
        out,
        "--beam-size",
        "2",
        "--examples",
        "2",
    )
    assert result.exit_code == 0, result.output
    assert "generated:" in result.output and "reference:" in result.output
    for label in ("one", "two-last"):
        predictions = json.loads((out / label / "predictions.json").read_text())
        report = json.loads((out / label / "metrics.json").read_text())
        assert len(predictions) == report["num_images"] == 4  # the demo test split
        assert all(set(p) == {"image_id", "caption"} for p in predictions)
        assert {p["image_id"] for p in predictions} <= {f"demo_{i:05d}" for i in range(40)}
        assert set(report["scores"]) == {
            "Bleu_1",
            "Bleu_2",
            "Bleu_3",
            "Bleu_4",
            "METEOR",
            "ROUGE_L",
            "CIDEr",
        }
        assert report["split"] == "test" and report["beam_size"] == 2
        assert report["loss"] > 0
    table = (out / "table.csv").read_text().splitlines()
    assert table[0].startswith("run,epoch,split,beam,images,Bleu_1")
    ciders = [float(line.split(",")[-2]) for line in table[1:]]
    assert ciders == sorted(ciders, reverse=True)
    assert (out / "table.md").read_text().count("\n") == 4


@pytest.mark.skipif(not java_available(), reason="java is not installed")
def test_evaluating_two_runs_starts_meteor_once(trained, tmp_path, monkeypatch):
    log = install_logging_java(tmp_path, monkeypatch)

    result = cli("evaluate", trained["one"], trained["two"], "--out", tmp_path / "ev")

    assert result.exit_code == 0, result.output
    for label in ("one", "two"):  # model and baseline of each run: 4 scores, 1 METEOR start
        report = json.loads((tmp_path / "ev" / label / "metrics.json").read_text())
        assert report["scores"]["METEOR"] > 0 and report["baseline"]["scores"]["METEOR"] > 0
    assert meteor_starts(log) == 1


def test_evaluate_scores_equal_direct_metric_call(trained, tmp_path):
    out = tmp_path / "ev"
    assert cli("evaluate", trained["two"], "--out", out, "--beam-size", "1").exit_code == 0
    predictions = json.loads((out / "two" / "predictions.json").read_text())
    report = json.loads((out / "two" / "metrics.json").read_text())
    data = json.loads(Path(trained["captions"]).read_text())
    refs = {
        Path(im["filename"]).stem: [s["raw"] for s in im["sentences"]]
        for im in data["images"]
        if im["split"] == "test"
    }
    direct = score_captions(
        {p["image_id"]: refs[p["image_id"]] for p in predictions},
        {p["image_id"]: p["caption"] for p in predictions},
        metrics=("Bleu_4", "ROUGE_L", "CIDEr"),
    )
    for name in ("Bleu_4", "ROUGE_L", "CIDEr"):
        assert report["scores"][name] == pytest.approx(direct.scores[name], abs=1e-9)


def test_evaluate_and_caption_default_to_the_checkpoints_eval_section(trained, tmp_path):
    run = trained["config"].parent / "runs" / "evalset"
    settings = ("eval.beam_size=2", "eval.split=val", "eval.examples=1", "train.epochs=1")
    assert EvalConfig.beam_size != 2 and EvalConfig.split != "val"  # not the class defaults
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    trained_run = cli(
        "train", "--config", trained["config"], "--set", "train.name=evalset", *overrides
    )
    assert trained_run.exit_code == 0, trained_run.output

    plain = cli("evaluate", run, "--out", tmp_path / "plain")
    assert plain.exit_code == 0, plain.output
    report = json.loads((tmp_path / "plain" / "evalset" / "metrics.json").read_text())
    assert (report["split"], report["beam_size"], report["decoding"]["beam_size"]) == ("val", 2, 2)
    assert plain.output.count("generated:") == 1 and "on val" in plain.output
    flagged = cli(
        "evaluate", run, "--out", tmp_path / "flagged", "--beam-size", 1, "--split", "test"
    )
    assert flagged.exit_code == 0, flagged.output
    report = json.loads((tmp_path / "flagged" / "evalset" / "metrics.json").read_text())
    assert (report["split"], report["beam_size"]) == ("test", 1)

    for flags, beam in (((), 2), (("--beam-size", 1), 1)):
        out = tmp_path / f"captions-{beam}.jsonl"
        captioned = cli(
            "caption", "--features", trained["features"], "--checkpoint", run, "--out", out, *flags
        )
        assert captioned.exit_code == 0, captioned.output
        meta = json.loads(out.with_name(f"{out.name}.meta.json").read_text())
        assert meta["beam_size"] == beam


def test_evaluate_refuses_a_cache_from_other_weights(trained, tmp_path):
    other = tmp_path / "other.h5"
    other.write_bytes(Path(trained["features"]).read_bytes())
    with h5py.File(other, "r+") as f:
        f.attrs["weights"] = "file:sha256:" + "0" * 64
    result = cli("evaluate", trained["one"], "--features", other, "--out", tmp_path / "ev")
    assert result.exit_code == 2, result.output
    assert "does not match the checkpoint's features" in result.output
    assert "Traceback" not in result.output


def write_modes(folder: Path, source: Path) -> list[Path]:
    """One demo image saved in several modes, plus a broken file."""
    rgb = Image.open(source).convert("RGB")
    paths = {
        "rgb.jpg": rgb,
        "gray.png": rgb.convert("L"),
        "rgba.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "deep.png": Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)),
    }
    out = []
    for name, image in paths.items():
        image.save(folder / name)
        out.append(folder / name)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    return out + [broken]


def test_caption_cli_several_modes_bad_image_and_attention_maps(trained, tmp_path):
    images = write_modes(tmp_path, trained["images"] / "demo_00000.jpg")
    maps = tmp_path / "maps"
    result = cli(
        "caption",
        *images,
        "--checkpoint",
        trained["two"],
        "--beam-size",
        "2",
        "--attention-dir",
        maps,
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert any(line.startswith(f"{images[-1]}: error:") for line in lines)
    for path in images[:-1]:
        line = next(line for line in lines if line.startswith(f"{path}: "))
        words = line.split(": ", 1)[1].split()
        alphas = np.load(maps / f"{path.stem}.npy")
        assert alphas.shape == (len(words), 49)
        assert np.allclose(alphas.sum(axis=1), 1.0, atol=1e-4)
        png = Image.open(maps / f"{path.stem}.png")
        tiles = 1 + len(words)
        columns = min(5, tiles)
        assert png.size == (columns * 224, -(-tiles // columns) * (224 + 20))


def test_caption_features_equal_what_extract_wrote(trained):
    payload = load_checkpoint(trained["two"] / "best.pt")
    encoder = FeatureEncoder.from_attrs(payload["features"], "cpu")
    names = ["demo_00003.jpg", "demo_00017.jpg"]
    crops = torch.stack([preprocess_image(trained["images"] / n) for n in names])
    fresh = encoder.encode(crops)  # (2, 49, 2048)
    with h5py.File(trained["features"]) as f:
        rows = [contract.read_image_ids(f).index(n) for n in names]
        stored = np.stack([f[contract.FEATURES][r] for r in rows])
    assert fresh.dtype == stored.dtype
    # Same weights, policy, precision and dtype. Not bit for bit: oneDNN picks its convolution
    # algorithm by batch size (2 here, 32 in extract), which moves fp32 sums by a few ulps.
    np.testing.assert_allclose(
        fresh.astype(np.float32), stored.astype(np.float32), rtol=5e-3, atol=1e-2
    )
    assert np.corrcoef(fresh.ravel(), stored.ravel())[0, 1] > 0.99999


def test_caption_with_missing_checkpoint_is_a_clear_error(tmp_path, trained):
    result = cli(
        "caption", trained["images"] / "demo_00000.jpg", "--checkpoint", tmp_path / "none.pt"
    )
    assert result.exit_code == 2 and "checkpoint not found" in result.output
