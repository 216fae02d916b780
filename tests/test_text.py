"""Caption tokenizers in many languages (pipeline.captions.text), the vocabulary that uses them, and
the config keys that choose them (vocab.tokenizer, data.language)."""

from __future__ import annotations

import json
import random
import re
import string
import unicodedata

import pytest
from click.testing import CliRunner

from pipeline.captions.demo_data import generate_demo_data
from pipeline.captions.text import join_tokens, normalize, tokenize
from pipeline.cli import main
from pipeline.config import TOKENIZERS, checkpoint_config, load_config
from pipeline.decoder.vocab import Vocabulary, build_vocabulary


@pytest.fixture(scope="module")
def demo_captions(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("text")
    generate_demo_data(root / "data", n_images=60, seed=5, size=64)
    images = json.loads((root / "data" / "dataset.json").read_text())["images"]
    return [s["raw"] for image in images for s in image["sentences"]]


@pytest.mark.parametrize(
    "caption, tokens",
    [
        ("Un perro corre sobre el césped.", ["un", "perro", "corre", "sobre", "el", "césped"]),
        ("¿Dónde está el niño?", ["dónde", "está", "el", "niño"]),
        ("Die Straße ist NASS", ["die", "strasse", "ist", "nass"]),  # casefold: ß -> ss
        ("Un chat à côté d’une fenêtre", ["un", "chat", "à", "côté", "d'une", "fenêtre"]),
        ("Kırmızı bir köpek koşuyor.", ["kırmızı", "bir", "köpek", "koşuyor"]),
        ("كلب بني يركض على العشب.", ["كلب", "بني", "يركض", "على", "العشب"]),
        ("Собака бежит по траве", ["собака", "бежит", "по", "траве"]),
        ("Δύο σκύλοι παίζουν", ["δύο", "σκύλοι", "παίζουν"]),
    ],
)
def test_words_keep_letters_and_accents(caption, tokens):
    assert tokenize(caption, "words") == tokens
    assert tokenize(caption) == tokens  # "words" is the default


def test_words_keep_combining_marks_that_backslash_w_misses():
    caption = "एक लड़का पानी में खेल रहा है।"  # "a boy is playing in the water."
    tokens = tokenize(caption, "words")
    assert tokens == ["एक", "लड़का", "पानी", "में", "खेल", "रहा", "है"]
    marks = [c for c in "".join(tokens) if unicodedata.category(c).startswith("M")]
    assert len(marks) == 9  # vowel signs, nukta and anusvara stay inside their words
    assert re.findall(r"\w+", "लड़का") != ["लड़का"]  # what a \w+ regex would make of it
    assert "".join(tokens) == caption.replace(" ", "").rstrip("।")
    vowelled = "كَلْبٌ يَرْكُضُ"  # Arabic with harakat (Mn): whole words
    assert tokenize(vowelled) == ["كَلْبٌ", "يَرْكُضُ"]


def test_turkish_casefold_is_language_independent():
    # str.casefold knows no Turkish rules: İ keeps its dot as a combining mark and I becomes i
    assert tokenize("İstanbul’da BIR köpek") == ["i̇stanbul'da", "bir", "köpek"]
    assert tokenize("ılık") == ["ılık"]  # dotless ı is a letter of its own


def test_nfc_makes_decomposed_and_composed_accents_equal():
    decomposed, composed = "Cafe\u0301 ame\u0301ricain", "Caf\u00e9 am\u00e9ricain"
    assert decomposed != composed
    assert tokenize(decomposed) == tokenize(composed) == ["café", "américain"]
    assert tokenize("\u00c5ngstr\u00f6m", "characters") == tokenize(
        "A\u030angstro\u0308m", "characters"
    )
    assert normalize("l’été") == "l'été"


def test_words_equal_the_legacy_ascii_tokenizer_on_ascii(demo_captions):
    edge_cases = [
        "A dog's ball, in the PARK.",
        "a black-and-white dog",
        "2 dogs at 10:30, 3.5 m apart; 1,000 people",
        "the dogs' bowls and rock'n'roll in the '90s",
        "it's 90's o'clock ' lone ' apostrophes 'quoted'",
        "snake_case and e-mail@example.com #1 (yes) [no] {x}",
        "don't can't won't y'all",
        "",
        "   ",
        "...!!!",
    ]
    rng = random.Random(0)
    noise = ["".join(rng.choice(string.printable) for _ in range(40)) for _ in range(300)]
    for caption in [*demo_captions, *edge_cases, *noise]:
        assert tokenize(caption, "words") == tokenize(caption, "ascii"), caption


def test_legacy_ascii_tokenizer_loses_letters_outside_a_to_z():
    assert tokenize("Un perro corre sobre el césped", "ascii") == [
        *["un", "perro", "corre", "sobre", "el", "c", "sped"]
    ]
    assert tokenize("两只狗", "ascii") == []


@pytest.mark.parametrize(
    "caption, tokens, joined",
    [
        ("两只狗在草地上奔跑。", list("两只狗在草地上奔跑"), "两只狗在草地上奔跑"),
        ("犬が公園で走っている。", list("犬が公園で走っている"), "犬が公園で走っている"),
        (
            "一只猫在 iPhone 12 旁边",
            [*"一只猫在", "iphone", "12", *"旁边"],
            "一只猫在iphone 12旁边",
        ),
        ("3只狗，2只猫！", ["3", "只", "狗", "2", "只", "猫"], "3只狗2只猫"),
        ("แมวนั่ง", ["แ", "ม", "ว", "นั่", "ง"], "แมวนั่ง"),  # Thai: marks stay on their base
    ],
)
def test_characters_split_scripts_written_without_spaces(caption, tokens, joined):
    assert tokenize(caption, "characters") == tokens
    assert join_tokens(tokens, "characters") == joined
    assert tokenize(joined, "characters") == tokens


def test_join_tokens_round_trips_words():
    caption = "Un chat à côté d’une fenêtre"
    tokens = tokenize(caption, "words")
    assert join_tokens(tokens, "words") == "un chat à côté d'une fenêtre"
    assert tokenize(join_tokens(tokens, "words"), "words") == tokens


def test_unknown_tokenizer_is_refused():
    with pytest.raises(ValueError, match="unknown tokenizer 'letters'"):
        tokenize("a dog", "letters")
    assert set(TOKENIZERS) == {"words", "characters", "ascii"}


def test_vocabulary_encodes_and_decodes_with_its_tokenizer(tmp_path):
    captions = ["两只狗在草地上。", "一只狗在草地上奔跑", "两只猫"]
    vocab, counts = build_vocabulary(captions, min_freq=2, tokenizer="characters")
    assert vocab.tokenizer == "characters"
    assert counts["狗"] == 2 and counts["猫"] == 1
    assert "猫" not in vocab.stoi and "狗" in vocab.stoi
    ids = vocab.encode("两只狗在草地上。", max_len=10)
    assert vocab.decode(ids) == "两只狗在草地上"  # no spaces between the characters
    assert vocab.decode(vocab.encode("两只猫", 10)) == "两只<unk>"
    vocab.save(tmp_path / "vocab.json")
    again = Vocabulary.load(tmp_path / "vocab.json")
    assert again.itos == vocab.itos and again.tokenizer == "characters"
    spanish, _ = build_vocabulary(["Un perro corre sobre el césped"], 1)
    assert spanish.decode(spanish.encode("el perro sobre el césped", 10)) == (
        "el perro sobre el césped"
    )


def test_vocab_json_without_a_tokenizer_is_an_old_ascii_one(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"itos": ["<pad>", "<sos>", "<eos>", "<unk>"]}))
    assert Vocabulary.load(tmp_path / "vocab.json").tokenizer == "ascii"


def test_config_keys_are_validated_and_saved(tmp_path):
    config = load_config(overrides=["data.language=zh-Hans", "vocab.tokenizer=characters"])
    assert (config.data.language, config.vocab.tokenizer) == ("zh-Hans", "characters")
    defaults = load_config()
    assert (defaults.data.language, defaults.vocab.tokenizer) == ("en", "words")
    assert load_config(overrides=["vocab.tokenizer=ascii"]).vocab.tokenizer == "ascii"
    config_file = tmp_path / "c.toml"
    config_file.write_text('[data]\ncaptions = "x"\n')
    runner = CliRunner()
    for override, fragment in [
        ("data.language=english", "data.language must be a BCP-47 language tag"),
        ("data.language=en_US", "got 'en_US'"),
        ("vocab.tokenizer=letters", "vocab.tokenizer must be one of words, characters, ascii"),
    ]:
        result = runner.invoke(main, ["train", "--config", str(config_file), "--set", override])
        assert result.exit_code == 2, result.output
        assert fragment in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_checkpoint_config_fills_in_what_old_checkpoints_were_trained_with():
    old = {"vocab": {"min_freq": 1}, "train": {"epochs": 2}}
    config = checkpoint_config(old, ["train.epochs=3"])
    assert (config.vocab.tokenizer, config.data.language) == ("ascii", "en")
    assert config.train.epochs == 3 and config.vocab.min_freq == 1
    assert old == {"vocab": {"min_freq": 1}, "train": {"epochs": 2}}  # the saved dict is untouched
    new = {"vocab": {"tokenizer": "characters"}, "data": {"language": "ja"}}
    config = checkpoint_config(new)
    assert (config.vocab.tokenizer, config.data.language) == ("characters", "ja")
