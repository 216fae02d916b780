"""Caption-file readers: five public layouts in, one normalized `CaptionTable` out.

Formats: Kaggle Flickr30k `results.csv` (`|`-separated), Kaggle Flickr8k `captions.txt`
(csv), original `Flickr8k.token.txt` (`name#n<TAB>caption`), Karpathy split JSON
(`dataset_*.json`) and COCO `captions_*.json`. Every reader yields rows of
(image, caption, split, image_id); image names that would resolve outside the images
folder are removed and reported, reading goes on. Flickr8k's official split lists, beside its
caption file or in `data.split_lists`, are found and read here too (`split_lists_folder`,
`read_split_lists`); `pipeline.dataset.splits` applies them.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from pipeline.errors import UserError

FORMATS = ("flickr30k-csv", "flickr8k-csv", "flickr8k-token", "karpathy", "coco")
COLUMNS = ("image", "caption", "split", "image_id")
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}

_FLICKR30K_HEADER = ["image_name", "comment_number", "comment"]
_FLICKR30K_ROW = re.compile(r"^[^|]+\|\s*\d+\s*\|")
_TOKEN_ROW = re.compile(r"^[^\t#]+#\d+\t")
_NUMBER_THEN_TEXT = re.compile(r"^(\d+)(?:\s+(.*))?$", re.DOTALL)
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SNIFF_CHARS = 65536


@dataclass
class CaptionTable:
    """All captions of one file, one row per caption, plus what reading had to fix or drop."""

    frame: pd.DataFrame  # columns: image, caption, split, image_id (see module docstring)
    format: str
    dropped_empty: int = 0
    dropped_punctuation: int = 0
    recovered: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    language: str = ""  # the language the file names (a Karpathy "language" key), "" if none

    def language_note(self, language: str) -> str:
        """ "" or, when the file names a language other than `language` (data.language), a
        sentence saying so."""
        if not self.language or self.language == language:
            return ""
        return (
            f"the file says its captions are in {self.language!r}, not data.language "
            f"{language!r} (set data.language and vocab.tokenizer to match)"
        )

    def images(self) -> list[str]:
        """Unique image names in first-appearance order."""
        return list(dict.fromkeys(self.frame["image"]))

    def summary(self) -> str:
        """One line: images, captions, captions per image, fixes, and images per split."""
        n_images = self.frame["image"].nunique()
        n_captions = len(self.frame)
        per_image = n_captions / n_images if n_images else 0.0
        text = (
            f"{n_images:,} images, {n_captions:,} captions, {per_image:.2f} captions per image "
            f"(dropped {self.dropped_empty:,} empty, {self.dropped_punctuation:,} "
            f"punctuation-only, recovered {self.recovered:,} malformed, "
            f"rejected {len(self.rejected):,} unsafe names)"
        )
        splits = self.frame.dropna(subset=["split"]).groupby("split", sort=False)["image"].nunique()
        if len(splits):
            order = [name for name in ("train", "val", "test") if name in splits.index]
            text += "; splits: " + ", ".join(f"{name} {splits[name]:,}" for name in order)
        return text


@dataclass
class _Rows:
    """Accumulator the format parsers fill; `table()` applies the name-safety filter."""

    image: list[str] = field(default_factory=list)
    caption: list[str] = field(default_factory=list)
    split: list[str | None] = field(default_factory=list)
    image_id: list[str] = field(default_factory=list)
    dropped_empty: int = 0
    dropped_punctuation: int = 0
    recovered: int = 0

    def add(
        self, image: object, caption: object, split: str | None = None, image_id: object = None
    ) -> None:
        """Keep one caption row; a missing, blank or punctuation-only caption is only counted."""
        text = caption.strip() if isinstance(caption, str) else ""
        if not text:
            self.dropped_empty += 1
            return
        if not any(char.isalnum() for char in text):
            self.dropped_punctuation += 1
            return
        name = str(image).strip() if image is not None else ""
        self.image.append(name)
        self.caption.append(text)
        self.split.append(split)
        self.image_id.append(str(image_id) if image_id is not None else "")

    def table(self, fmt: str, path: Path) -> CaptionTable:
        """Normalize names, drop unsafe ones (reported), fill missing ids with the file stem."""
        keep: list[int] = []
        rejected: dict[str, str] = {}
        names: list[str] = []
        for index, raw in enumerate(self.image):
            reason = unsafe_name_reason(raw)
            if reason:
                rejected.setdefault(raw, reason)
                continue
            keep.append(index)
            names.append(normalize_image_name(raw))
        if not keep:
            detail = f" ({len(rejected)} unsafe image names rejected)" if rejected else ""
            raise _bad(path, fmt, f"no captions found{detail}")
        ids = [
            self.image_id[i] or PurePosixPath(name).stem
            for i, name in zip(keep, names, strict=True)
        ]
        frame = pd.DataFrame(
            {
                "image": names,
                "caption": [self.caption[i] for i in keep],
                "split": pd.Series([self.split[i] for i in keep], dtype=object),
                "image_id": ids,
            },
            columns=list(COLUMNS),
        )
        return CaptionTable(
            frame,
            fmt,
            self.dropped_empty,
            self.dropped_punctuation,
            self.recovered,
            list(rejected.items()),
        )


def unsafe_name_reason(name: str) -> str:
    """Why an image name could escape the images folder ("" when it is safe)."""
    if not isinstance(name, str) or not name.strip():
        return "empty name"
    name = name.strip()
    if _CONTROL.search(name):
        return "control character in name"
    if "\\" in name:
        return "backslash in name"
    if name.startswith("/"):
        return "absolute path"
    if _DRIVE.match(name):
        return "drive letter"
    if ".." in name.split("/"):
        return "'..' component"
    if not normalize_image_name(name):
        return "empty name"
    return ""


def is_safe_image_name(name: str) -> bool:
    """True when `name` is a relative POSIX path that stays inside the images folder."""
    return unsafe_name_reason(name) == ""


def normalize_image_name(name: str) -> str:
    """POSIX relative form: "./a//b.jpg" -> "a/b.jpg" (no "." or empty components)."""
    return "/".join(part for part in name.strip().split("/") if part not in ("", "."))


def _lines(path: Path) -> Iterator[str]:
    """Text lines without line endings; a file that is not UTF-8 text is a UserError."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            for line in handle:
                yield line.rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not a UTF-8 text caption file ({error.reason}); "
            f"formats: {', '.join(FORMATS)}"
        ) from None


def _is_flickr30k_header(line: str) -> bool:
    return [part.strip().lower() for part in line.split("|")] == _FLICKR30K_HEADER


def _read_flickr30k_csv(path: Path) -> _Rows:
    """Kaggle Flickr30k results.csv: `name| n| comment`, quotes are literal text.

    The known broken row `name| 4   comment` (second separator missing) is recovered.
    """
    rows = _Rows()
    seen_first = False
    for line in _lines(path):
        if not line.strip():
            continue
        if not seen_first:
            seen_first = True
            if _is_flickr30k_header(line):
                continue
        parts = line.split("|", 2)
        if len(parts) == 3:
            rows.add(parts[0], parts[2])
        elif len(parts) == 2:
            match = _NUMBER_THEN_TEXT.match(parts[1].strip())
            comment = (match.group(2) or "") if match else parts[1]
            if comment.strip():
                rows.recovered += 1
            rows.add(parts[0], comment)
        else:
            rows.add(parts[0], None)
    return rows


def _read_flickr8k_csv(path: Path) -> _Rows:
    """Kaggle Flickr8k captions.txt: csv with header `image,caption`, quoted commas allowed."""
    rows = _Rows()
    reader = csv.reader(_lines(path))
    header = [cell.strip().lower() for cell in next(reader, [])]
    if header[:2] != ["image", "caption"]:
        found = ",".join(header)
        raise _bad(path, "flickr8k-csv", f"expected a header 'image,caption', got {found!r}")
    for record in reader:
        if not record or not any(cell.strip() for cell in record):
            continue
        if len(record) > 2:  # unquoted commas inside the caption
            rows.recovered += 1
        rows.add(record[0], ",".join(record[1:]) if len(record) > 1 else None)
    return rows


def _read_flickr8k_token(path: Path) -> _Rows:
    """Original Flickr8k.token.txt (also Flickr30k results_*.token): `name#n<TAB>caption`."""
    rows = _Rows()
    for line in _lines(path):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        if not tab:  # separator lost: split on the first whitespace after the key
            key, _, caption = line.strip().partition(" ")
            if caption.strip():
                rows.recovered += 1
        name = key.rsplit("#", 1)[0] if "#" in key else key
        rows.add(name, caption)
    return rows


def _load_json(path: Path, fmt: str) -> object:
    try:
        return _parse_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _bad(path, fmt, f"not valid JSON ({error})") from None


def _parse_json(path: Path) -> object:
    """`json.load` of a caption file; JSON nested too deeply for Python is one UserError."""
    try:
        with path.open(encoding="utf-8-sig") as handle:
            return json.load(handle)
    except RecursionError:
        raise UserError(f"cannot read {path}: its JSON is nested too deeply") from None


def _json_format(data: object) -> str | None:
    """ "karpathy" / "coco" from the JSON structure, None when it is neither."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return None
    if isinstance(data.get("annotations"), list):
        return "coco"
    images = data["images"]
    if images and all(isinstance(entry, dict) and "sentences" in entry for entry in images[:10]):
        return "karpathy"
    return None


def _records(data: object, key: str, path: Path, fmt: str) -> list[dict]:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise _bad(path, fmt, f"no {key!r} list")
    if not all(isinstance(entry, dict) for entry in data[key]):
        raise _bad(path, fmt, f"every entry of {key!r} must be an object")
    return data[key]


def _read_karpathy(path: Path, data: object) -> _Rows:
    """Karpathy dataset_*.json: per-image sentences and split; restval counts as train."""
    rows = _Rows()
    for entry in _records(data, "images", path, "karpathy"):
        filename = entry.get("filename")
        if not isinstance(filename, str):
            raise _bad(path, "karpathy", "an image entry has no 'filename'")
        image = f"{entry['filepath']}/{filename}" if entry.get("filepath") else filename
        split = entry.get("split")
        if split is not None and (not isinstance(split, str) or split not in KARPATHY_SPLITS):
            raise _bad(
                path,
                "karpathy",
                f"unknown split {split!r} for {image} "
                f"(expected one of {', '.join(KARPATHY_SPLITS)})",
            )
        split = KARPATHY_SPLITS.get(split)
        image_id = entry.get("cocoid")
        for sentence in entry.get("sentences") or []:
            rows.add(image, _sentence_text(sentence), split, image_id)
    return rows


def _sentence_text(sentence: object) -> str | None:
    """A Karpathy sentence's raw text, or its tokens joined when raw is missing."""
    if not isinstance(sentence, dict):
        return None
    raw = sentence.get("raw")
    if isinstance(raw, str) and raw.strip():
        return raw
    tokens = sentence.get("tokens")
    return " ".join(str(token) for token in tokens) if isinstance(tokens, list) else None


def _read_coco(path: Path, data: object) -> _Rows:
    """COCO captions_*.json: images (id, file_name) joined with annotations (image_id, caption)."""
    names = {}
    for entry in _records(data, "images", path, "coco"):
        if not _is_id(entry.get("id")) or not isinstance(entry.get("file_name"), str):
            raise _bad(
                path, "coco", "an image entry lacks an 'id' (a number or text) or 'file_name'"
            )
        names[entry["id"]] = entry["file_name"]
    rows = _Rows()
    for annotation in _records(data, "annotations", path, "coco"):
        image_id = annotation.get("image_id")
        if not _is_id(image_id):
            raise _bad(
                path, "coco", f"an annotation's image_id must be a number or text, got {image_id!r}"
            )
        if image_id not in names:
            raise _bad(path, "coco", f"an annotation refers to unknown image id {image_id!r}")
        rows.add(names[image_id], annotation.get("caption"), None, image_id)
    return rows


def _is_id(value: object) -> bool:
    """A COCO id: an integer or a string (not a bool, a float, a list or an object)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _text_format(first_line: str) -> str | None:
    """Text layout from a file's first non-empty line, None when unrecognised."""
    if _is_flickr30k_header(first_line) or _FLICKR30K_ROW.match(first_line):
        return "flickr30k-csv"
    if _TOKEN_ROW.match(first_line):
        return "flickr8k-token"
    header = next(csv.reader([first_line]), [])
    if [cell.strip().lower() for cell in header[:2]] == ["image", "caption"]:
        return "flickr8k-csv"
    return None


def _bad(path: Path, fmt: str, detail: str) -> UserError:
    return UserError(
        f"cannot read {path} as {fmt}: {detail} "
        f"(formats: {', '.join(FORMATS)}; default auto-detects)"
    )


def _unknown(path: Path) -> UserError:
    return UserError(
        f"cannot recognise the caption format of {path}; "
        f"expected one of {', '.join(FORMATS)} (or pass --format)"
    )


def _detect(path: Path) -> tuple[str, object]:
    """Format of `path` from its content, plus the parsed JSON when it was JSON (else None)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_CHARS).decode("utf-8-sig", errors="replace")
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None
    if head.lstrip().startswith(("{", "[")):
        try:
            data = _parse_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _unknown(path) from None
        fmt = _json_format(data)
        if fmt is None:
            raise _unknown(path)
        return fmt, data
    first = next((line for line in head.splitlines() if line.strip()), "")
    fmt = _text_format(first)
    if fmt is None:
        raise _unknown(path)
    return fmt, None


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"captions file not found: {path}")
    if not path.is_file():
        raise UserError(f"captions path is not a file: {path}")
    return path


def detect_format(path: str | Path) -> str:
    """One of FORMATS, judged from the file's content (not its extension); UserError if unknown."""
    return _detect(_existing(path))[0]


def read_captions(path: str | Path, format: str = "auto") -> CaptionTable:
    """Read a caption file into a CaptionTable; `format="auto"` detects it from the content."""
    if format != "auto" and format not in FORMATS:
        raise UserError(f"unknown caption format {format!r}; expected auto, {', '.join(FORMATS)}")
    path = _existing(path)
    data = None
    if format == "auto":
        format, data = _detect(path)
    if format in ("karpathy", "coco"):
        data = _load_json(path, format) if data is None else data
        reader = _read_karpathy if format == "karpathy" else _read_coco
        table = reader(path, data).table(format, path)
        language = data.get("language") if isinstance(data, dict) else None
        table.language = language if isinstance(language, str) else ""
        return table
    text_readers = {
        "flickr30k-csv": _read_flickr30k_csv,
        "flickr8k-csv": _read_flickr8k_csv,
        "flickr8k-token": _read_flickr8k_token,
    }
    return text_readers[format](path).table(format, path)


# Flickr8k's official split lists, as its authors distribute them beside Flickr8k.token.txt
FLICKR8K_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
FLICKR8K_FORMATS = ("flickr8k-token", "flickr8k-csv")  # whose folder may hold the split lists


def split_lists_folder(captions: str | Path, fmt: str, configured: str = "") -> Path | None:
    """The folder of the official split lists that give a caption file its splits.

    `configured` (`data.split_lists`) must be a folder holding all of `FLICKR8K_SPLIT_FILES`;
    "" looks beside a Flickr8k caption file (`fmt` in `FLICKR8K_FORMATS`) and takes its folder
    when all three lists are there. None: no lists (the splits come from elsewhere).
    """
    if not configured:
        folder = Path(captions).parent
        found = fmt in FLICKR8K_FORMATS and _holds_split_lists(folder)
        return folder if found else None
    folder = Path(configured)
    if not _holds_split_lists(folder):
        raise UserError(
            f"data.split_lists = {configured!r} must be a folder holding "
            f"{', '.join(FLICKR8K_SPLIT_FILES.values())}"
        )
    if fmt == "karpathy":
        raise UserError(
            "data.split_lists is set, but a karpathy caption file brings its own splits: "
            'leave data.split_lists = ""'
        )
    return folder


def _holds_split_lists(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FLICKR8K_SPLIT_FILES.values())


def read_split_lists(folder: str | Path) -> dict[str, str]:
    """image name -> split from the official split lists in `folder` (one name per line; a
    name listed twice in one list counts once); UserError when a list is missing or two
    lists name the same image."""
    folder = Path(folder)
    splits: dict[str, str] = {}
    for split, file_name in FLICKR8K_SPLIT_FILES.items():
        path = folder / file_name
        if not path.is_file():
            raise UserError(f"split list not found: {path}")
        for name in path.read_text(encoding="utf-8", errors="replace").split():
            name = normalize_image_name(name)
            if splits.setdefault(name, split) != split:
                raise UserError(f"{name} is in the {splits[name]} and the {split} split lists")
    return splits
