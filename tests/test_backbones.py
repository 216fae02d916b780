"""Every backbone of the table on the same cache design: its shape, preprocessing and
fingerprint; stage two on a 14x14x768 file; attention maps at 14x14; refusals across backbones;
files made before shape attributes; the sweep's backbone axis."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import error_line, write_tiny_config
from PIL import Image
from torchvision.models import get_weight

from pipeline import contract, output
from pipeline.backbones import BACKBONES, backbone
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.dataset.experiment import open_cache
from pipeline.decoder.build import build_decoder
from pipeline.decoder.vocab import Vocabulary
from pipeline.errors import UserError
from pipeline.extract.backbone import resolve_weights
from pipeline.extract.extractor import (
    ExtractJob,
    check_policy,
    extractor_attrs,
    native_grid,
    resolve_precision,
    run_extraction,
)
from pipeline.extract.images import preprocessing_for
from pipeline.extract.job import job_from_config
from pipeline.infer.attention_maps import attention_npy, attention_png
from pipeline.sweep.extraction import extract_backbones
from pipeline.sweep.spec import load_sweep
from pipeline.sweep.summary import ranking, ranking_line

ISSUE_LIST = (
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "convnext_tiny",
    "convnext_base",
    "swin_t",
    "vit_b_16",
    "regnet_y_16gf",
)
VIT_GRID = 14


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory) -> Path:
    """Two small noise photos (PNG and JPEG)."""
    folder = tmp_path_factory.mktemp("tiny-images")
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (48, 40)), ("b.jpg", (64, 64))):
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
    return folder


def test_the_table_holds_the_listed_backbones():
    assert set(ISSUE_LIST) <= set(BACKBONES)
    assert next(iter(BACKBONES)) == "resnet50" == contract.BACKBONE


@pytest.mark.parametrize("name", ISSUE_LIST)
def test_every_backbone_extracts_its_shape_and_fingerprint(
    name, tiny_images, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # nothing may be downloaded
    vit = backbone(name).has_class_token
    grid, class_token = (VIT_GRID, True) if vit else (7, False)
    job = ExtractJob(
        images_root=tiny_images,
        names=["a.png", "b.jpg"],
        out=tmp_path / "f.h5",
        weights=resolve_weights("none", name),
        device=torch.device("cpu"),
        precision=resolve_precision("auto", torch.device("cpu")),  # bf16 where native: faster
        dtype="float32",  # random-init resnet152 reaches ~4e8: past float16's range
        backbone=name,
        grid=grid,
        class_token=class_token,
        workers=0,
        progress=False,
    )
    with output.quiet():
        result = run_extraction(job)
    assert result.written == 2 and not result.failed
    assert not (tmp_path / "torch-home").exists()
    regions = grid * grid + int(class_token)
    channels = backbone(name).channels
    with contract.open_complete(job.out) as f:
        assert f[contract.FEATURES].shape == (2, regions, channels)
        assert np.isfinite(f[contract.FEATURES][:]).all()
        print_ = contract.fingerprint(f)
        attrs = contract.read_attrs(f)
    assert print_["backbone"] == name and print_["weights"] == "none:seed=0"
    assert (print_["grid"], print_["regions"], print_["channels"]) == (grid, regions, channels)
    assert print_["class_token"] is (True if class_token else None)
    assert contract.feature_shape(print_) == contract.FeatureShape(grid, channels, class_token)
    declared = get_weight(backbone(name).preprocessing_weights).transforms()
    assert attrs["image_size"] == declared.crop_size[0]
    assert attrs["mean"] == list(declared.mean) and attrs["std"] == list(declared.std)
    assert (
        f"shorter side -> {declared.resize_size[0]} {declared.interpolation.value}"
        in (attrs["resize"])
    )
    check_policy(attrs)  # caption would rebuild this very extractor
    assert native_grid(name) == (VIT_GRID if vit else 7)


def test_resnet50_keeps_the_preprocessing_of_earlier_files():
    assert preprocessing_for("resnet50").resize == 256  # IMAGENET1K_V1's declared transforms
    assert extractor_attrs("resnet50", 7, False)["resize"].startswith(
        "captioner-v1: jpeg draft (both sides >= 256)"
    )
    assert preprocessing_for("swin_t").interpolation == "bicubic"


def write_vit_file(path: Path, image_ids: list[str]) -> None:
    """A complete vit_b_16 14x14x768 feature file for `image_ids`, each image's rows a fixed
    random pattern (what stage two reads is the file, not how its numbers came about)."""
    attrs = {
        **extractor_attrs("vit_b_16", VIT_GRID, False),
        "weights": "none:seed=0",
        "dtype": "float16",
        "precision": "fp32",
    }
    contract.create_feature_file(path, image_ids, attrs, "float16")
    rng = np.random.default_rng(0)
    with h5py.File(path, "r+") as f:
        for row in range(len(image_ids)):
            f[contract.FEATURES][row] = rng.standard_normal((VIT_GRID**2, 768)).astype(np.float16)
        f[contract.STATUS][:] = contract.WRITTEN
        contract.write_failed_and_complete(f, [])


@pytest.fixture(scope="module")
def vit_run(demo_cache, tmp_path_factory) -> dict:
    """A Transformer trained (one epoch) from a 14x14x768 vit_b_16 file of the demo images."""
    root = tmp_path_factory.mktemp("vit")
    with contract.open_h5(demo_cache["features"]) as f:
        ids = contract.read_image_ids(f)
    features = root / "vit.h5"
    write_vit_file(features, ids)
    config = write_tiny_config(root, {**demo_cache, "features": features})
    sets = ["--set", "model.kind=transformer", "--set", "train.epochs=1"]
    sets += ["--set", "model.embed_dim=16", "--set", "model.heads=2", "--set", "model.layers=1"]
    sets += ["--set", "model.ff_dim=32", "--set", "train.name=vit"]
    result = CliRunner().invoke(main, ["train", "--config", str(config), *sets])
    assert result.exit_code == 0, result.output
    assert "(14x14x768)" in result.output
    return {"root": root, "config": config, "features": features, "run": root / "runs" / "vit"}


def test_a_decoder_trains_evaluates_and_captions_from_a_14x14x768_file(vit_run, demo_cache):
    payload = torch.load(vit_run["run"] / "best.pt", weights_only=True)
    assert payload["features"]["backbone"] == "vit_b_16"
    assert payload["model"]["grid_rows"].shape[0] == VIT_GRID
    assert payload["model"]["region_proj.weight"].shape[1] == 768
    out = vit_run["root"] / "eval"
    result = CliRunner().invoke(main, ["evaluate", str(vit_run["run"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "<img" in (out / "vit" / "report.html").read_text()
    maps = vit_run["root"] / "maps"
    image = demo_cache["images"] / sorted(p.name for p in demo_cache["images"].iterdir())[0]
    result = CliRunner().invoke(
        main,
        ["caption", str(image), "--checkpoint", str(vit_run["run"]), "--attention-dir", str(maps)],
    )
    assert result.exit_code == 0, result.output
    weights = np.load(maps / f"{image.stem}.npy")
    assert weights.shape[1] == VIT_GRID**2
    assert Image.open(maps / f"{image.stem}.png").size[0] > 0


def test_a_checkpoint_refuses_a_feature_file_of_another_backbone(vit_run, demo_cache):
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(vit_run["run"]),
            "--features",
            str(demo_cache["features"]),
            "--out",
            str(vit_run["root"] / "refused"),
        ],
    )
    line = error_line(result)
    assert "does not match the checkpoint's features" in line
    assert "backbone: 'vit_b_16' vs 'resnet50'" in line


def test_attention_maps_at_14x14_with_and_without_the_class_token():
    image = Image.new("RGB", (64, 64), (200, 180, 160))
    focused = np.zeros((1, VIT_GRID**2), dtype=np.float32)
    focused[0, 0] = 1.0  # all attention on the top-left cell
    png = Image.open(io.BytesIO(attention_png(image, ["cat"], focused, cell=56)))
    tile = np.asarray(png.convert("RGB"))[:56, 56:112].astype(int)  # the word's tile
    assert tile[:4, :4].sum() > tile[-4:, -4:].sum()  # bright where it looked, dark elsewhere
    token = np.concatenate([focused, [[5.0]]], axis=1)  # (1, 197): a kept class token last
    assert attention_png(image, ["cat"], token, cell=56, class_token=True)
    assert np.load(io.BytesIO(attention_npy(token, True))).shape == (1, 197)
    with pytest.raises(ValueError):
        attention_png(image, ["cat"], token, cell=56)  # 197 is no grid without the token


def test_decoders_take_their_input_width_and_position_code_from_the_shape():
    config = load_config(None, ["model.kind=transformer", "model.embed_dim=16", "model.heads=2"])
    vocab = Vocabulary(["<pad>", "<sos>", "<eos>", "<unk>", "a", "cat"])
    shape = contract.FeatureShape(VIT_GRID, 768, class_token=True)
    model = build_decoder(config.model, vocab, shape=shape).eval()
    assert model.region_positions().shape == (shape.regions, 16)
    encoded = model.encode(torch.randn(2, shape.regions, 768))
    assert encoded.keys.shape[3] == 197
    lstm = build_decoder(load_config().model, vocab, shape=shape)
    logits, alphas = lstm(
        torch.randn(1, shape.regions, 768),
        torch.tensor([0]),
        torch.tensor([[1, 4, 5, 2]]),
        torch.tensor([4]),
    )
    assert logits.shape[0] == 3 and alphas.shape == (1, 3, 197)


def test_a_file_without_shape_attributes_reads_as_resnet50(demo_cache, tmp_path):
    old = tmp_path / "old.h5"
    shutil.copy(demo_cache["features"], old)
    with h5py.File(old, "r+") as f:
        for key in ("regions", "channels"):
            del f.attrs[key]
    fingerprint, _, _ = open_cache(str(old))
    assert "regions" not in fingerprint
    assert contract.feature_shape(fingerprint) == contract.LEGACY_SHAPE
    with contract.open_h5(old) as f:
        check_policy(contract.read_attrs(f))
    rerun = CliRunner().invoke(
        main,
        [
            "extract",
            "--images",
            str(demo_cache["images"]),
            "--captions",
            str(demo_cache["captions"]),
            "--out",
            str(old),
            "--weights",
            "none",
            "--quiet",
        ],
    )
    assert rerun.exit_code == 0 and "already complete" in rerun.output, rerun.output


def test_shape_attributes_that_disagree_are_refused(demo_cache, tmp_path):
    bad = tmp_path / "bad.h5"
    shutil.copy(demo_cache["features"], bad)
    with h5py.File(bad, "r+") as f:
        f.attrs["regions"] = 50
    with pytest.raises(UserError, match="attribute 'regions'"):
        open_cache(str(bad))


def test_settings_that_cannot_work_are_refused_in_one_line(demo_cache, tmp_path):
    with pytest.raises(UserError, match="unknown backbone|features.backbone must be"):
        load_config(None, ["features.backbone=resnet9"])
    with pytest.raises(UserError, match="has no class token"):
        load_config(None, ["features.backbone=convnext_tiny", "features.class_token=true"])
    config = load_config(
        None,
        [
            f"data.images={json.dumps(str(demo_cache['images']))}",
            "features.backbone=convnext_tiny",
            "features.grid=8",
        ],
    )
    with pytest.raises(UserError, match="finer than convnext_tiny's own grid"):
        job_from_config(config)


def test_the_sweep_backbone_axis(tiny_images, tmp_path, capsys):
    captions = tmp_path / "captions.csv"
    captions.write_text("image,caption\na.png,a thing\nb.jpg,another thing\n")
    base = tmp_path / "base.toml"
    base.write_text(
        f'[data]\ncaptions = "{captions}"\nimages = "{tiny_images}"\n'
        f'[features]\npath = "{tmp_path / "f.h5"}"\nweights = "none"\nworkers = 0\n'
        'precision = "fp32"\n'
    )
    spec = tmp_path / "axis.toml"
    spec.write_text('[sweep]\nconfig = "base.toml"\nbackbones = ["resnet50", "convnext_tiny"]\n')
    sweep = load_sweep(spec)
    assert list(sweep.variants) == ["resnet50", "convnext_tiny"] and sweep.reference == "resnet50"
    assert sweep.compared_with("convnext_tiny") == "resnet50"
    extract_backbones(sweep, list(sweep.variants))
    capsys.readouterr()
    for path, name, channels in (
        (tmp_path / "f.h5", "resnet50", 2048),
        (tmp_path / "f-convnext_tiny.h5", "convnext_tiny", 768),
    ):
        with contract.open_complete(path) as f:
            assert contract.read_attrs(f)["backbone"] == name
            assert f[contract.FEATURES].shape == (2, 49, channels)
    extract_backbones(sweep, list(sweep.variants))
    again = capsys.readouterr()
    assert (again.out + again.err).count("already complete") == 2, again


def test_the_backbone_axis_ranks_by_cider_at_the_beam(tmp_path):
    (tmp_path / "base.toml").write_text('[features]\npath = "f.h5"\n')
    spec = tmp_path / "axis.toml"
    spec.write_text(
        '[sweep]\nconfig = "base.toml"\nbackbones = ["resnet50", "swin_t", "vit_b_16"]\n'
    )
    sweep = load_sweep(spec, ("features.grid=0",))
    assert 'features.path="f-vit_b_16.h5"' in sweep.variants["vit_b_16"].overrides
    rows = {
        "resnet50": {"CIDEr_beam3": [40.0, 1.0]},
        "swin_t": {"CIDEr_beam3": [52.5, 2.0]},
        "vit_b_16": {"CIDEr_beam3": [47.0, 0.5]},
    }
    assert ranking(rows, list(rows), "beam3") == ["swin_t", "vit_b_16", "resnet50"]
    versus = {"against": "resnet50", "difference": 0.125, "difference_ci": [0.1, 0.15]}
    summary = {
        "variants": rows,
        "ranking": ["swin_t", "vit_b_16", "resnet50"],
        "comparisons": {"beam3": {"swin_t": versus}},
    }
    line = ranking_line(sweep, summary)
    assert line.startswith("backbones by CIDEr beam 3 (vs resnet50): swin_t 52.5 (+12.5")
    assert line.endswith("vit_b_16 47.0 > resnet50 40.0")
