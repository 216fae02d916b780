"""Pretrained word vectors (word2vec / GloVe text files) aligned to a vocabulary."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline.errors import UserError


def load_word_vectors(path: str | Path, vocab_itos: list[str], dim: int) -> tuple[Tensor, float]:
    """Read a word2vec / GloVe text file into a (V, dim) matrix aligned to `vocab_itos`.

    Lines are `word v1 .. v_dim` (a word may itself contain spaces); an optional word2vec header
    line `count dim` is accepted. Vocabulary words absent from the file keep Xavier-uniform rows.
    Returns (matrix, coverage) with coverage = found words / vocabulary size (special tokens
    included). A missing or malformed file, vectors of another dimension, or a nan/inf value
    end in UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"word vectors file not found: {path}")
    rows = {word: i for i, word in enumerate(vocab_itos)}
    matrix = nn.init.xavier_uniform_(torch.empty(len(vocab_itos), dim))  # (V, dim)
    found = torch.zeros(len(vocab_itos), dtype=torch.bool)  # (V,)
    seen_vectors = False
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                line = line.rstrip()
                if not line or (number == 1 and _is_header(line, path, dim)):
                    continue
                if not seen_vectors:
                    _check_dimension(len(line.split(" ")) - 1, path, dim)
                    seen_vectors = True
                word, values = _split_vector_line(line, path, number, dim)
                row = rows.get(word)
                if row is not None and not found[row]:
                    matrix[row] = _parse_values(values, path, number)
                    found[row] = True
    except UnicodeDecodeError:
        raise UserError(f"word vectors file {path} is not UTF-8 text") from None
    if not seen_vectors:
        raise UserError(f"word vectors file {path} holds no vectors")
    return matrix, float(found.float().mean()) if len(vocab_itos) else 0.0


def copy_pretrained(weight: Tensor, pretrained: Tensor) -> None:
    """Copy (V, E) `pretrained` rows into an embedding weight of the same shape (else ValueError)."""
    if tuple(pretrained.shape) != tuple(weight.shape):
        raise ValueError(
            f"pretrained embeddings have shape {tuple(pretrained.shape)}, "
            f"expected {tuple(weight.shape)} (vocab_size, embed_dim)"
        )
    weight.copy_(pretrained)


def _is_header(line: str, path: Path, dim: int) -> bool:
    """True for a word2vec `count dim` header line (checking its dimension)."""
    parts = line.split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return False
    _check_dimension(int(parts[1]), path, dim)
    return True


def _check_dimension(found: int, path: Path, dim: int) -> None:
    if found != dim:
        raise UserError(
            f"word vectors in {path} have dimension {found}, but model.embed_dim is {dim}"
        )


def _split_vector_line(line: str, path: Path, number: int, dim: int) -> tuple[str, list[str]]:
    parts = line.rsplit(" ", dim)
    if len(parts) != dim + 1 or not parts[0]:
        raise UserError(f"{path}:{number}: expected a word and {dim} numbers")
    return parts[0], parts[1:]


def _parse_values(values: list[str], path: Path, number: int) -> Tensor:
    try:
        vector = torch.tensor([float(v) for v in values])  # (dim,)
    except ValueError:
        raise UserError(f"{path}:{number}: word vector has a value that is not a number") from None
    if not bool(torch.isfinite(vector).all()):
        raise UserError(f"{path}:{number}: word vector has a non-finite value (nan or inf)")
    return vector
