"""CIDEr-D, exactly as coco-caption computes it, vectorised for the SCST reward.

The same numbers as pycocoevalcap's `Cider` (cider/cider_scorer.py), detail for detail:
n-grams n = 1..4; each caption becomes tf-idf vectors with weight
tf(g) * (log(number of images) - log(max(1, df(g)))), df(g) = the number of images whose
references contain g; per reference, the candidate's counts are clipped by the reference's
(sum of min(h, r) * r over the candidate's n-grams), divided by both vector norms (when
neither is 0), times a Gaussian length penalty exp(-delta^2 / (2 * 6^2)), where a caption's
"length" is its number of bigrams (pycocoevalcap counts bigram occurrences, i.e. words - 1);
averaged over n, averaged over the references, times 10.

Unlike pycocoevalcap, which recomputes document frequencies and every reference vector from
the images it is given, `CiderD` fixes them once from a reference corpus (for SCST: the train
split) and scores any batch against it. With the corpus equal to the scored images' references
the two agree to float rounding (tests/test_cider.py).

Captions are compared as ids of evaluation tokens: `evaluation_tokens` (pipeline.metrics.coco:
for English `simple_tokenize`, the pure-Python stand-in for evaluation's PTB tokenizer, the same
on ordinary captions; for other languages the run's tokenizer, what evaluation scores them on)
splits references and vocabulary words alike; `CiderD.vocab_table` maps model vocabulary ids to
those tokens once. With `end_token`, an end-of-caption token closes every reference and every
finished candidate (self-critical.pytorch's reward scores `<eos>` this way); off by default,
which is coco-caption's CIDEr-D.
Every n-gram becomes an integer id built level by level (id of the (n-1)-gram prefix x BASE +
last token), looked up with `np.searchsorted` in sorted tables: no Python loop over captions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.config import DEFAULT_LANGUAGE, DEFAULT_TOKENIZER
from pipeline.decoder.vocab import Vocabulary
from pipeline.metrics.coco import evaluation_tokens

NGRAMS = 4
SIGMA = 6.0
BASE = 1 << 20  # token ids stay below this: an n-gram key is prefix_id * BASE + token
END = "\x00end"  # the end token's key (no tokenized text holds a NUL): `end_token` scores it


class CiderD:
    """CIDEr-D against a fixed reference corpus (document frequencies and ref vectors precomputed).

    `references`: per image, its reference captions as strings. Image i of `scores` is
    position i here. `language` and `tokenizer` (the run's `data.language`, `vocab.tokenizer`)
    choose the evaluation tokens (`evaluation_tokens`).
    """

    def __init__(
        self,
        references: Sequence[Sequence[str]],
        sigma: float = SIGMA,
        end_token: bool = False,
        language: str = DEFAULT_LANGUAGE,
        tokenizer: str = DEFAULT_TOKENIZER,
    ):
        if not references or any(len(refs) == 0 for refs in references):
            raise ValueError("CIDEr-D needs at least one image, each with references")
        self.sigma = sigma
        self.language, self.tokenizer = language, tokenizer
        self.token_ids: dict[str, int] = {END: 1}  # evaluation token -> id >= 1 (0 = padding)
        self.end_token = end_token
        ref_tokens = [self.encode(text, finished=True) for refs in references for text in refs]
        ref_image = np.repeat(np.arange(len(references)), [len(refs) for refs in references])
        self.num_images = len(references)
        self.log_images = np.log(float(self.num_images))  # pycocoevalcap's "ref_len"
        self._build(_flatten(ref_tokens), ref_image, [len(refs) for refs in references])

    def encode(self, text: str, finished: bool = False) -> np.ndarray:
        """A caption string -> its evaluation-token ids (new tokens get new ids), (L,) int64;
        with `end_token`, a `finished` caption ends in the end token's id."""
        ids = [
            self.token_ids.setdefault(t, len(self.token_ids) + 1)
            for t in evaluation_tokens(text, self.language, self.tokenizer)
        ]
        if len(self.token_ids) >= BASE:
            raise ValueError(f"more than {BASE - 1} distinct tokens")
        if finished and self.end_token:
            ids.append(self.token_ids[END])
        return np.asarray(ids, dtype=np.int64)

    def vocab_table(self, vocab: Vocabulary) -> np.ndarray:
        """(V, k) int64: the evaluation-token ids of each vocabulary word, 0-padded.

        `<pad>` and `<sos>` map to nothing, `<eos>` to the end token with `end_token` (else
        to nothing); other words (`<unk>` included) to what evaluation makes of
        `vocab.decode`'s output (e.g. "dog's" -> "dog", "'s").
        """
        rows = [
            self.encode("", finished=i == vocab.eos)
            if i in (vocab.pad, vocab.sos, vocab.eos)
            else self.encode(word)
            for i, word in enumerate(vocab.itos)
        ]
        table = np.zeros((len(rows), max(1, max(len(r) for r in rows))), dtype=np.int64)
        for i, row in enumerate(rows):
            table[i, : len(row)] = row
        return table

    def scores(self, images: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """CIDEr-D of each candidate against all references of its image.

        images (C,) int positions in the corpus; tokens (C, L) evaluation-token ids, 0 = none
        (zeros may sit anywhere: they are dropped). Returns (C,) float64 on pycocoevalcap's
        scale (x10, so a perfect caption scores about 10 on distinctive n-grams).
        """
        images = np.asarray(images, dtype=np.int64)
        flat = _flatten_padded(np.asarray(tokens, dtype=np.int64))
        count = len(images)
        lengths = np.bincount(flat.row, minlength=count)  # (C,) words
        similarity = np.zeros((count, self.max_refs))  # (C, R) summed over n
        prefix = None
        for n in range(NGRAMS):
            level = self.levels[n]
            valid = flat.position + n < lengths[flat.row]  # (P,) an n+1-gram starts here
            prefix = _ngram_ids(level, _level_keys(flat, prefix, n, valid), valid)  # (P,)
            rows, ngram, tf = _count_pairs(flat.row[valid], prefix[valid], count)
            seen = ngram < level.size
            weight = level.weights(ngram)  # (m,)
            hyp_norm = np.sqrt(np.bincount(rows, (tf * weight) ** 2, minlength=count))  # (C,)
            dot = self._clipped_dot(images, rows[seen], ngram[seen], tf[seen], weight[seen], n)
            norm = hyp_norm[:, None] * self.ref_norm[images, :, n]  # (C, R)
            similarity += np.divide(dot, norm, out=dot.copy(), where=norm != 0)
        delta = _bigram_length(lengths)[:, None] - self.ref_length[images]  # (C, R)
        penalty = np.exp(-(delta.astype(np.float64) ** 2) / (2 * self.sigma**2))
        per_ref = similarity * penalty * self.ref_mask[images]  # (C, R)
        return per_ref.sum(axis=1) / NGRAMS / self.ref_count[images] * 10.0

    def score_texts(self, images: Sequence[int], captions: Sequence[str]) -> np.ndarray:
        """`scores` for caption strings (tokenized as evaluation does; finished captions)."""
        encoded = [self.encode(text, finished=True) for text in captions]
        width = max([1, *(len(e) for e in encoded)])
        tokens = np.zeros((len(encoded), width), dtype=np.int64)
        for i, ids in enumerate(encoded):
            tokens[i, : len(ids)] = ids
        return self.scores(np.asarray(images), tokens)

    def _clipped_dot(
        self,
        images: np.ndarray,
        rows: np.ndarray,
        ngram: np.ndarray,
        tf: np.ndarray,
        weight: np.ndarray,
        n: int,
    ) -> np.ndarray:
        """(C, R): sum over shared n-grams of min(h, r) * r, h = tf * w, r = tf_ref * w."""
        level = self.levels[n]
        dot = np.zeros((len(images), self.max_refs))
        if not len(rows) or not len(level.pair_keys):
            return dot
        keys = images[rows] * level.size + ngram  # (m,) (image, n-gram) pairs
        at = np.minimum(np.searchsorted(level.pair_keys, keys), len(level.pair_keys) - 1)
        found = level.pair_keys[at] == keys
        hyp = (tf * weight)[found][:, None]  # (m', 1)
        ref = level.ref_tf[at[found]] * weight[found][:, None]  # (m', R)
        contribution = np.minimum(hyp, ref) * ref  # (m', R)
        for r in range(self.max_refs):
            dot[:, r] = np.bincount(rows[found], contribution[:, r], minlength=len(images))
        return dot

    def _build(self, flat: _Flat, ref_image: np.ndarray, ref_counts: list[int]) -> None:
        """Document frequencies, per-(image, n-gram) reference counts, ref norms and lengths."""
        num_refs = len(ref_image)
        self.max_refs = max(ref_counts)
        slot = np.concatenate([np.arange(c) for c in ref_counts])  # (N_ref,) ref index in image
        lengths = np.bincount(flat.row, minlength=num_refs)  # (N_ref,)
        ref_norm = np.zeros((num_refs, NGRAMS))
        self.levels: list[_Level] = []
        prefix = None
        for n in range(NGRAMS):
            valid = flat.position + n < lengths[flat.row]
            keys = _level_keys(flat, prefix, n, valid)  # (P,)
            level = _Level(np.unique(keys[valid]))
            prefix = _ngram_ids(level, keys, valid)
            ref_rows, ngram, tf = _count_pairs(flat.row[valid], prefix[valid], num_refs)
            level.finish(
                ref_image[ref_rows], ngram, tf, slot[ref_rows], self.max_refs, self.log_images
            )
            weighted = tf * level.weights(ngram)
            ref_norm[:, n] = np.sqrt(np.bincount(ref_rows, weighted**2, minlength=num_refs))
            self.levels.append(level)
        padded = np.zeros((self.num_images, self.max_refs), dtype=bool)
        padded[ref_image, slot] = True
        self.ref_mask = padded.astype(np.float64)  # (I, R) 1 where a reference exists
        self.ref_count = np.asarray(ref_counts, dtype=np.float64)  # (I,)
        self.ref_norm = np.zeros((self.num_images, self.max_refs, NGRAMS))  # (I, R, 4)
        self.ref_norm[ref_image, slot] = ref_norm
        self.ref_length = np.zeros((self.num_images, self.max_refs), dtype=np.int64)  # (I, R)
        self.ref_length[ref_image, slot] = _bigram_length(lengths)


class _Level:
    """The reference corpus's n-grams of one order n: sorted keys, weights, per-image counts."""

    def __init__(self, keys: np.ndarray):
        self.keys = keys  # (K,) sorted distinct keys; an n-gram's id is its index here
        self.size = len(keys)

    def weights(self, ids: np.ndarray) -> np.ndarray:
        """idf weight log(images) - log(max(1, df)) of each id (unseen ids: df 0)."""
        return self._weight[np.minimum(ids, self.size)]

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Ids of `keys` (P,), -1 where the corpus never has the n-gram."""
        if not self.size:
            return np.full(len(keys), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.keys, keys), self.size - 1)
        return np.where(self.keys[at] == keys, at, -1)

    def finish(
        self,
        image: np.ndarray,
        ngram: np.ndarray,
        tf: np.ndarray,
        slot: np.ndarray,
        max_refs: int,
        log_images: float,
    ) -> None:
        """From distinct (reference, n-gram) rows (image, id, tf, slot of the reference in its
        image): df, the idf weights, and the (image, n-gram) x reference count table."""
        pair_keys, pair_of = np.unique(image * self.size + ngram, return_inverse=True)
        df = np.bincount(pair_keys % max(self.size, 1), minlength=self.size).astype(np.float64)
        # idf per id, plus one for every unseen n-gram (df 0: log(max(1, 0)) = 0)
        self._weight = np.append(log_images - np.log(np.maximum(1.0, df)), log_images)
        self.pair_keys = pair_keys  # (M,) sorted image * K + id
        counts = np.uint8 if tf.max(initial=0) < 256 else np.uint32  # small: (M, R) is large
        self.ref_tf = np.zeros((len(pair_keys), max_refs), dtype=counts)  # (M, R) per reference
        self.ref_tf[pair_of, slot] = tf


class _Flat:
    """Captions as one flat token array: token (P,), row (P,) caption, position (P,) in it."""

    def __init__(self, token: np.ndarray, row: np.ndarray, position: np.ndarray):
        self.token, self.row, self.position = token, row, position


def _flatten(captions: list[np.ndarray]) -> _Flat:
    lengths = np.asarray([len(c) for c in captions], dtype=np.int64)
    row = np.repeat(np.arange(len(captions)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    token = np.concatenate(captions) if len(captions) else np.zeros(0, dtype=np.int64)
    return _Flat(token.astype(np.int64), row, np.arange(len(row)) - starts[row])


def _flatten_padded(tokens: np.ndarray) -> _Flat:
    """(C, L) with zeros anywhere -> the non-zero tokens of each row, in order."""
    row, _ = np.nonzero(tokens)
    token = tokens[tokens != 0]
    lengths = np.bincount(row, minlength=tokens.shape[0])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return _Flat(token, row, np.arange(len(row)) - starts[row])


def _level_keys(flat: _Flat, prefix: np.ndarray | None, n: int, valid: np.ndarray) -> np.ndarray:
    """(P,) keys of the (n+1)-grams starting at each position (garbage where not `valid`)."""
    if prefix is None:
        return flat.token.copy()
    last = flat.token[np.minimum(np.arange(len(flat.token)) + n, len(flat.token) - 1)]
    return np.where(valid, prefix * BASE + last, -1)


def _ngram_ids(level: _Level, keys: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(P,) id of the n-gram at each valid position (-1 elsewhere); unseen n-grams get ids
    size, size + 1, ... one per distinct key, so equal unseen n-grams still count together
    (they weigh in the candidate's norm) and can prefix longer n-grams."""
    ids = np.full(len(keys), -1, dtype=np.int64)
    ids[valid] = level.lookup(keys[valid])
    unseen = valid & (ids < 0)
    if unseen.any():
        _, rank = np.unique(keys[unseen], return_inverse=True)
        ids[unseen] = level.size + rank
    return ids


def _count_pairs(
    rows: np.ndarray, ngram: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (row, n-gram) pairs with their counts: rows (m,), n-gram ids (m,), tf (m,)."""
    width = int(ngram.max()) + 1 if len(ngram) else 1
    pairs, tf = np.unique(rows * width + ngram, return_counts=True)
    return pairs // width, pairs % width, tf.astype(np.float64)


def _bigram_length(words: np.ndarray) -> np.ndarray:
    """pycocoevalcap's caption "length": the number of bigrams, max(0, words - 1)."""
    return np.maximum(words - 1, 0)
