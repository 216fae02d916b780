"""Merge-free sharded extraction: the finished file maps its shards (HDF5 virtual datasets).

The shards are made here by the same calls each torchrun rank makes (run_extraction on its
slice), so this runs in one process; tests/test_distributed_extract.py runs real torchrun.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pipeline import contract
from pipeline.dataset.store import FeatureStore
from pipeline.errors import UserError
from pipeline.extract.backbone import resolve_weights
from pipeline.extract.cli import extract_command
from pipeline.extract.extractor import ExtractJob, run_extraction
from pipeline.extract.sharded import join_shards, shard_bounds, shard_path

WORLD = 2


def sharded_file(folder: Path, count: int) -> tuple[Path, list[Path]]:
    """`count` images extracted as WORLD shards, joined into folder/f.h5."""
    images = folder / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(count)
    for i in range(count):
        coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((40, 36), Image.BILINEAR).save(images / f"{i:02d}.png")
    out = folder / "f.h5"
    job = ExtractJob(
        images_root=images,
        names=sorted(p.name for p in images.iterdir()),
        out=out,
        weights=resolve_weights("none"),
        device=torch.device("cpu"),
        precision="fp32",
        dtype="float16",
        batch_size=4,
        workers=0,
        progress=False,
    )
    shards = []
    for rank, (start, stop) in enumerate(shard_bounds(count, WORLD)):
        shards.append(shard_path(out, rank, WORLD))
        run_extraction(replace(job, names=job.names[start:stop], out=shards[-1]))
    join_shards(job, WORLD)
    return out, shards


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory) -> dict[int, tuple[Path, list[Path]]]:
    root = tmp_path_factory.mktemp("sharded")
    return {n: sharded_file(root / f"n{n:02d}", n) for n in (2, 6)}


def read_rows(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with contract.open_complete(path) as f:
        return (
            contract.read_image_ids(f),
            f[contract.STATUS][:],
            f[contract.FEATURES][:],
        )  # ids, (N,), (N, 49, 2048)


def test_finished_file_maps_the_shards_and_does_not_grow_with_n(two_sizes):
    sizes = {}
    for n, (out, shards) in two_sizes.items():
        ids, status, features = read_rows(out)
        parts = [read_rows(shard) for shard in shards]
        assert ids == [i for part in parts for i in part[0]] and len(ids) == n
        np.testing.assert_array_equal(status, np.concatenate([p[1] for p in parts]))
        np.testing.assert_array_equal(features, np.concatenate([p[2] for p in parts]))
        with contract.open_complete(out) as f:
            assert contract.is_virtual(f)
            assert all(f[name].is_virtual for name in contract.PER_ROW)
            assert f.attrs["num_images"] == n and contract.read_failed(f) == {}
        sizes[n] = out.stat().st_size
        assert sum(s.stat().st_size for s in shards) > n * contract.row_bytes("float16")
    assert abs(sizes[6] - sizes[2]) < 1024  # no second copy: the same few KB at any N
    assert sizes[6] < 64 * 1024


def test_stage_two_reads_it_like_a_single_file(two_sizes):
    out, shards = two_sizes[6]
    _, _, features = read_rows(out)
    store = FeatureStore(str(out))
    rows = np.array([5, 0, 3])
    np.testing.assert_array_equal(store.read(rows), features[rows])


def test_moved_together_it_still_reads_but_not_without_its_shards(two_sizes, tmp_path):
    out, shards = two_sizes[2]
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in (out, *shards):
        shutil.copy(path, moved / path.name)
    assert read_rows(moved / out.name)[0] == read_rows(out)[0]
    (moved / shards[1].name).unlink()
    with pytest.raises(UserError, match="shard files that are missing"):
        contract.open_complete(moved / out.name)


def test_consolidate_writes_one_self_contained_file(two_sizes, tmp_path):
    source, shards = two_sizes[6]
    folder = tmp_path / "copy"
    folder.mkdir()
    for path in (source, *shards):
        shutil.copy(path, folder / path.name)
    out = folder / source.name
    before = read_rows(out)
    result = CliRunner().invoke(extract_command, ["--consolidate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "deleted 2 shard files" in result.output
    assert sorted(p.name for p in folder.iterdir()) == [out.name]
    after = read_rows(out)
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[2], before[2])
    with contract.open_complete(out) as f:
        assert not contract.is_virtual(f)
        assert f[contract.FEATURES].chunks == (1, contract.REGIONS, contract.CHANNELS)
    again = CliRunner().invoke(extract_command, ["--consolidate", "--out", str(out)])
    assert again.exit_code == 0 and "already self-contained" in again.output
