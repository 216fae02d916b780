"""`captioner inspect`: a caption file as extract and train would read it, through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.captions.text import tokenize
from pipeline.cli import main

FLICKR8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"
needs_flickr8k = pytest.mark.skipif(
    not (FLICKR8K / "Flickr8k.token.txt").is_file(),
    reason=f"the real Flickr8k captions are not at {FLICKR8K}",
)
QUIRK = "2258277193_586949ec62.jpg"  # 4 captions; its fifth sits under QUIRK + ".1"


def inspect(*args) -> object:
    return CliRunner().invoke(main, ["inspect", *(str(a) for a in args)])


def report(*args) -> dict:
    """The --json object of a usable file."""
    result = inspect(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def refused(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert fragment in result.output, result.output


def karpathy(path: Path, images: list[tuple[str, str, list[str]]], **top) -> Path:
    """A Karpathy dataset_*.json of (filename, split, captions)."""
    entries = [
        {"filename": name, "split": split, "sentences": [{"raw": c} for c in captions]}
        for name, split, captions in images
    ]
    path.write_text(json.dumps({"images": entries, **top}, ensure_ascii=False), encoding="utf-8")
    return path


@needs_flickr8k
def test_the_real_flickr8k_file_with_its_official_split_lists():
    captions = FLICKR8K / "Flickr8k.token.txt"
    result = inspect(captions)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"captions: {captions} (flickr8k-token)"
    assert lines[1] == "images: 8,093; captions: 40,460 (per image: min 1, mean 5.00, max 5)"
    assert lines[2] == f"fewer captions than most images: 2 ({QUIRK}.1: 1, {QUIRK}: 4)"
    assert lines[4] == (
        f"splits (images): train 6,000, val 1,000, test 1,000 (official split lists in {FLICKR8K})"
    )
    assert lines[5].startswith("dropped 93 images in no split list (e.g. ")
    assert lines[-1] == "usable: yes"

    data = report(captions)
    train = set((FLICKR8K / "Flickr_8k.trainImages.txt").read_text().split())
    words = Counter(
        w
        for line in captions.read_text().splitlines()
        if line.split("#")[0] in train
        for w in tokenize(line.split("\t", 1)[1])
    )
    assert (data["images"], data["captions_read"], data["splits"]) == (
        8093,
        40460,
        {"train": 6000, "val": 1000, "test": 1000},
    )
    assert data["split_origin"]["source"] == "listed"
    assert len(data["split_origin"]["unlisted"]) == 93
    assert {QUIRK, f"{QUIRK}.1"} <= set(data["split_origin"]["unlisted"])
    assert data["vocabulary"]["size"] == 4 + sum(1 for c in words.values() if c >= 5)
    assert data["vocabulary"]["most_frequent"][:3] == [[w, c] for w, c in words.most_common(3)]
    assert data["usable"] and data["problems"] == []


def test_a_karpathy_file_brings_its_splits_and_the_config_sets_the_vocabulary(tmp_path):
    captions = karpathy(
        tmp_path / "dataset_flickr8k.json",
        [
            ("a.jpg", "train", ["A dog runs on the grass.", "a dog"]),
            ("b.jpg", "restval", ["Two dogs play in the park with a ball"]),
            ("c.jpg", "val", ["a cat sleeps"]),
            ("d.jpg", "test", ["a bird"]),
        ],
    )
    config = tmp_path / "c.toml"
    config.write_text("[vocab]\nmin_freq = 2\nmax_len = 4\n")
    data = report(captions, "--config", config)
    assert (data["format"], data["split_origin"]["source"]) == ("karpathy", "karpathy")
    assert data["splits"] == {"train": 2, "val": 1, "test": 1}
    assert data["captions_per_image"] == {"min": 1, "mean": 1.25, "max": 2}
    assert data["vocabulary"] == {
        "size": 7,  # the four specials, "a", "dog", "the" (restval counts as train)
        "min_freq": 2,
        "train_words": 13,
        "most_frequent": [["a", 3], ["dog", 2], ["the", 2], ["runs", 1], ["on", 1]]
        + [["grass", 1], ["two", 1], ["dogs", 1], ["play", 1], ["in", 1]],
    }
    assert data["lengths"] == {"min": 2, "mean": 4.4, "max": 9, "max_len": 4, "longer": 2}
    text = inspect(captions, "--config", config).output
    assert "splits (images): train 2, val 1, test 1 (the caption file's own (karpathy))" in text
    assert "2 captions longer than vocab.max_len 4 (cut to it in training)" in text
    refused(inspect(captions), "no train word occurs vocab.min_freq = 5 times")


def test_a_csv_with_an_empty_caption_and_an_unsafe_name_is_read_and_split(tmp_path):
    rows = [f"{i}.jpg,a dog number {i}" for i in range(10)]
    rows += ['3.jpg,""', "4.jpg,!!!", "../../etc/passwd,a secret"]
    captions = tmp_path / "captions.txt"
    captions.write_text("image,caption\n" + "\n".join(rows) + "\n")
    result = inspect(captions)
    assert result.exit_code == 0, result.output
    assert (
        "read: dropped 1 empty and 1 punctuation-only captions, recovered 0 malformed rows, "
        "rejected 1 unsafe names (../../etc/passwd: '..' component)"
    ) in result.output
    assert (
        "splits (images): train 8, val 1, test 1 (computed: data.split_ratios, data.split_seed)"
    ) in result.output
    data = report(captions)
    assert data["rejected"] == {"../../etc/passwd": "'..' component"}
    assert data["dropped"] == {"empty": 1, "punctuation_only": 1, "recovered_malformed": 0}
    assert (data["images"], data["captions_read"]) == (10, 10)


def test_spanish_captions_with_the_words_tokenizer(tmp_path):
    captions = tmp_path / "results.csv"
    spanish = ["Un niño corre por el césped", "Una niña y un niño en el césped", "El niño"]
    captions.write_text("".join(f"{i}.jpg| 0| {c}\n" for i in range(10) for c in spanish))
    sets = (
        "--set",
        "data.language=es",
        "--set",
        "vocab.tokenizer=words",
        "--set",
        "vocab.min_freq=1",
    )
    result = inspect(captions, *sets)
    assert result.exit_code == 0, result.output
    assert "language: es (data.language); tokenizer: words (vocab.tokenizer)\n" in result.output
    data = report(captions, *sets)
    assert dict(data["vocabulary"]["most_frequent"]) == {
        "niño": 24, "el": 24, "césped": 16, "un": 16, "corre": 8, "en": 8, "niña": 8, "por": 8,
        "una": 8, "y": 8,
    }  # fmt: skip
    assert (data["lengths"]["min"], data["lengths"]["max"]) == (2, 8)


def test_chinese_captions_with_the_characters_tokenizer(tmp_path):
    splits = ["train"] * 4 + ["val", "test"]
    captions = karpathy(
        tmp_path / "dataset.json",
        [(f"{i}.jpg", s, ["两只狗在草地上奔跑。", "一只狗"]) for i, s in enumerate(splits)],
        language="zh",
    )
    chinese = ("--set", "data.language=zh", "--set", "vocab.tokenizer=characters")
    data = report(captions, *chinese)
    assert data["vocabulary"]["most_frequent"][:3] == [["只", 8], ["狗", 8], ["两", 4]]
    assert data["vocabulary"]["size"] == 4 + 2  # min_freq 5: 只 and 狗
    assert (data["lengths"]["min"], data["lengths"]["max"]) == (3, 9)
    assert data["language_note"] == ""
    english = inspect(captions, "--set", "vocab.min_freq=1")  # the file says zh
    assert english.exit_code == 0, english.output
    assert "the file says its captions are in 'zh', not data.language 'en'" in english.output


def test_an_image_in_two_splits_is_reported_not_a_crash(tmp_path):
    captions = karpathy(
        tmp_path / "dataset.json",
        [("a.jpg", "train", ["a dog"] * 5), ("b.jpg", "val", ["a dog"] * 5)]
        + [("c.jpg", "test", ["a cat"]), ("c.jpg", "train", ["a cat"])],
    )
    result = inspect(captions, "--set", "vocab.min_freq=1")
    refused(result, "overlapping splits: the caption file puts 1 image(s) in more than one split")
    assert "c.jpg (test+train)" in result.output
    assert "splits (images): train 1, val 1, test 0" in result.output  # c.jpg left out
    assert "is not usable: the caption file puts 1 image(s)" in result.output
    assert "which training refuses; the test split has no image" in result.output


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("image,caption\n", "no captions found"),
        ("image,caption\n/a.jpg,a dog\n../b.jpg,a cat\n", "no captions found (2 unsafe"),
        ("image,caption\na.jpg,a dog\nb.jpg,a dog\n", "the val split has no image"),
    ],
)
def test_files_that_cannot_train_exit_2_with_the_reason(tmp_path, content, fragment):
    captions = tmp_path / "captions.txt"
    captions.write_text(content)
    refused(inspect(captions, "--set", "vocab.min_freq=1"), fragment)
    refused(inspect(captions, "--set", "vocab.min_freq=1", "--json"), fragment)


def images_folder(tmp_path: Path, names: list[str]) -> Path:
    """A folder holding a small file (never decoded) for each of `names`."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"\xff\xd8 not decoded")
    return folder


TEN = [
    (f"{i}.jpg", split, ["a dog"] * 5) for i, split in enumerate(["train"] * 8 + ["val", "test"])
]


def test_images_are_checked_with_a_stat(tmp_path):
    captions = karpathy(tmp_path / "dataset.json", TEN)
    folder = images_folder(
        tmp_path, ["0.jpg", "4.jpg", "5.jpg", "6.jpg", "7.jpg", "8.jpg", "9.jpg"]
    )
    (folder / "1.jpg").write_bytes(b"")
    (folder / "2.jpg").mkdir()
    data = report(captions, "--images", folder)
    assert data["image_files"] == {
        "folder": str(folder),
        "checked": 10,
        "problems": {"1.jpg": "zero bytes", "2.jpg": "not a regular file", "3.jpg": "missing"},
    }
    text = inspect(captions, "--images", folder).output
    assert (
        f"images in {folder}: 10 checked; 1 zero bytes (1.jpg); 1 not a regular file (2.jpg); "
        "1 missing (3.jpg)\n"
    ) in text
    (folder / "8.jpg").unlink()
    refused(
        inspect(captions, "--images", folder), f"no image of the val split is readable in {folder}"
    )
    refused(inspect(captions, "--images", tmp_path / "none"), "images folder not found")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: no permission to lose")
def test_an_image_without_read_permission_is_reported(tmp_path):
    captions = karpathy(tmp_path / "dataset.json", TEN)
    folder = images_folder(tmp_path, [name for name, _, _ in TEN])
    (folder / "0.jpg").chmod(0)
    data = report(captions, "--images", folder)
    assert data["image_files"]["problems"] == {"0.jpg": "no read permission"}


def test_the_cli_still_starts_without_pandas_torch_or_pillow():
    code = "import sys, pipeline.cli; print(sorted({'pandas', 'torch', 'PIL'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
