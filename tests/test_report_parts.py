"""The report's parts on crafted inputs: health numbers, gallery selection, curves, charts."""

from __future__ import annotations

import json

import pytest

from pipeline.infer.curves import read_history, training_charts
from pipeline.infer.health import decode_health, has_repetition
from pipeline.infer.selection import select_gallery
from pipeline.infer.svg import Series, line_chart, nice_ticks

REFS = [["a red circle on the left"], ["a blue square on the right", "a blue square"]]


def test_health_of_a_collapsed_decoder():
    captions = ["a a red red red"] * 3 + ["a blue square"]
    health = decode_health(captions, [False, False, False, True], [REFS[0]] * 4, 20)

    assert health.unfinished_share == 0.75
    assert health.distinct_share == 0.5
    assert health.top_repeated == [("a a red red red", 3)]
    assert health.top_caption_share == 0.75
    assert health.mean_length == (5 * 3 + 3) / 4
    assert health.mean_reference_length == 6
    assert health.vocabulary_used == 4 and health.vocabulary_size == 20
    assert health.repetition_share == 0.75
    assert set(health.flags) == {"top_caption_share", "unfinished_share", "repetition_share"}
    assert "75%" in health.flags["top_caption_share"]


def test_health_of_varied_captions_raises_no_flag():
    captions = ["a red circle on the left", "a blue square on the right"]
    health = decode_health(captions, [True, True], REFS, 10)

    assert health.flags == {}
    assert health.top_repeated == [] and health.distinct_share == 1.0
    assert json.loads(json.dumps(health.to_json()))["flags"] == {}


@pytest.mark.parametrize(
    ("caption", "repeated"),
    [
        ("a red circle to the left of a blue square", False),  # "a" twice, no bigram twice
        ("a dog a dog on grass", True),  # bigram twice
        ("the the cat", True),  # stutter
        ("", False),
    ],
)
def test_repetition_means_a_stutter_or_a_repeated_bigram(caption, repeated):
    assert has_repetition(caption.split()) is repeated


def test_gallery_groups_are_disjoint_ranked_and_seeded():
    cider = [0.1 * i for i in range(30)]  # image i has CIDEr 0.1 i
    groups = select_gallery(cider, 5)

    assert groups["best"] == [29, 28, 27, 26, 25]
    assert groups["worst"] == [0, 1, 2, 3, 4]
    assert len(groups["random"]) == 5 and set(groups["random"]) <= set(range(5, 25))
    assert select_gallery(cider, 5) == groups
    small = select_gallery([0.5, 0.2, 0.9], 12)
    assert small == {"best": [2, 0, 1], "worst": [], "random": []}


def test_history_skips_a_torn_last_line(tmp_path):
    lines = [
        json.dumps(
            {
                "epoch": e,
                "train_loss": 3.0 - e,
                "val_loss": 3.5 - e,
                "lr": 1e-3,
                "CIDEr": 0.1 * e,
                "Bleu_4": 0.05 * e,
            }
        )
        for e in (1, 2, 3)
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 4, "train_lo')

    history = read_history(tmp_path)

    assert [h["epoch"] for h in history] == [1, 2, 3]
    charts = training_charts(history, epoch=3)
    assert len(charts) == 3
    assert [c.count("<polyline") for c in charts] == [2, 2, 1]
    assert read_history(tmp_path / "nowhere") == []


def test_chart_breaks_lines_at_missing_values_and_handles_no_data():
    chart = line_chart([Series("CIDEr", [1, 2, 3, 4, 5], [1.0, 2.0, None, 3.0, 4.0])], "t")
    assert chart.count("<polyline") == 2 and chart.count("<circle") == 4
    assert "no data" in line_chart([Series("x", [1], [None])], "empty")
    ticks = nice_ticks(0.13, 0.87)
    assert ticks[0] <= 0.13 and ticks[-1] >= 0.87 and 3 <= len(ticks) <= 7
