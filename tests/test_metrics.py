"""Caption metrics: parity with pycocoevalcap, key checks, and the no-java / broken-java paths."""

import os
import stat

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from pipeline.metrics.coco import (
    METRIC_NAMES,
    CaptionScorer,
    format_scores,
    java_available,
    score_captions,
    simple_tokenize,
)
from tests.conftest import install_logging_java, meteor_starts

needs_java = pytest.mark.skipif(not java_available(), reason="java is not installed")

REFERENCES = {
    "img1": [
        "A brown dog runs across the grass.",
        "a dog running on a green lawn",
        "The dog's running through a field!",
    ],
    "img2": ["Two people ride bikes down a city street.", "cyclists on a busy road"],
    "img3": [
        "A plate of food with broccoli (and rice).",
        "a dish with vegetables and meat",
        "Food on a white plate, next to a fork.",
        "broccoli and rice on a plate",
        "a healthy meal that isn't large",
    ],
}
PREDICTIONS = {
    "img1": "A dog running on the grass.",
    "img2": "two men riding bikes on a street",
    "img3": "A plate of broccoli and rice",
}


def _child_processes() -> list[str]:
    """'pid state name' of every process (alive or zombie) whose parent is this test process,
    but multiprocessing's resource tracker (started once by an earlier test's spawned child,
    it lives as long as the test process)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/comm") as handle:
                name = handle.read().strip()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read()
        except OSError:  # the process ended while we looked
            continue
        if b"multiprocessing.resource_tracker" in command:
            continue
        if int(fields[1]) == os.getpid():
            children.append(f"{entry} {fields[0]} {name}")
    return children


def _direct_pycocoevalcap(references, predictions):
    """What coco-caption's COCOEvalCap.evaluate computes, called step by step."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
    res = tokenizer.tokenize({k: [{"caption": predictions[k]}] for k in references})
    scores = dict(zip(METRIC_NAMES[:4], Bleu(4).compute_score(gts, res, verbose=0)[0], strict=True))
    meteor = Meteor()
    scores["METEOR"] = meteor.compute_score(gts, res)[0]
    meteor.meteor_p.stdout.close()  # Meteor.__del__ kills java but leaves these pipes open
    meteor.meteor_p.stderr.close()
    del meteor
    scores["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    scores["CIDEr"] = Cider().compute_score(gts, res)[0]
    return scores


@needs_java
def test_scores_equal_pycocoevalcap_called_directly(capfd):
    report = score_captions(REFERENCES, PREDICTIONS)
    printed = capfd.readouterr()
    expected = _direct_pycocoevalcap(REFERENCES, PREDICTIONS)

    assert report.tokenizer == "ptb"
    assert report.notes == []
    assert list(report.scores) == list(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert report.scores[name] == pytest.approx(expected[name], abs=1e-12), name
    assert 0 < report.scores["Bleu_1"] < 1 and report.scores["CIDEr"] > 0
    assert printed.out == "" and "PTBTokenizer" not in printed.err  # pycocoevalcap kept quiet
    assert _child_processes() == []  # no java left running or as a zombie


@needs_java
def test_simple_tokenizer_matches_ptb_on_ordinary_captions():
    captions = [
        "A man's bike isn't red.",
        "Two giraffes; one eating, the other looking (far away)!",
        "An old-fashioned clock tower at 12:00 in the U.S.",
        'a sign that says "STOP" -- on a pole...',
        "Kids' toys and a 3.5 m boat, 10,000 people & $5",
        "They're sure we'll see; can't won't",
        "",
    ]
    ptb = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})

    assert [simple_tokenize(c) for c in captions] == [ptb[i][0] for i in range(len(captions))]


@needs_java
def test_simple_tokenizer_path_gives_the_same_bleu_rouge_cider_here():
    with_java = score_captions(REFERENCES, PREDICTIONS, metrics=("Bleu_4", "ROUGE_L", "CIDEr"))
    without = score_captions(
        REFERENCES, PREDICTIONS, metrics=("Bleu_4", "ROUGE_L", "CIDEr"), use_java=False
    )

    assert with_java.tokenizer == "ptb" and without.tokenizer == "simple"
    assert without.scores == pytest.approx(with_java.scores)


def test_without_java_meteor_is_none_with_a_note_and_the_rest_is_computed():
    report = score_captions(REFERENCES, PREDICTIONS, use_java=False)

    assert report.scores["METEOR"] is None
    assert report.tokenizer == "simple"
    assert any(note.startswith("METEOR unavailable") for note in report.notes)
    for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert isinstance(report.scores[name], float) and report.scores[name] > 0, name


@pytest.mark.parametrize("use_java", [None, True])
def test_a_broken_java_becomes_notes_not_a_crash(tmp_path, monkeypatch, use_java):
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'Error: this JRE is broken' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")

    report = score_captions(REFERENCES, PREDICTIONS, use_java=use_java)

    assert not java_available()
    assert report.tokenizer == "simple"
    assert report.scores["METEOR"] is None
    assert any("METEOR unavailable" in note for note in report.notes)
    assert all(isinstance(report.scores[name], float) for name in ("Bleu_4", "ROUGE_L", "CIDEr"))
    assert _child_processes() == []


@needs_java
def test_one_scorer_starts_meteor_once_and_scores_like_separate_calls(tmp_path, monkeypatch):
    other = {**PREDICTIONS, "img1": "a cat sleeps on a sofa"}
    alone = score_captions(REFERENCES, other).scores  # a fresh METEOR process
    log = install_logging_java(tmp_path, monkeypatch)

    with CaptionScorer() as scorer:
        shared = [scorer.score(REFERENCES, p).scores for p in (PREDICTIONS, other)]

    assert shared[1] == alone  # exactly: METEOR's EVAL uses only the lines it is given
    assert shared[0]["METEOR"] != shared[1]["METEOR"]
    assert meteor_starts(log) == 1
    assert _child_processes() == []


@needs_java
def test_meteor_dying_becomes_a_note_on_this_and_later_calls(tmp_path, monkeypatch):
    install_logging_java(tmp_path, monkeypatch, meteor_exit="Error: could not reserve heap")

    with CaptionScorer(use_java=True) as scorer:
        reports = [scorer.score(REFERENCES, PREDICTIONS) for _ in range(2)]

    for report in reports:
        assert report.scores["METEOR"] is None and report.tokenizer == "ptb"
        assert len(report.notes) == 1 and "could not reserve heap" in report.notes[0]
        assert isinstance(report.scores["CIDEr"], float)
    assert _child_processes() == []


def test_perfect_predictions_score_bleu_one():
    perfect = {key: refs[1] for key, refs in REFERENCES.items()}

    report = score_captions(REFERENCES, perfect, use_java=False)

    for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L"):
        assert report.scores[name] == pytest.approx(1.0, abs=1e-6), name


def test_an_empty_prediction_scores_zero_instead_of_crashing():
    report = score_captions({"a": ["a cat on a mat"]}, {"a": ""}, use_java=False)

    assert report.scores["Bleu_1"] == pytest.approx(0.0, abs=1e-6)
    assert report.scores["ROUGE_L"] == 0.0


@pytest.mark.parametrize(
    ("predictions", "expected_id"),
    [
        ({**PREDICTIONS, "img9": "an extra image"}, "img9"),  # prediction without references
        ({k: v for k, v in PREDICTIONS.items() if k != "img2"}, "img2"),  # refs without prediction
        ({1: "a dog"}, "1"),  # int ids against str ids
    ],
)
def test_mismatched_keys_raise_value_error_naming_ids(predictions, expected_id):
    with pytest.raises(ValueError, match=expected_id):
        score_captions(REFERENCES, predictions, use_java=False)


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="no predictions"):
        score_captions({}, {}, use_java=False)
    with pytest.raises(ValueError, match="without reference captions"):
        score_captions({"a": []}, {"a": "a cat"}, use_java=False)
    with pytest.raises(ValueError, match="unknown metrics"):
        score_captions(REFERENCES, PREDICTIONS, metrics=("SPICE",), use_java=False)
    with pytest.raises(ValueError, match="unknown metrics"):
        CaptionScorer(metrics=(), use_java=False)
    with pytest.raises(ValueError, match="strings"):
        score_captions({"a": "a cat"}, {"a": "a cat"}, use_java=False)


def test_only_requested_metrics_are_reported_in_canonical_order():
    report = score_captions(REFERENCES, PREDICTIONS, metrics=("CIDEr", "Bleu_1"), use_java=False)

    assert list(report.scores) == ["Bleu_1", "CIDEr"]


def test_format_scores_is_one_line_on_the_x100_scale():
    text = format_scores({"Bleu_1": 0.6667, "Bleu_4": 0.191, "METEOR": None, "CIDEr": 1.0234})

    assert text == "BLEU-1 66.7  BLEU-4 19.1  METEOR n/a  CIDEr 102.3 (scores ×100)"


def test_per_image_cider_averages_to_the_corpus_score_and_ranks_images():
    mixed = {**PREDICTIONS, "img2": REFERENCES["img2"][0]}  # img2 predicted perfectly

    report = score_captions(REFERENCES, mixed, use_java=False)

    assert set(report.per_image_cider) == set(REFERENCES)
    mean = sum(report.per_image_cider.values()) / len(REFERENCES)
    assert mean == pytest.approx(report.scores["CIDEr"], abs=1e-9)
    assert max(report.per_image_cider, key=report.per_image_cider.get) == "img2"
    assert (
        score_captions(REFERENCES, PREDICTIONS, metrics=("Bleu_4",), use_java=False).per_image_cider
        == {}
    )
