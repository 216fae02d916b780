"""Caption readers on small real files in every supported layout."""

import json

import pytest

from pipeline.captions.readers import (
    FORMATS,
    detect_format,
    is_safe_image_name,
    read_captions,
)
from pipeline.errors import UserError

FLICKR30K_CSV = """image_name| comment_number| comment
1000092795.jpg| 0| Two young guys with shaggy hair look at their hands while hanging out in the yard .
1000092795.jpg| 1| Two young , White males are outside near many "bushes" .
1000092795.jpg| 2| A man | in a green shirt .
2199200615.jpg| 4   A dog runs across the grass .
2199200615.jpg| 0|
2199200615.jpg| 1|\x20\x20\x20
2199200615.jpg| 2
"""

FLICKR8K_CSV = """image,caption
1000268201_693b08cb0e.jpg,A child in a pink dress is climbing up a set of stairs in an entry way .
1000268201_693b08cb0e.jpg,"A girl, in pink, going into a wooden building ."
1001773457_577c3a7d70.jpg,A black dog and a spotted dog are fighting
1001773457_577c3a7d70.jpg,
"""

FLICKR8K_TOKEN = (
    "1000268201_693b08cb0e.jpg#0\tA child in a pink dress is climbing up a set of stairs .\n"
    "1000268201_693b08cb0e.jpg#1\tA girl going into a wooden building .\n"
    "\n"
    "1001773457_577c3a7d70.jpg#0\tA black dog and a spotted dog are fighting\n"
    "1001773457_577c3a7d70.jpg#1\t\n"
)

KARPATHY_COCO = {
    "dataset": "coco",
    "images": [
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000391895.jpg",
            "cocoid": 391895,
            "imgid": 0,
            "split": "test",
            "sentences": [
                {"raw": "A man riding a bike. ", "tokens": ["a", "man"]},
                {"raw": "Someone on a motorcycle.", "tokens": []},
            ],
        },
        {
            "filepath": "train2014",
            "filename": "COCO_train2014_000000057870.jpg",
            "cocoid": 57870,
            "imgid": 1,
            "split": "restval",
            "sentences": [
                {"raw": "A restaurant with chairs.", "tokens": []},
                {"raw": "   ", "tokens": []},
            ],
        },
        {
            "filepath": "train2014",
            "filename": "COCO_train2014_000000000009.jpg",
            "cocoid": 9,
            "imgid": 2,
            "split": "val",
            "sentences": [{"raw": "A lunch box.", "tokens": []}],
        },
    ],
}

KARPATHY_FLICKR = {
    "dataset": "flickr8k",
    "images": [
        {
            "filename": "1000268201_693b08cb0e.jpg",
            "imgid": 0,
            "split": "train",
            "sentences": [{"raw": "A child climbing stairs .", "tokens": ["a", "child"]}],
        },
        {
            "filename": "1001773457_577c3a7d70.jpg",
            "imgid": 1,
            "split": "test",
            "sentences": [
                {"raw": "Two dogs fighting .", "tokens": ["two", "dogs"]},
                {"raw": "Dogs play .", "tokens": ["dogs", "play"]},
            ],
        },
    ],
}

COCO_CAPTIONS = {
    "info": {"description": "tiny"},
    "images": [
        {"id": 391895, "file_name": "COCO_val2014_000000391895.jpg"},
        {"id": 522418, "file_name": "COCO_val2014_000000522418.jpg"},
    ],
    "licenses": [],
    "annotations": [
        {"image_id": 391895, "id": 1, "caption": "A man with a red helmet on a small moped."},
        {"image_id": 522418, "id": 2, "caption": "A woman cutting a large white cake.\n"},
        {"image_id": 391895, "id": 3, "caption": "Man riding a motor bike on a dirt road."},
        {"image_id": 522418, "id": 4, "caption": ""},
    ],
}


@pytest.fixture
def write(tmp_path):
    """Write text or JSON to tmp_path/name and return the path."""

    def _write(name, content):
        path = tmp_path / name
        text = content if isinstance(content, str) else json.dumps(content)
        path.write_text(text, encoding="utf-8")
        return path

    return _write


def test_flickr30k_csv_strips_recovers_and_drops(write):
    table = read_captions(write("results.csv", FLICKR30K_CSV))
    frame = table.frame
    assert table.format == "flickr30k-csv"
    assert list(frame.columns) == ["image", "caption", "split", "image_id"]
    assert frame["image"].tolist() == ["1000092795.jpg"] * 3 + ["2199200615.jpg"]
    assert frame["caption"].tolist() == [
        "Two young guys with shaggy hair look at their hands while hanging out in the yard .",
        'Two young , White males are outside near many "bushes" .',
        "A man | in a green shirt .",
        "A dog runs across the grass .",
    ]
    assert frame["image_id"].tolist() == ["1000092795"] * 3 + ["2199200615"]
    assert frame["split"].isna().all()
    assert table.recovered == 1
    assert table.dropped_empty == 3
    assert table.rejected == []
    assert table.images() == ["1000092795.jpg", "2199200615.jpg"]
    assert table.summary() == (
        "2 images, 4 captions, 2.00 captions per image "
        "(dropped 3 empty, 0 punctuation-only, recovered 1 malformed, "
        "rejected 0 unsafe names)"
    )


def test_flickr8k_csv_keeps_quoted_commas_and_drops_empty(write):
    table = read_captions(write("captions.txt", FLICKR8K_CSV))
    assert table.format == "flickr8k-csv"
    assert table.frame["caption"].tolist() == [
        "A child in a pink dress is climbing up a set of stairs in an entry way .",
        "A girl, in pink, going into a wooden building .",
        "A black dog and a spotted dog are fighting",
    ]
    assert table.images() == ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg"]
    assert table.frame["image_id"].tolist()[0] == "1000268201_693b08cb0e"
    assert (table.dropped_empty, table.recovered) == (1, 0)


def test_flickr8k_token_file(write):
    table = read_captions(write("Flickr8k.token.txt", FLICKR8K_TOKEN))
    assert table.format == "flickr8k-token"
    assert table.frame["image"].tolist() == ["1000268201_693b08cb0e.jpg"] * 2 + [
        "1001773457_577c3a7d70.jpg"
    ]
    assert table.frame["caption"].tolist()[1] == "A girl going into a wooden building ."
    assert table.dropped_empty == 1


def test_karpathy_coco_uses_filepath_cocoid_and_maps_restval(write):
    table = read_captions(write("dataset_coco.json", KARPATHY_COCO))
    frame = table.frame
    assert table.format == "karpathy"
    assert frame["image"].tolist() == [
        "val2014/COCO_val2014_000000391895.jpg",
        "val2014/COCO_val2014_000000391895.jpg",
        "train2014/COCO_train2014_000000057870.jpg",
        "train2014/COCO_train2014_000000000009.jpg",
    ]
    assert frame["split"].tolist() == ["test", "test", "train", "val"]
    assert frame["image_id"].tolist() == ["391895", "391895", "57870", "9"]
    assert frame["caption"].tolist()[0] == "A man riding a bike."
    assert table.dropped_empty == 1
    assert table.summary().endswith("; splits: train 1, val 1, test 1")


def test_karpathy_flickr_without_cocoid_or_filepath(write):
    table = read_captions(write("dataset_flickr8k.json", KARPATHY_FLICKR))
    frame = table.frame
    assert (
        frame["image"].tolist() == ["1000268201_693b08cb0e.jpg"] + ["1001773457_577c3a7d70.jpg"] * 2
    )
    assert frame["image_id"].tolist() == ["1000268201_693b08cb0e"] + ["1001773457_577c3a7d70"] * 2
    assert frame["split"].tolist() == ["train", "test", "test"]


def test_karpathy_unknown_split_is_a_user_error(write):
    data = json.loads(json.dumps(KARPATHY_FLICKR))
    data["images"][0]["split"] = "holdout"
    with pytest.raises(UserError, match="unknown split 'holdout'"):
        read_captions(write("dataset_bad.json", data))


def test_coco_captions_json(write):
    table = read_captions(write("captions_val2014.json", COCO_CAPTIONS))
    frame = table.frame
    assert table.format == "coco"
    assert frame["image"].tolist() == [
        "COCO_val2014_000000391895.jpg",
        "COCO_val2014_000000522418.jpg",
        "COCO_val2014_000000391895.jpg",
    ]
    assert frame["image_id"].tolist() == ["391895", "522418", "391895"]
    assert frame["caption"].tolist()[1] == "A woman cutting a large white cake."
    assert frame["split"].isna().all()
    assert table.dropped_empty == 1
    assert table.images() == ["COCO_val2014_000000391895.jpg", "COCO_val2014_000000522418.jpg"]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("results.txt", FLICKR30K_CSV, "flickr30k-csv"),
        ("captions.csv", FLICKR8K_CSV, "flickr8k-csv"),
        ("tokens.csv", FLICKR8K_TOKEN, "flickr8k-token"),
        ("karpathy.txt", KARPATHY_COCO, "karpathy"),
        ("coco.data", COCO_CAPTIONS, "coco"),
    ],
)
def test_detect_format_from_content_not_extension(write, name, content, expected):
    path = write(name, content)
    assert detect_format(path) == expected
    assert read_captions(path).format == expected


@pytest.mark.parametrize("content", [FLICKR30K_CSV, FLICKR8K_CSV, FLICKR8K_TOKEN])
def test_windows_line_endings_and_bom_read_like_unix(tmp_path, content):
    unix = tmp_path / "unix.txt"
    unix.write_text(content, encoding="utf-8")
    windows = tmp_path / "windows.txt"
    windows.write_bytes(b"\xef\xbb\xbf" + content.replace("\n", "\r\n").encode("utf-8"))
    assert read_captions(windows).frame.equals(read_captions(unix).frame)


def test_detect_format_without_header_line(write):
    body = FLICKR30K_CSV.split("\n", 1)[1]
    path = write("noheader.csv", body)
    assert detect_format(path) == "flickr30k-csv"
    assert len(read_captions(path).frame) == 4


def test_forced_format_is_used(write):
    path = write("captions.txt", FLICKR8K_CSV)
    assert read_captions(path, format="flickr8k-csv").format == "flickr8k-csv"
    with pytest.raises(UserError, match="as coco"):
        read_captions(path, format="coco")
    with pytest.raises(UserError, match="as flickr8k-csv"):
        read_captions(write("results.csv", FLICKR30K_CSV), format="flickr8k-csv")


@pytest.mark.parametrize(
    "content",
    [
        "just some words\nmore words\n",
        "",
        {"images": [{"file": "a.jpg"}]},
        {"something": 1},
        "{not json",
    ],
)
def test_unrecognised_content_is_a_user_error_naming_the_formats(write, content):
    path = write("mystery.txt", content)
    for call in (detect_format, read_captions):
        with pytest.raises(UserError) as info:
            call(path)
        assert all(fmt in info.value.message for fmt in FORMATS)


def test_binary_file_is_a_user_error(tmp_path):
    path = tmp_path / "image.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\xfe\x80")
    with pytest.raises(UserError):
        read_captions(path)


def test_unknown_format_name_is_a_user_error(write):
    with pytest.raises(UserError, match="unknown caption format 'flickr'"):
        read_captions(write("captions.txt", FLICKR8K_CSV), format="flickr")


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="captions file not found"):
        read_captions(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="captions file not found"):
        detect_format(tmp_path / "nope.csv")


def test_unsafe_names_are_rejected_and_reported_while_the_rest_is_read(write):
    content = (
        "image_name| comment_number| comment\n"
        "../x.jpg| 0| escapes upward\n"
        "/etc/passwd| 0| absolute\n"
        "a/../../x.jpg| 0| sneaky\n"
        "../x.jpg| 1| same name twice\n"
        "./good.jpg| 0| A fine caption .\n"
        "sub//dir/ok.jpg| 0| Another caption .\n"
    )
    table = read_captions(write("results.csv", content))
    assert table.frame["image"].tolist() == ["good.jpg", "sub/dir/ok.jpg"]
    assert table.frame["image_id"].tolist() == ["good", "ok"]
    assert [name for name, _ in table.rejected] == ["../x.jpg", "/etc/passwd", "a/../../x.jpg"]
    assert all(reason for _, reason in table.rejected)
    assert "rejected 3 unsafe names" in table.summary()


def test_all_names_unsafe_is_a_user_error(write):
    with pytest.raises(UserError, match="unsafe"):
        read_captions(write("results.csv", "../a.jpg| 0| x\n/b.jpg| 0| y\n"))


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("123.jpg", True),
        ("val2014/COCO_val2014_000000391895.jpg", True),
        ("./a.jpg", True),
        ("a..b.jpg", True),
        ("", False),
        ("   ", False),
        (".", False),
        ("../x.jpg", False),
        ("a/../../x.jpg", False),
        ("a/..", False),
        ("/etc/passwd", False),
        (" /etc/passwd", False),
        ("C:/Windows/x.jpg", False),
        ("c:x.jpg", False),
        ("..\\x.jpg", False),
        ("a\\b.jpg", False),
        ("a\x00.jpg", False),
    ],
)
def test_is_safe_image_name(name, safe):
    assert is_safe_image_name(name) is safe


def test_punctuation_only_captions_are_dropped_and_counted(write):
    path = write(
        "results.csv",
        "image_name| comment_number| comment\n"
        "a.jpg| 0| A dog .\n"
        "a.jpg| 1| .\n"
        "a.jpg| 2|  ?! ...\n"
        "b.jpg| 0| \n"
        "b.jpg| 1| Two cats, sleeping.\n",
    )
    table = read_captions(path)
    assert table.frame["caption"].tolist() == ["A dog .", "Two cats, sleeping."]
    assert (table.dropped_empty, table.dropped_punctuation) == (1, 2)
    assert "dropped 1 empty, 2 punctuation-only" in table.summary()
