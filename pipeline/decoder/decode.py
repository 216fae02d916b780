"""Greedy and batched beam-search decoding: the one module used by validation, evaluate, caption.

Both work on any decoder implementing `pipeline.decoder.protocol.CaptionDecoderProtocol`
(encode, init_state, step; a state is a tuple of batch-first tensors). Both run under
`torch.inference_mode`; putting the model in eval mode is the caller's job.

Lengths: decoding runs at most `max_len` steps, one generated token per step. A finished caption
therefore has at most max_len - 1 words before its <eos>; a caption that hit max_len without
<eos> has exactly max_len words and `finished=False`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy
import torch
from torch import Tensor

from pipeline.decoder.protocol import CaptionDecoderProtocol, EncodedBatch, State


@dataclass
class Decoded:
    """One decoded caption."""

    tokens: list[int]  # generated word ids, without <sos>/<eos>
    score: float  # sum of log-probs (incl. the <eos> step if finished), before length penalty
    attention: numpy.ndarray  # (len(tokens), R) float32: the α for each generated word
    finished: bool  # False when max_len was hit without <eos>
    others: list[Decoded] = field(default_factory=list)  # runners-up, best first (beam `keep`)


def greedy_decode(
    model: CaptionDecoderProtocol,
    features: Tensor,
    sos: int,
    eos: int,
    max_len: int,
    suppress: Sequence[int] = (),
) -> list[Decoded]:
    """Most likely next word at every step, batched; rows leave the batch once they end.

    features (B, R, D) -> one Decoded per image. `suppress` ids get log-prob -inf.
    """
    _check_arguments(max_len, 1)
    with torch.inference_mode():
        encoded = model.encode(features)  # EncodedBatch of B rows
        state = model.init_state(encoded)  # (B, ...) each: LSTM (h, c), Transformer k/v cache
        batch, regions, device = features.shape[0], features.shape[1], features.device
        images = list(range(batch))  # original position of each remaining row
        words = torch.full((batch,), sos, dtype=torch.long, device=device)  # (n,)
        scores = torch.zeros(batch, device=device)  # (n,)
        tokens = torch.zeros((batch, 0), dtype=torch.long, device=device)  # (n, t)
        alphas = torch.zeros((batch, 0, regions), device=device)  # (n, t, R)
        results: list[Decoded | None] = [None] * batch
        for _ in range(max_len):
            logits, alpha, state = model.step(words, state, encoded)  # (n, V), (n, R)
            best, words = _log_probs(logits, suppress).max(dim=1)  # (n,), (n,)
            scores = scores + best
            ended = (words == eos).tolist()
            ended_rows = [i for i, end in enumerate(ended) if end]
            _emit(results, images, ended_rows, tokens, scores, alphas, finished=True)
            tokens = torch.cat([tokens, words.unsqueeze(1)], dim=1)  # (n, t+1)
            alphas = torch.cat([alphas, alpha.float().unsqueeze(1)], dim=1)  # (n, t+1, R)
            if ended_rows:
                keep = [i for i, end in enumerate(ended) if not end]
                index = torch.tensor(keep, dtype=torch.long, device=device)  # (n',)
                words, scores, tokens, alphas = (
                    x.index_select(0, index) for x in (words, scores, tokens, alphas)
                )
                state = tuple(s.index_select(0, index) for s in state)
                encoded = encoded.index_select(index)
                images = [images[i] for i in keep]
            if not images:
                break
        _emit(results, images, list(range(len(images))), tokens, scores, alphas, finished=False)
        return results


def beam_search(
    model: CaptionDecoderProtocol,
    features: Tensor,
    sos: int,
    eos: int,
    beam_size: int,
    max_len: int,
    length_penalty: float = 0.0,
    suppress: Sequence[int] = (),
    keep: int = 1,
) -> list[Decoded]:
    """Beam search batched over images x beams; returns the best caption of each image.

    features (B, R, D). The B*k hypotheses advance together; each step keeps, per image, the
    top k of the k*V extensions that do not end in <eos>, and moves <eos> extensions ranked in
    the top k to the image's finished list. An image is done when it has k finished hypotheses
    or when no live beam can beat its best finished one. Finished hypotheses are compared with
    the GNMT length penalty score / ((5 + len) / 6) ** length_penalty (len = words, 0 = none).
    If nothing finished by max_len, the best unfinished beam is returned (finished=False).
    beam_size 1 gives exactly `greedy_decode`'s result. `keep` > 1 (at most beam_size): an
    image also goes on until no live beam can beat its keep-th best finished hypothesis, and
    each result's `others` holds the next keep - 1 finished ones, best first (fewer when
    fewer finished by max_len); the best caption is the same whatever `keep`.
    """
    _check_arguments(max_len, beam_size)
    with torch.inference_mode():
        live = _start(model, features, sos, beam_size)
        finished: list[list[Decoded]] = [[] for _ in range(features.shape[0])]
        results: list[Decoded | None] = [None] * features.shape[0]
        for t in range(max_len):
            logits, alpha, state = model.step(live.words, live.state, live.encoded)  # (n*k, V)
            top = _candidates(live.scores, _log_probs(logits, suppress))  # 3 x (n, 2k)
            _collect_finished(finished, live, top, eos)
            live = _advance(live, top, alpha, state, eos)
            done = _done_images(finished, live, t + 1, max_len, length_penalty, keep)
            for i, image in enumerate(live.images):
                if done[i]:
                    results[image] = _best(finished[image], live, i, length_penalty, keep)
            live = live.keep([i for i, image_done in enumerate(done) if not image_done])
            if not live.images:
                break
        return results


@dataclass
class _Live:
    """The k live beams of each of the n images still being decoded, best beam first."""

    images: list[int]  # original position of each remaining image
    scores: Tensor  # (n, k) summed log-probs
    tokens: Tensor  # (n, k, t) long
    alphas: Tensor  # (n, k, t, R) float32
    words: Tensor  # (n*k,) long: the last word of each beam
    state: State  # batch-first tensors, (n*k, ...)
    encoded: EncodedBatch  # the model's encoded batch, n*k rows

    def keep(self, rows: list[int]) -> _Live:
        """Only the images at `rows` (positions in `images`)."""
        if len(rows) == len(self.images):
            return self
        k = self.scores.shape[1]
        index = torch.tensor(rows, dtype=torch.long, device=self.scores.device)  # (n',)
        flat = (index.unsqueeze(1) * k + torch.arange(k, device=index.device)).reshape(-1)
        return _Live(
            images=[self.images[i] for i in rows],
            scores=self.scores.index_select(0, index),
            tokens=self.tokens.index_select(0, index),
            alphas=self.alphas.index_select(0, index),
            words=self.words.index_select(0, flat),
            state=tuple(s.index_select(0, flat) for s in self.state),
            encoded=self.encoded.index_select(flat),
        )


def _start(model: CaptionDecoderProtocol, features: Tensor, sos: int, k: int) -> _Live:
    """Encode once, repeat each image k times; only beam 0 is live at first (the k are equal)."""
    batch, regions, device = features.shape[0], features.shape[1], features.device
    encoded = model.encode(features)  # EncodedBatch of B rows
    encoded = encoded.index_select(torch.arange(batch, device=device).repeat_interleave(k))  # B*k
    scores = torch.full((batch, k), -math.inf, device=device)  # (B, k)
    scores[:, 0] = 0.0
    return _Live(
        images=list(range(batch)),
        scores=scores,
        tokens=torch.zeros((batch, k, 0), dtype=torch.long, device=device),
        alphas=torch.zeros((batch, k, 0, regions), device=device),
        words=torch.full((batch * k,), sos, dtype=torch.long, device=device),
        state=model.init_state(encoded),
        encoded=encoded,
    )


def _candidates(scores: Tensor, log_probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Top 2k extensions per image: scores (n, k) + log_probs (n*k, V) -> score, beam, word.

    2k candidates always hold at least k not ending in <eos> (one <eos> per beam at most).
    """
    n, k = scores.shape
    vocab = log_probs.shape[1]
    total = (scores.reshape(n * k, 1) + log_probs).reshape(n, k * vocab)  # (n, k*V)
    top_scores, top_ids = total.topk(min(2 * k, k * vocab), dim=1)  # (n, 2k)
    beams = torch.div(top_ids, vocab, rounding_mode="floor")  # (n, 2k)
    return top_scores, beams, top_ids - beams * vocab


def _collect_finished(
    finished: list[list[Decoded]], live: _Live, top: tuple[Tensor, Tensor, Tensor], eos: int
) -> None:
    """Move the <eos> extensions ranked in the top k of an image to its finished list."""
    top_scores, beams, words = top
    k = live.scores.shape[1]
    ends = (words[:, :k] == eos) & torch.isfinite(top_scores[:, :k])  # (n, k)
    if not bool(ends.any()):
        return
    rows, ranks = ends.nonzero(as_tuple=True)  # (m,), (m,)
    parents = beams[rows, ranks]  # (m,)
    tokens = live.tokens[rows, parents].tolist()  # m x t
    alphas = live.alphas[rows, parents].cpu().numpy()  # (m, t, R)
    scores = top_scores[rows, ranks].tolist()  # m
    for j, row in enumerate(rows.tolist()):
        finished[live.images[row]].append(Decoded(tokens[j], scores[j], alphas[j], True))


def _advance(
    live: _Live, top: tuple[Tensor, Tensor, Tensor], alpha: Tensor, state: State, eos: int
) -> _Live:
    """Keep, per image, the k best extensions that do not end in <eos>."""
    top_scores, beams, words = top  # (n, 2k) each
    n, k = live.scores.shape
    rank = torch.arange(top_scores.shape[1], device=words.device) + (words == eos) * 2 * k
    pick = rank.argsort(dim=1)[:, :k]  # (n, k): <eos> extensions sorted last
    beams, words = beams.gather(1, pick), words.gather(1, pick)  # (n, k)
    parents = (torch.arange(n, device=beams.device).unsqueeze(1) * k + beams).reshape(-1)
    steps, regions = live.alphas.shape[2], live.alphas.shape[3]
    tokens = live.tokens.reshape(n * k, steps).index_select(0, parents)  # (n*k, t)
    alphas = live.alphas.reshape(n * k, steps, regions).index_select(0, parents)  # (n*k, t, R)
    new_alpha = alpha.float().index_select(0, parents).unsqueeze(1)  # (n*k, 1, R)
    return _Live(
        images=live.images,
        scores=top_scores.gather(1, pick),
        tokens=torch.cat([tokens, words.reshape(-1, 1)], dim=1).reshape(n, k, steps + 1),
        alphas=torch.cat([alphas, new_alpha], dim=1).reshape(n, k, steps + 1, regions),
        words=words.reshape(-1),
        state=tuple(s.index_select(0, parents) for s in state),
        encoded=live.encoded,
    )


def _done_images(
    finished: list[list[Decoded]],
    live: _Live,
    length: int,
    max_len: int,
    length_penalty: float,
    keep: int,
) -> list[bool]:
    """Per live image: k finished, no live beam can still beat the keep-th best finished
    (the best, for keep 1), or max_len."""
    if length >= max_len:
        return [True] * len(live.images)
    k = live.scores.shape[1]
    best_live = live.scores[:, 0].tolist()  # (n,) live beams are sorted best first
    done = []
    for i, image in enumerate(live.images):
        hypotheses = finished[image]
        if len(hypotheses) >= k:
            done.append(True)
        elif len(hypotheses) < keep:
            done.append(False)
        else:
            scores = sorted((_normalised(h, length_penalty) for h in hypotheses), reverse=True)
            reachable = _best_reachable(best_live[i], length, max_len - 1, length_penalty)
            done.append(reachable <= scores[keep - 1])
    return done


def _best_reachable(score: float, shortest: int, longest: int, length_penalty: float) -> float:
    """Upper bound of the normalised score of a beam (summed log-prob `score` <= 0) finishing
    with between `shortest` and `longest` words: its score can only fall, and score / lp(len)
    is monotone in len, so the bound is at one end of the range."""
    if shortest > longest:
        return -math.inf
    return max(
        score / _penalty(shortest, length_penalty), score / _penalty(longest, length_penalty)
    )


def _best(
    hypotheses: list[Decoded], live: _Live, row: int, length_penalty: float, keep: int
) -> Decoded:
    """Best finished hypothesis by normalised score (with the next keep - 1 as its `others`),
    else the best live beam (unfinished)."""
    if hypotheses:
        ranked = sorted(hypotheses, key=lambda h: -_normalised(h, length_penalty))  # stable
        ranked[0].others = ranked[1:keep]
        return ranked[0]
    return Decoded(
        live.tokens[row, 0].tolist(),
        float(live.scores[row, 0]),
        live.alphas[row, 0].cpu().numpy(),
        finished=False,
    )


def _normalised(hypothesis: Decoded, length_penalty: float) -> float:
    return hypothesis.score / _penalty(len(hypothesis.tokens), length_penalty)


def _penalty(length: int, length_penalty: float) -> float:
    """GNMT length penalty ((5 + len) / 6) ** α; 1 when α = 0."""
    return ((5.0 + length) / 6.0) ** length_penalty


def _log_probs(logits: Tensor, suppress: Sequence[int]) -> Tensor:
    """(n, V) logits -> float32 log-probs with the `suppress` ids at -inf."""
    log_probs = torch.log_softmax(logits.float(), dim=1)  # (n, V)
    if len(suppress):
        log_probs[:, list(suppress)] = -math.inf
    return log_probs


def _emit(
    results: list[Decoded | None],
    images: list[int],
    rows: list[int],
    tokens: Tensor,
    scores: Tensor,
    alphas: Tensor,
    finished: bool,
) -> None:
    """Store rows of a greedy batch (tokens (n, t), scores (n,), alphas (n, t, R)) as results."""
    if not rows:
        return
    index = torch.tensor(rows, dtype=torch.long, device=tokens.device)  # (m,)
    row_tokens = tokens.index_select(0, index).tolist()  # m x t
    row_scores = scores.index_select(0, index).tolist()  # m
    row_alphas = alphas.index_select(0, index).cpu().numpy()  # (m, t, R)
    for j, row in enumerate(rows):
        results[images[row]] = Decoded(row_tokens[j], row_scores[j], row_alphas[j], finished)


def _check_arguments(max_len: int, beam_size: int) -> None:
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
