"""The demo data in Spanish and Chinese: the same images, the grammar's agreement and measure
words, English unchanged to the byte, and each language through the whole pipeline."""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.captions.demo_data import COLOURS, LOCATIONS, SHAPES, demo_scenes, generate_demo_data
from pipeline.captions.demo_grammar import (
    CHINESE,
    ENGLISH,
    GRAMMARS,
    SPANISH,
    noun,
    sentence,
    where,
)
from pipeline.captions.text import join_tokens, tokenize
from pipeline.cli import main
from tests.conftest import TINY_CONFIG

N_IMAGES = 60
# sha256 of the English demo's caption files (300 images, seed 0) as written before the demo
# had languages: English must stay byte-identical (the scene testbed replays this stream).
ENGLISH_SHA256 = {
    "results.csv": "b6ffc6050036a5a793b6efa992acf5cc1d33a911ba10623293add401fcdbe333",
    "dataset.json": "47701408eabb10c6fd49759cef9a94f809099503cad011662cb595f25098b01a",
}


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_english_demo_files_are_byte_identical_to_before_languages(tmp_path):
    generate_demo_data(tmp_path / "en", n_images=300, seed=0)
    for name, digest in ENGLISH_SHA256.items():
        assert hashlib.sha256((tmp_path / "en" / name).read_bytes()).hexdigest() == digest, name
    assert "language" not in json.loads((tmp_path / "en" / "dataset.json").read_text())


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("languages")
    for language in GRAMMARS:
        generate_demo_data(root / language, n_images=N_IMAGES, seed=2, size=96, language=language)
    return {language: root / language for language in GRAMMARS}


def test_every_language_draws_the_same_images_and_splits(demos):
    data = {
        lang: json.loads((folder / "dataset.json").read_text()) for lang, folder in demos.items()
    }
    for language in ("es", "zh"):
        for name in [f"images/demo_{i:05d}.jpg" for i in range(N_IMAGES)]:
            assert (demos[language] / name).read_bytes() == (demos["en"] / name).read_bytes()
        splits = [(i["filename"], i["split"]) for i in data[language]["images"]]
        assert splits == [(i["filename"], i["split"]) for i in data["en"]["images"]]
        assert data[language]["language"] == language


def test_every_grammar_has_all_the_words_of_the_demo():
    for grammar in GRAMMARS.values():
        assert set(grammar.colours) == set(COLOURS)
        assert set(grammar.nouns) == {*SHAPES, "shape"}
        assert set(grammar.templates) == set(ENGLISH.templates)
        assert set(grammar.relations) == set(ENGLISH.relations)
        assert all(len(phrases) == LOCATIONS for phrases in grammar.where.values())
        assert len({p for phrases in grammar.where.values() for p in phrases}) == 9 * LOCATIONS


def test_spanish_colours_agree_with_gender_and_number():
    assert noun("red", "circle")(SPANISH) == "un círculo rojo"
    assert noun("red", "shape")(SPANISH) == "una forma roja"
    assert noun("red", "circle", 2)(SPANISH) == "dos círculos rojos"
    assert noun("yellow", "triangle", 3)(SPANISH) == "tres triángulos amarillos"
    assert noun("blue", "square", size="small")(SPANISH) == "un cuadrado azul pequeño"
    assert noun("white", "shape", "single")(SPANISH) == "una única forma blanca"


def test_chinese_has_measure_words_and_no_spaces():
    located = sentence("located", noun=noun("red", "circle"), where=where(0, 0, 0))
    assert located(CHINESE) == "左上角有一个红色的圆形"
    assert located(ENGLISH) == "a red circle in the top left corner"
    assert noun("green", "triangle", 2)(CHINESE) == "两个绿色的三角形"
    assert noun("blue", "square", size="large")(CHINESE) == "一个蓝色的大正方形"


def captions_of(folder: Path) -> list[list[str]]:
    images = json.loads((folder / "dataset.json").read_text())["images"]
    return [[s["raw"] for s in image["sentences"]] for image in images]


def colours_named(caption: str, grammar) -> set[str]:
    """The demo colours a caption names, whatever their form (Chinese: within its text)."""
    units = caption if grammar is CHINESE else set(tokenize(caption, grammar.tokenizer))
    return {c for c, forms in grammar.colours.items() if any(form in units for form in forms)}


def test_captions_say_in_each_language_what_english_says(demos):
    scenes = demo_scenes(N_IMAGES, seed=2, size=96).scenes
    english = captions_of(demos["en"])
    for language, grammar in (("es", SPANISH), ("zh", CHINESE)):
        for image, texts in enumerate(captions_of(demos[language])):
            assert len(set(texts)) == 5
            shown = {shape.colour for shape in scenes[image]}
            for text, original in zip(texts, english[image], strict=True):
                assert colours_named(text, grammar) == colours_named(original, ENGLISH)
                assert colours_named(text, grammar) <= shown


def test_spanish_demo_captions_agree_throughout(demos):
    forms = {}  # noun form -> the colour forms that agree with it
    for word in SPANISH.nouns.values():
        gender = ("m", "f").index(word.gender)
        forms[word.singular] = {c[gender] for c in SPANISH.colours.values()}
        forms[word.plural] = {c[gender + 2] for c in SPANISH.colours.values()}
    colours = {form for agreeing in SPANISH.colours.values() for form in agreeing}
    checked = 0
    for texts in captions_of(demos["es"]):
        for text in texts:
            words = tokenize(text, SPANISH.tokenizer)
            for noun_form, colour in zip(words, words[1:], strict=False):
                if noun_form in forms and colour in colours:
                    assert colour in forms[noun_form], text
                    checked += 1
    assert checked > 5 * N_IMAGES
    assert any("formas" in t or "círculos" in t for ts in captions_of(demos["es"]) for t in ts)


def test_chinese_demo_captions_count_with_measure_words(demos):
    for texts in captions_of(demos["zh"]):
        for text in texts:
            assert " " not in text and "个" in text
            counted = re.sub("三角形|排成一[行列]", "", text)  # 三 and 一 that are not counts
            assert not re.search("[一两三](?!个)", counted), text
    tokens = json.loads((demos["zh"] / "dataset.json").read_text())["images"][0]["sentences"][0]
    assert tokens["tokens"] == tokenize(tokens["raw"], "characters")


def test_demo_data_cli_takes_a_language_and_says_which_config_keys_to_set(tmp_path):
    result = cli("demo-data", tmp_path / "zh", "--images", 4, "--language", "zh")
    assert result.exit_code == 0, result.output
    assert (
        "captions in zh: train and evaluate with --set data.language=zh "
        "--set vocab.tokenizer=characters"
    ) in result.output
    english = cli("demo-data", tmp_path / "en", "--images", 4)
    assert "--set data.language" not in english.output
    refused = cli("demo-data", tmp_path / "fr", "--language", "fr")
    assert refused.exit_code == 2 and "'fr' is not one of" in refused.output


@pytest.fixture(scope="module", params=["es", "zh"])
def run(request, tmp_path_factory) -> dict:
    """demo-data -> extract -> train -> evaluate -> caption, all through the CLI."""
    language = request.param
    grammar = GRAMMARS[language]
    root = tmp_path_factory.mktemp(f"pipeline-{language}")
    data, features = root / "data", root / "features.h5"
    assert cli("demo-data", data, "--images", 40, "--language", language).exit_code == 0
    extracted = cli(
        "extract", "--images", data / "images", "--captions", data / "dataset.json",
        "--out", features, "--weights", "none", "--workers", 0, "--quiet",
    )  # fmt: skip
    assert extracted.exit_code == 0, extracted.output
    config = root / "tiny.toml"
    config.write_text(
        TINY_CONFIG.format(
            captions=data / "dataset.json", images=data / "images", features=features, runs=root
        )
    )
    sets = {
        "data.language": language,
        "vocab.tokenizer": grammar.tokenizer,
        "train.name": "run",
        "train.lr": 0.01,
        "train.batch_size": 8,
        "train.selection_metric": "loss",
        "train.epochs": 4,
    }
    trained = cli(
        "train", "--config", config, *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    )
    assert trained.exit_code == 0, trained.output
    evaluated = cli(
        "evaluate", root / "run", "--out", root / "ev", "--beam-size", 1, "--gallery", 2
    )
    assert evaluated.exit_code == 0, evaluated.output
    image = data / "images" / "demo_00003.jpg"
    captioned = cli(
        "caption", image, "--checkpoint", root / "run" / "best.pt", "--beam-size", 1,
        "--html", root / "caption.html",
    )  # fmt: skip
    assert captioned.exit_code == 0, captioned.output
    return {
        "language": language,
        "tokenizer": grammar.tokenizer,
        "vocab": json.loads((root / "run" / "vocab.json").read_text())["itos"][4:],
        "predictions": json.loads((root / "ev" / "run" / "predictions.json").read_text()),
        "metrics": json.loads((root / "ev" / "run" / "metrics.json").read_text()),
        "report": (root / "ev" / "run" / "report.html").read_text(),
        "caption": captioned.output.splitlines()[0].split(": ", 1)[1],
        "caption_html": (root / "caption.html").read_text(),
        "test_references": [
            s["raw"]
            for image in json.loads((data / "dataset.json").read_text())["images"]
            if image["split"] == "test"
            for s in image["sentences"]
        ],
    }


def test_the_vocabulary_holds_the_languages_words(run):
    if run["language"] == "es":
        assert {"círculo", "una", "forma"} <= set(run["vocab"])
        assert any(not word.isascii() for word in run["vocab"])
    else:
        assert {"个", "红", "圆"} <= set(run["vocab"])
        assert all(len(word) == 1 for word in run["vocab"])


def test_predictions_are_joined_as_the_language_writes(run):
    captions = [p["caption"] for p in run["predictions"]] + [run["caption"]]
    assert all(captions), captions
    for caption in captions:
        tokens = tokenize(caption, run["tokenizer"])
        assert set(tokens) <= set(run["vocab"])
        assert caption == join_tokens(tokens, run["tokenizer"])
        if run["language"] == "zh":
            assert " " not in caption and len(tokens) == len(caption)


def test_metrics_and_reports_name_the_language_and_show_the_captions(run):
    metrics = run["metrics"]
    assert (metrics["language"], metrics["vocab_tokenizer"]) == (run["language"], run["tokenizer"])
    assert metrics["tokenizer"] == run["tokenizer"]
    for prediction in run["predictions"]:
        assert html.escape(prediction["caption"]) in run["report"]
    assert sum(html.escape(text) in run["report"] for text in run["test_references"]) >= 5
    assert html.escape(run["caption"]) in run["caption_html"]
