"""Captions in other languages end to end: scoring on the run's own tokens, the SCST reward on
the same tokens, a Chinese run trained and evaluated through the CLI, checkpoints from before
vocab.tokenizer existed, and the English fallback tokenizer against Java PTB on real captions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from pipeline.captions.text import tokenize
from pipeline.cli import main
from pipeline.decoder.checkpoint import load_checkpoint, save_checkpoint
from pipeline.decoder.vocab import build_vocabulary
from pipeline.metrics.cider import CiderD
from pipeline.metrics.coco import java_available, score_captions, simple_tokenize
from pipeline.train.scst import CaptionReward
from tests.conftest import write_tiny_config

needs_java = pytest.mark.skipif(not java_available(), reason="java is not installed")
FLICKR8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"
# The demo's 46 words, glossed word by word into Chinese (the grammar does not matter here).
CHINESE = {
    "a": "一", "above": "上方", "and": "和", "at": "在", "background": "背景", "below": "下方",
    "blue": "蓝色", "bottom": "底部", "center": "中心", "circle": "圆", "circles": "圆形",
    "coloured": "彩色", "corner": "角", "green": "绿色", "in": "在", "including": "包括",
    "is": "是", "large": "大", "left": "左", "middle": "中间", "near": "附近", "next": "旁边",
    "of": "的", "on": "上", "one": "一个", "plain": "纯", "purple": "紫色", "red": "红色",
    "right": "右", "shape": "形状", "shapes": "图形", "side": "边", "single": "单",
    "small": "小", "square": "方块", "squares": "方形", "the": "", "there": "有", "three": "三",
    "to": "向", "top": "顶部", "triangle": "三角", "triangles": "三角形", "two": "两",
    "white": "白色", "yellow": "黄色",
}  # fmt: skip


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def own_token_scores(references: dict, predictions: dict, tokenizer: str) -> dict:
    """BLEU-4, ROUGE-L and CIDEr by pycocoevalcap itself on space-joined `tokenizer` tokens."""
    gts = {k: [" ".join(tokenize(r, tokenizer)) for r in refs] for k, refs in references.items()}
    res = {k: [" ".join(tokenize(predictions[k], tokenizer))] for k in references}
    return {
        "Bleu_4": Bleu(4).compute_score(gts, res, verbose=0)[0][3],
        "ROUGE_L": Rouge().compute_score(gts, res)[0],
        "CIDEr": Cider().compute_score(gts, res)[0],
    }


SPANISH_REFERENCES = {
    "1": ["Un perro corre sobre el césped.", "Un perro marrón en el césped", "El perro corre"],
    "2": ["Dos niños juegan en la playa.", "Niños jugando con la arena", "Dos niños en el mar"],
}
SPANISH_PREDICTIONS = {"1": "Un perro corre en el césped", "2": "Dos niños en la playa"}
CHINESE_REFERENCES = {
    "1": ["一只狗在草地上奔跑。", "草地上有一只棕色的狗", "狗在跑"],
    "2": ["两个孩子在海滩上玩。", "孩子们在玩沙子", "海边的两个孩子"],
}
CHINESE_PREDICTIONS = {"1": "一只狗在草地上跑", "2": "两个孩子在海滩上"}


@pytest.mark.parametrize(
    "references, predictions, language, tokenizer",
    [
        (SPANISH_REFERENCES, SPANISH_PREDICTIONS, "es", "words"),
        (CHINESE_REFERENCES, CHINESE_PREDICTIONS, "zh-Hans", "characters"),
    ],
)
def test_other_languages_are_scored_on_their_own_tokens(
    references, predictions, language, tokenizer
):
    report = score_captions(references, predictions, language=language, tokenizer=tokenizer)

    assert report.tokenizer == tokenizer
    assert report.scores["METEOR"] is None
    assert report.notes == [
        "METEOR unavailable: pycocoevalcap's METEOR 1.5 has English paraphrase data only "
        f"(data.language = {language!r}, vocab.tokenizer = {tokenizer!r})"
    ]
    expected = own_token_scores(references, predictions, tokenizer)
    for name, value in expected.items():
        assert report.scores[name] == pytest.approx(value, abs=1e-12), name
    assert report.scores["CIDEr"] > 0.5 and report.scores["Bleu_1"] > 0.5


def test_accents_count_where_the_legacy_tokens_would_not():
    references = {"1": ["el perro en el césped"]}
    right, wrong = {"1": "el perro en el césped"}, {"1": "el perro en el cásped"}
    score = {
        name: score_captions(references, p, ("Bleu_4",), language="es").scores["Bleu_4"]
        for name, p in (("right", right), ("wrong", wrong))
    }
    assert score["right"] == pytest.approx(1.0) and score["wrong"] < 0.7


def test_english_variants_keep_coco_captions_path():
    def scoring(language: str) -> str:
        return score_captions(
            SPANISH_REFERENCES, SPANISH_PREDICTIONS, ("Bleu_4",), False, language
        ).tokenizer

    assert [scoring(tag) for tag in ("en", "en-GB", "EN-us")] == ["simple"] * 3  # PTB's stand-in
    assert [scoring(tag) for tag in ("es", "fr", "de-AT")] == ["words"] * 3


def test_cider_reward_uses_the_runs_tokens():
    references = [CHINESE_REFERENCES["1"], CHINESE_REFERENCES["2"]]
    candidates = [CHINESE_PREDICTIONS["1"], CHINESE_PREDICTIONS["2"]]
    ours = CiderD(references, language="zh", tokenizer="characters").score_texts([0, 1], candidates)
    gts = {
        i: [" ".join(tokenize(r, "characters")) for r in refs] for i, refs in enumerate(references)
    }
    res = {i: [" ".join(tokenize(c, "characters"))] for i, c in enumerate(candidates)}
    np.testing.assert_allclose(ours, Cider().compute_score(gts, res)[1], rtol=0, atol=1e-6)
    # the English path would see each Chinese caption as one or two "words": far fewer n-grams
    english = CiderD(references).score_texts([0, 1], candidates)
    assert not np.allclose(ours, english)


def test_scst_reward_of_vocabulary_ids_equals_the_reward_of_the_decoded_text():
    references = [CHINESE_REFERENCES["1"], CHINESE_REFERENCES["2"]]
    vocab, _ = build_vocabulary([r for refs in references for r in refs], 1, "characters")
    texts = ["一只狗在草地上跑", "两个孩子在海"]
    ids = [vocab.encode(t, 16)[1:] for t in texts]  # words, then <eos>
    tokens = np.zeros((2, max(map(len, ids))), dtype=np.int64)
    for row, sequence in enumerate(ids):
        tokens[row, : len(sequence)] = sequence
    reward = CaptionReward(references, vocab, language="zh")
    rewards, _ = reward(np.array([0, 1]), tokens)
    decoded = [vocab.decode(sequence) for sequence in ids]
    assert decoded == texts
    expected = CiderD(references, language="zh", tokenizer="characters").score_texts([0, 1], texts)
    np.testing.assert_allclose(rewards, expected, rtol=0, atol=1e-12)
    assert (rewards > 1).all()  # partly right captions


def chinese_dataset(source: Path, target: Path) -> Path:
    """The demo's Karpathy file with every caption glossed into Chinese (same images)."""
    data = json.loads(source.read_text())
    for image in data["images"]:
        for sentence in image["sentences"]:
            sentence["raw"] = "".join(CHINESE[w] for w in sentence["tokens"]) + "。"
            sentence["tokens"] = tokenize(sentence["raw"], "characters")
    target.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_cache) -> dict[str, Path]:
    """A tiny English run and a tiny Chinese run (characters) on the shared demo cache."""
    root = tmp_path_factory.mktemp("languages")
    config = write_tiny_config(root, demo_cache)
    chinese = chinese_dataset(Path(demo_cache["captions"]), root / "chinese.json")
    for name, extra in (
        ("english", []),
        ("chinese", [f"data.captions={chinese}", "data.language=zh", "vocab.tokenizer=characters"]),
    ):
        sets = [arg for item in [f"train.name={name}", *extra] for arg in ("--set", item)]
        result = cli("train", "--config", config, *sets)
        assert result.exit_code == 0, result.output
    return {
        "root": root,
        "config": config,
        **{n: root / "runs" / n for n in ("english", "chinese")},
    }


def test_a_chinese_run_trains_decodes_and_scores_in_characters(runs, tmp_path):
    saved = load_checkpoint(runs["chinese"] / "best.pt")
    assert saved["config"]["vocab"]["tokenizer"] == "characters"
    assert saved["config"]["data"]["language"] == "zh"
    assert 'tokenizer = "characters"' in (runs["chinese"] / "config.toml").read_text()
    assert all(len(word) == 1 for word in saved["vocab"][4:])  # one character per token

    result = cli("evaluate", runs["chinese"], "--out", tmp_path / "ev", "--examples", "0")

    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "chinese" / "metrics.json").read_text())
    assert (metrics["language"], metrics["vocab_tokenizer"]) == ("zh", "characters")
    assert metrics["tokenizer"] == "characters" and metrics["scores"]["METEOR"] is None
    assert any("English paraphrase data only" in note for note in metrics["notes"])
    assert "note: METEOR unavailable" in result.output
    predictions = json.loads((tmp_path / "ev" / "chinese" / "predictions.json").read_text())
    assert all(p["caption"] and " " not in p["caption"] for p in predictions)
    assert " " not in metrics["baseline"]["caption"]
    references = {
        p["image_id"]: [s["raw"] for s in image["sentences"]]
        for p in predictions
        for image in json.loads((runs["root"] / "chinese.json").read_text())["images"]
        if Path(image["filename"]).stem == p["image_id"]
    }
    expected = own_token_scores(
        references, {p["image_id"]: p["caption"] for p in predictions}, "characters"
    )
    for name, value in expected.items():
        assert metrics["scores"][name] == pytest.approx(value, abs=1e-9), name
    report = (tmp_path / "ev" / "chinese" / "report.html").read_text()
    provenance = report[report.index('id="provenance"') :]
    assert "zh (data.language)" in provenance and "characters (vocab.tokenizer)" in provenance
    assert "the run&#x27;s own character tokens" in provenance


def old_copy(run: Path, target: Path) -> Path:
    """`run` as a checkpoint saved before vocab.tokenizer and data.language existed."""
    target.mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        payload = load_checkpoint(run / name)
        del payload["config"]["vocab"]["tokenizer"], payload["config"]["data"]["language"]
        save_checkpoint(payload, target / name)
    return target


def test_old_checkpoints_load_and_evaluate_exactly_as_before(runs, tmp_path):
    old = old_copy(runs["english"], tmp_path / "runs" / "old")
    result = cli("evaluate", runs["english"], old, "--out", tmp_path / "ev", "--examples", "0")
    assert result.exit_code == 0, result.output
    scores = {}
    for name in ("english", "old"):
        metrics = json.loads((tmp_path / "ev" / name / "metrics.json").read_text())
        predictions = (tmp_path / "ev" / name / "predictions.json").read_text()
        scores[name] = (metrics["scores"], metrics["baseline"], metrics["loss"], predictions)
        assert metrics["language"] == "en"
        assert metrics["vocab_tokenizer"] == ("ascii" if name == "old" else "words")
    assert scores["old"] == scores["english"]


def test_old_checkpoints_resume_and_start_new_runs_with_their_tokenizer(runs, tmp_path):
    old = old_copy(runs["english"], tmp_path / "runs" / "old")
    (old / "metrics.jsonl").write_text((runs["english"] / "metrics.jsonl").read_text())

    resumed = cli("train", "--resume", old, "--set", "train.epochs=3")

    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(old / "last.pt")["config"]["vocab"]["tokenizer"] == "ascii"
    started = cli(
        "train",
        "--config",
        runs["config"],
        "--init",
        old / "best.pt",
        "--set",
        f"train.out_dir={tmp_path / 'runs'}",
        "--set",
        "train.name=next",
        "--set",
        "train.epochs=1",
    )
    assert started.exit_code == 0, started.output
    assert "vocab.tokenizer: 'ascii', as the --init checkpoint's (not 'words')" in started.output
    assert 'tokenizer = "ascii"' in (tmp_path / "runs" / "next" / "config.toml").read_text()


@needs_java
def test_simple_tokenizer_equals_ptb_on_the_demo_and_on_constructions_it_handles(tmp_path):
    from pipeline.captions.demo_data import generate_demo_data

    generate_demo_data(tmp_path / "data", n_images=40, seed=1, size=64)
    images = json.loads((tmp_path / "data" / "dataset.json").read_text())["images"]
    captions = [s["raw"] for image in images for s in image["sentences"]]
    captions += [
        "A dog runs. The cat sleeps.",  # a period inside the caption
        "A man in the U.S. Army, in the U.S.",  # abbreviations, also caption-final
        "Mr. Smith and J. Doe at St. Paul's",
        "a slip 'n' slide and rock 'n' roll",
        "I'm gonna wanna cannot (see) [it] {now}",
        "He said \"hi\" and 'bye'",
    ]
    ptb = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    assert [simple_tokenize(c) for c in captions] == [ptb[i][0] for i in range(len(captions))]


@needs_java
@pytest.mark.skipif(
    not (FLICKR8K / "Flickr8k.token.txt").is_file(), reason=f"no Flickr8k captions in {FLICKR8K}"
)
def test_simple_tokenizer_agrees_with_ptb_on_real_flickr8k_captions():
    lines = (FLICKR8K / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines()
    captions = [line.split("\t", 1)[1] for line in lines[::10] if "\t" in line]  # 4,046
    ptb = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    same = sum(simple_tokenize(c) == ptb[i][0] for i, c in enumerate(captions))
    assert same / len(captions) >= 0.995
