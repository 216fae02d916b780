"""Caption tokenizers (`vocab.tokenizer`), for captions in any language; no downloaded data.

Every caption is first normalised: Unicode NFC (a decomposed "é" equals the composed one),
casefolded with `str.casefold` (language-independent: "Straße" -> "strasse", "İ" -> "i̇", and
Turkish "I" becomes "i", not "ı"), NFC again (casefolding may decompose), and the typographic
apostrophe ’ becomes '. Then, by `tokenizer` (the names are `pipeline.config.TOKENIZERS`):

- "words": runs of letters, combining marks and digits (Unicode categories L*, M*, N*: the
  vowel signs of Devanagari and Arabic's harakat stay in their word); an apostrophe followed
  by letters keeps the word whole ("dog's", "l'homme"); punctuation, symbols and spaces are
  dropped. On ASCII captions this gives exactly the "ascii" tokens.
- "characters": for scripts written without spaces (Chinese, Japanese, Thai): every letter or
  digit with its following combining marks is a token, except that a run of ASCII letters and
  digits stays one token ("iphone", "12"); spaces and punctuation are dropped.
- "ascii": `[a-z0-9]+(?:'[a-z]+)?` after `str.lower`, the tokenizer of checkpoints saved before
  `vocab.tokenizer` existed (letters outside a-z are lost: "césped" -> "c", "sped").
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Sequence

from pipeline.config import DEFAULT_TOKENIZER, TOKENIZERS

_ASCII_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_ASCII_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
APOSTROPHES = {"\u2019": "'"}  # typographic apostrophe -> '


@functools.cache
def _category_classes() -> dict[str, str]:
    """Regex character-class bodies of the letters ("L"), marks ("M") and digits and other
    numbers ("N") of `unicodedata`'s Unicode version, from one scan of all code points."""
    ranges: dict[str, list[str]] = {"L": [], "M": [], "N": []}
    start, current = 0, None
    for code in range(sys.maxunicode + 2):
        kind = unicodedata.category(chr(code))[0] if code <= sys.maxunicode else None
        if kind != current:
            if current in ranges:
                ranges[current].append(f"{re.escape(chr(start))}-{re.escape(chr(code - 1))}")
            start, current = code, kind
    return {kind: "".join(parts) for kind, parts in ranges.items()}


@functools.cache
def _pattern(tokenizer: str) -> re.Pattern:
    """The compiled token pattern of "words" or "characters" (applied after `normalize`)."""
    classes = _category_classes()
    letters, marks = classes["L"] + classes["M"], classes["M"]
    word = letters + classes["N"]
    if tokenizer == "words":
        return re.compile(f"[{word}]+(?:'[{letters}]+)?")
    return re.compile(f"[{_ASCII_ALNUM}][{_ASCII_ALNUM}{marks}]*|[{word}][{marks}]*")


def normalize(caption: str) -> str:
    """NFC, casefolded, NFC again, typographic apostrophes made plain.

    >>> normalize("Die STRASSE ist eine Straße, l’été")
    "die strasse ist eine strasse, l'été"
    """
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFC", caption).casefold())
    return text.translate(str.maketrans(APOSTROPHES))


def tokenize(caption: str, tokenizer: str = DEFAULT_TOKENIZER) -> list[str]:
    """Tokens of a caption with `tokenizer` ("words", "characters" or "ascii").

    >>> tokenize("A dog's ball, in the PARK.")
    ['a', "dog's", 'ball', 'in', 'the', 'park']
    >>> tokenize("Un perro corre sobre el césped")
    ['un', 'perro', 'corre', 'sobre', 'el', 'césped']
    >>> tokenize("两只狗在iPhone 12旁边。", "characters")
    ['两', '只', '狗', '在', 'iphone', '12', '旁', '边']
    """
    if tokenizer == "ascii":
        return _ASCII_WORD.findall(caption.lower())
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; known: {', '.join(TOKENIZERS)}")
    return _pattern(tokenizer).findall(normalize(caption))


def join_tokens(tokens: Sequence[str], tokenizer: str = DEFAULT_TOKENIZER) -> str:
    """A caption from tokens: words joined by spaces; characters without, except for a space
    between two ASCII runs ("iphone 12"), so that `tokenize` gives the tokens back.

    >>> join_tokens(["两", "只", "狗", "在", "iphone", "12", "旁", "边"], "characters")
    '两只狗在iphone 12旁边'
    """
    if tokenizer != "characters":
        return " ".join(tokens)
    parts: list[str] = []
    for previous, token in zip([None, *tokens], tokens, strict=False):
        if previous is not None and _is_ascii_run(previous) and _is_ascii_run(token):
            parts.append(" ")
        parts.append(token)
    return "".join(parts)


def _is_ascii_run(token: str) -> bool:
    """Whether a "characters" token is a run of ASCII letters and digits."""
    return bool(token) and token[0] in _ASCII_ALNUM
