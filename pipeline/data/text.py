"""Caption tokenizer: lowercase words, no downloaded data (nltk.word_tokenize needs punkt)."""

import re

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(caption: str) -> list[str]:
    """Lowercase word tokens of a caption; punctuation is dropped.

    >>> tokenize("A dog's ball, in the PARK.")
    ['a', "dog's", 'ball', 'in', 'the', 'park']
    """
    return _WORD.findall(caption.lower())
