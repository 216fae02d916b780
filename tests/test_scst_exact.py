"""SCST's loss is an unbiased estimate of the exact policy gradient of expected CIDEr-D.

On a toy problem (3 words, 3 images, `MAX_LEN` + 1 sampling steps) the sampler's caption
space is small enough to enumerate: k <= MAX_LEN words then `<eos>`, or the MAX_LEN + 1 words
of a row cut at the step limit (no `<eos>`). The exact objective is

    J = 1/B * sum over images i, captions c of p(c | i) * r_i(c)

with log p(c | i) teacher-forced (differentiable) and r_i(c) from the same `CaptionReward`,
so its gradient g is exact. The mean of grad(-scst_loss) over seeded batches must match it
(cosine > 0.999, norm ratio within 5%, error within the Monte-Carlo noise), and broken
estimators built from the same pieces must not: a baseline that includes the sample itself
(E = (K-1)/K g), a flipped advantage (-g), and log-probs counted past `<eos>` (the padded
steps teacher-forced as `<eos>`). Continuing to *sample* after `<eos>` and counting those
draws would not be a broken control: their score has mean zero given the caption, so that
estimator stays unbiased, only noisier. Last, SCST from a uniform policy converges to each
image's argmax-CIDEr-D caption.

Sampled captions per estimate: ~17k (LSTM) and ~50k (Transformer), for a standard error of
about 3% of |g|; the LSTM's sampler is the slow part (every row carries its 49 x 2048 grid).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from pipeline import contract
from pipeline.config import ModelConfig, ScstConfig
from pipeline.decoder.build import build_decoder
from pipeline.decoder.decode import greedy_decode
from pipeline.decoder.loss import target_mask
from pipeline.decoder.sample import sample_captions
from pipeline.decoder.vocab import SPECIALS, Vocabulary
from pipeline.train.scst import CaptionReward, Scst, baselines, scst_loss

VOCAB = Vocabulary([*SPECIALS, "red", "blue", "circle"])
WORD_IDS = (4, 5, 6)
SUPPRESS = [VOCAB.pad, VOCAB.sos, VOCAB.unk]  # as SCST with eval.suppress_unk
MAX_LEN = 2  # words; the sampler runs MAX_LEN + 1 steps, <eos> counted
SAMPLES = 5  # K per image
# distinct per image (CIDEr-D needs more than one image: with one, every idf is log(1) = 0)
REFERENCES = [
    ["red circle", "red red circle"],
    ["blue circle", "blue blue"],
    ["red blue", "blue red circle", "red blue circle"],
]
COSINE, NORM_RATIO = 0.999, (0.95, 1.05)  # what an estimate must reach to pass
NOISE, BIAS = 2.0, 5.0  # |error| in standard errors: at most for noise, at least for a bias

LSTM = ModelConfig(embed_dim=16, hidden_dim=32, attention_dim=16, dropout=0.0)
TRANSFORMER = ModelConfig(
    kind="transformer", embed_dim=16, layers=1, heads=2, ff_dim=32, dropout=0.0
)
CONFIGS = {"lstm": LSTM, "transformer": TRANSFORMER}
# an estimate averages BATCHES batches of I * REPEATS images x K samples; small LSTM batches
# are faster per row (its sampler copies every row's grid at each step)
BATCHES = {"lstm": 224, "transformer": 84}
REPEATS = {"lstm": 5, "transformer": 40}
GROUPS = 28  # the controls pool their batches into this many estimates (for the noise)
CONTROLS = ("scst", "self in baseline", "flipped advantage", "log-probs past eos")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these tiny, memory-bound steps gain nothing from more, and on a busy
    machine two spinning OpenMP threads turned one test's 8 s into ten minutes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass
class Pairs:
    """Every (image, caption) pair the sampler can produce, image-major (P = I * C rows)."""

    images: torch.Tensor  # (P,) long
    tokens: torch.Tensor  # (P, T) long: as the sampler writes them, <eos> then <pad>
    lengths: torch.Tensor  # (P,) long: tokens drawn, <eos> included
    rewards: np.ndarray  # (P,) float64: CaptionReward of each caption for its image
    keys: np.ndarray  # (C,) int64: `caption_keys` of the caption space, in row order


def caption_space(max_len: int) -> np.ndarray:
    """(C, max_len + 1) every token row `sample_captions` can return with max_len + 1 steps:
    k <= max_len words then `<eos>`, or max_len + 1 words cut at the limit; then `<pad>`."""
    steps = max_len + 1
    rows = []
    for count in range(steps + 1):
        for words in itertools.product(WORD_IDS, repeat=count):
            row = [*words, VOCAB.eos] if count < steps else list(words)
            rows.append(row + [VOCAB.pad] * (steps - len(row)))
    return np.asarray(rows, dtype=np.int64)


def caption_keys(tokens: np.ndarray) -> np.ndarray:
    """(N, T) token rows -> (N,) int64, one distinct key per row (base-V digits)."""
    return tokens @ (len(VOCAB) ** np.arange(tokens.shape[1], dtype=np.int64))


def enumerate_pairs(reward: CaptionReward, images: int) -> Pairs:
    """The caption space crossed with the images, with every pair's reward."""
    space = caption_space(MAX_LEN)  # (C, T)
    ended = space == VOCAB.eos  # (C, T)
    lengths = np.where(ended.any(axis=1), ended.argmax(axis=1) + 1, space.shape[1])  # (C,)
    tokens = np.tile(space, (images, 1))  # (P, T)
    image = np.arange(images).repeat(len(space))  # (P,)
    rewards, _ = reward(image, tokens)
    return Pairs(
        torch.from_numpy(image),
        torch.from_numpy(tokens),
        torch.from_numpy(np.tile(lengths, images)),
        rewards,
        caption_keys(space),
    )


def toy_problem(kind: str) -> tuple[torch.nn.Module, torch.Tensor, CaptionReward, Pairs]:
    """A seeded tiny decoder (train mode, dropout 0), random grids (I, 49, 2048), the reward
    over `REFERENCES` and the enumerated pairs."""
    torch.manual_seed(0)
    model = build_decoder(CONFIGS[kind], VOCAB).train()
    features = torch.randn(len(REFERENCES), contract.REGIONS, contract.CHANNELS)  # (I, R, C)
    reward = CaptionReward(REFERENCES, VOCAB)
    return model, features, reward, enumerate_pairs(reward, len(REFERENCES))


def teacher_forced_log_probs(
    model: torch.nn.Module,
    features: torch.Tensor,
    images: torch.Tensor,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """(N,) summed log-probs of tokens[n, :lengths[n]] for image images[n], the suppressed ids
    at -inf as the sampler has them (differentiable)."""
    count, steps = tokens.shape
    captions = torch.cat([torch.full((count, 1), VOCAB.sos), tokens], dim=1)  # (N, T+1)
    logits, _ = model(features, images, captions, lengths + 1)  # (M, V) packed
    logits = logits.float().clone()
    logits[:, SUPPRESS] = -torch.inf
    targets = captions[:, 1:][target_mask(lengths + 1, steps)]  # (M,)
    picked = torch.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)  # (M,)
    rows = torch.arange(count).repeat_interleave(lengths)  # (M,)
    return torch.zeros(count).index_add(0, rows, picked)


def pair_log_probs(model, features, pairs: Pairs, past_eos: bool = False) -> torch.Tensor:
    """(P,) log p(caption | image) of every pair. `past_eos` (a broken control): a row that
    ended early also counts every further step, teacher-forced with `<eos>` as its token."""
    if not past_eos:
        return teacher_forced_log_probs(model, features, pairs.images, pairs.tokens, pairs.lengths)
    filled = pairs.tokens.masked_fill(pairs.tokens == VOCAB.pad, VOCAB.eos)  # (P, T)
    full = torch.full_like(pairs.lengths, pairs.tokens.shape[1])  # (P,)
    return teacher_forced_log_probs(model, features, pairs.images, filled, full)


def flat_grad(value: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """(n_params,) float64 gradient of a scalar w.r.t. every trainable parameter (0 if unused)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(value, params, allow_unused=True, retain_graph=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).flatten()
            for g, p in zip(grads, params, strict=True)
        ]
    ).double()


def exact_gradient(model, features, pairs: Pairs) -> torch.Tensor:
    """grad of J / B, J = sum over pairs of p(c | i) * r_i(c): the exact policy gradient of the
    mean expected CIDEr-D per image."""
    images = len(features)
    probs = pair_log_probs(model, features, pairs).exp()  # (P,)
    mass = probs.detach().reshape(images, -1).sum(dim=1)  # (I,) the space is all it draws
    torch.testing.assert_close(mass, torch.ones(images), atol=1e-5, rtol=0)
    expected = (probs * torch.from_numpy(pairs.rewards).float()).sum() / images
    return flat_grad(expected, model)


@dataclass
class Estimate:
    """A Monte-Carlo gradient estimate: running sums of per-batch estimates."""

    total: torch.Tensor  # (n_params,) float64 sum of the per-batch estimates
    squares: torch.Tensor  # (n_params,) float64 sum of their squares
    batches: int = 0

    @classmethod
    def empty(cls, size: int) -> Estimate:
        """No batches yet, over `size` parameters."""
        return cls(torch.zeros(size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64))

    def add(self, gradient: torch.Tensor) -> None:
        """One batch's estimate (n_params,)."""
        self.total += gradient
        self.squares += gradient**2
        self.batches += 1

    @property
    def mean(self) -> torch.Tensor:
        """The estimate: the mean over batches."""
        return self.total / self.batches  # (n_params,)

    @property
    def standard_error(self) -> float:
        """sqrt(sum over coordinates of the mean's variance), from the batches' spread: the
        root-mean-square |mean - expectation|."""
        variance = (self.squares - self.total**2 / self.batches) / (self.batches - 1)
        return float((variance.clamp(min=0).sum() / self.batches).sqrt())


def repeated(features: torch.Tensor, kind: str) -> tuple[torch.Tensor, np.ndarray]:
    """One batch: the images repeated REPEATS times, (I*repeats, R, C) and (I*repeats,)."""
    repeats = REPEATS[kind]
    return features.repeat(repeats, 1, 1), np.tile(np.arange(len(features)), repeats)


def scst_estimate(model, features, scst: Scst, kind: str) -> Estimate:
    """The mean of grad(-scst_loss) over BATCHES seeded batches."""
    batch, images = repeated(features, kind)
    generator = torch.Generator().manual_seed(1)
    estimate = Estimate.empty(sum(p.numel() for p in model.parameters() if p.requires_grad))
    for _ in range(BATCHES[kind]):
        loss, _ = scst_loss(model, batch, images, scst, VOCAB, generator)
        estimate.add(flat_grad(-loss, model))
    return estimate


def agreement(estimate: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """(cosine, |estimate| / |exact|)."""
    cosine = torch.dot(estimate, exact) / (estimate.norm() * exact.norm())
    return float(cosine), float(estimate.norm() / exact.norm())


def passes(cosine: float, ratio: float) -> bool:
    """The criterion an unbiased estimate meets with this many samples."""
    return cosine > COSINE and NORM_RATIO[0] <= ratio <= NORM_RATIO[1]


@pytest.mark.parametrize("baseline", ["mean", "greedy"])
@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_scst_loss_is_an_unbiased_policy_gradient_of_expected_cider(kind, baseline):
    """The mean of grad(-scst_loss) over ~17k / ~50k samples is the exact gradient of J / B."""
    model, features, reward, pairs = toy_problem(kind)
    exact = exact_gradient(model, features, pairs)
    scst = Scst(reward, ScstConfig(samples=SAMPLES, baseline=baseline, max_len=MAX_LEN), SUPPRESS)
    estimate = scst_estimate(model, features, scst, kind)
    cosine, ratio = agreement(estimate.mean, exact)
    error = float((estimate.mean - exact).norm())
    report = (
        f"{kind}/{baseline}: cosine {cosine:.5f}, norm ratio {ratio:.4f}, |error| / |g| "
        f"{error / exact.norm():.4f} = {error / estimate.standard_error:.2f} standard errors"
    )
    print(report)
    assert passes(cosine, ratio), report
    assert error < NOISE * estimate.standard_error, report  # noise explains it, not a bias


def sampled_rows(model, batch: torch.Tensor, generator: torch.Generator) -> np.ndarray:
    """(N, T) tokens of one batch from the project's sampler, as `scst_loss` draws them."""
    with torch.no_grad():  # the draws do not depend on the graph
        samples = sample_captions(
            model, batch, VOCAB.sos, VOCAB.eos, VOCAB.pad, SAMPLES, MAX_LEN + 1, SUPPRESS, generator
        )
    return samples.tokens.numpy()


def pair_index(tokens: np.ndarray, images: np.ndarray, pairs: Pairs) -> np.ndarray:
    """(N,) the row in `pairs` of each sampled caption, tokens (N, T) of images (N,)."""
    order = np.argsort(pairs.keys)
    keys = caption_keys(tokens)  # (N,)
    at = order[np.searchsorted(pairs.keys, keys, sorter=order)]  # (N,)
    np.testing.assert_array_equal(pairs.keys[at], keys)  # the enumeration holds every draw
    return images * len(pairs.keys) + at


def advantages(rewards: np.ndarray, name: str) -> np.ndarray:
    """rewards (B, K) -> the advantages (B, K) estimator `name` (of `CONTROLS`) weighs the
    log-probs with."""
    if name == "self in baseline":  # the mean over all K, the sample itself included
        return rewards - rewards.mean(axis=1, keepdims=True)
    advantage = rewards - baselines(rewards, "mean")  # the other K-1 samples, as scst_loss
    return -advantage if name == "flipped advantage" else advantage


def pair_weights(
    tokens: np.ndarray, images: np.ndarray, reward: CaptionReward, pairs: Pairs, name: str
) -> np.ndarray:
    """(P,) weights w with grad(sum over pairs of w * log q) = estimator `name`'s gradient on
    these rows: a row's log-prob gradient is its enumerated pair's (a deterministic model), so
    sum over rows of a_n * grad log p_n / N = grad(sum over pairs of w_p * log p_p) with w_p
    the summed advantages of the pair's rows / N."""
    rewards, _ = reward(images, tokens)  # (N,)
    rows = pair_index(tokens, images, pairs)  # (N,)
    np.testing.assert_allclose(rewards, pairs.rewards[rows])
    advantage = advantages(rewards.reshape(-1, SAMPLES), name).reshape(-1)  # (N,)
    return np.bincount(rows, advantage, minlength=len(pairs.rewards)) / len(rows)


def control_weights(model, features, reward, pairs: Pairs, kind: str) -> dict[str, np.ndarray]:
    """Draw the rows `scst_estimate` draws (same batches, same seed) and return, per
    estimator of `CONTROLS`, (GROUPS, P) pair weights: the estimates of GROUPS pooled
    batches."""
    batch, images = repeated(features, kind)
    rows_images = images.repeat(SAMPLES)  # (N,) image of each sampled row
    generator = torch.Generator().manual_seed(1)
    weights = {name: np.zeros((GROUPS, len(pairs.rewards))) for name in CONTROLS}
    pooled = BATCHES[kind] // GROUPS
    for step in range(BATCHES[kind]):
        tokens = sampled_rows(model, batch, generator)  # (N, T)
        for name in CONTROLS:
            weights[name][step % GROUPS] += (
                pair_weights(tokens, rows_images, reward, pairs, name) / pooled
            )
    return weights


def expected_control(model, features, pairs: Pairs, name: str) -> torch.Tensor:
    """The exact expectation of estimator `name`'s gradient.

    The other samples' mean b is independent of the sample, with mean m_i, so E[(r - b) grad
    log q] = sum over c of p(c) (r(c) - m_i) grad log q(c) per image (q = p but for "log-probs
    past eos"); including the sample in the mean scales it by (K-1)/K, flipping by -1.
    """
    images = len(features)
    probs = pair_log_probs(model, features, pairs).detach().exp().double()  # (P,)
    rewards = torch.from_numpy(pairs.rewards)  # (P,)
    means = (probs * rewards).reshape(images, -1).sum(dim=1)  # (I,)
    centred = rewards - means.repeat_interleave(len(pairs.keys))  # (P,)
    log_q = pair_log_probs(model, features, pairs, past_eos=name == "log-probs past eos")
    scale = {"self in baseline": (SAMPLES - 1) / SAMPLES, "flipped advantage": -1.0}
    return scale.get(name, 1.0) * flat_grad(
        ((probs * centred / images).float() * log_q).sum(), model
    )


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_pair_weights_reproduce_the_gradient_of_scst_loss(kind):
    """The controls' bookkeeping is the project's estimator: on one batch, the "scst" pair
    weights give grad(-scst_loss) of the same draws (the controls change one thing each)."""
    model, features, reward, pairs = toy_problem(kind)
    batch, images = repeated(features, kind)
    scst = Scst(reward, ScstConfig(samples=SAMPLES, max_len=MAX_LEN), SUPPRESS)
    loss, _ = scst_loss(model, batch, images, scst, VOCAB, torch.Generator().manual_seed(7))
    tokens = sampled_rows(model, batch, torch.Generator().manual_seed(7))
    weights = pair_weights(tokens, images.repeat(SAMPLES), reward, pairs, "scst")
    rebuilt = flat_grad(
        (torch.from_numpy(weights).float() * pair_log_probs(model, features, pairs)).sum(), model
    )
    direct = flat_grad(-loss, model)
    torch.testing.assert_close(rebuilt, direct, rtol=1e-4, atol=1e-6 * float(direct.abs().max()))


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_broken_estimators_fail_the_exact_gradient_check(kind):
    """On the rows the unbiasedness test draws, the project's estimator passes and each broken
    one fails by a clear margin while matching its own exact expectation: a bias, not noise."""
    model, features, reward, pairs = toy_problem(kind)
    exact = exact_gradient(model, features, pairs)
    log_probs = {past: pair_log_probs(model, features, pairs, past) for past in (False, True)}
    weights = control_weights(model, features, reward, pairs, kind)
    for name in CONTROLS:
        log_q = log_probs[name == "log-probs past eos"]
        estimate = Estimate.empty(exact.numel())
        for group in weights[name]:  # (P,)
            estimate.add(flat_grad((torch.from_numpy(group).float() * log_q).sum(), model))
        expected = expected_control(model, features, pairs, name)
        cosine, ratio = agreement(estimate.mean, exact)
        expected_cosine, expected_ratio = agreement(expected, exact)
        error = float((estimate.mean - exact).norm()) / estimate.standard_error
        own = float((estimate.mean - expected).norm()) / estimate.standard_error
        report = (
            f"{kind}/{name}: cosine {cosine:.5f}, norm ratio {ratio:.4f}, |error| {error:.1f} "
            f"standard errors ({own:.1f} from its own expectation, whose cosine is "
            f"{expected_cosine:.5f}, norm ratio {expected_ratio:.4f})"
        )
        print(report)
        assert own < NOISE, report
        if name == "scst":
            assert passes(cosine, ratio) and error < NOISE, report
        else:
            assert not passes(cosine, ratio) and error > BIAS, report
            assert not passes(expected_cosine, expected_ratio), report


# One word per image, so the images' policies barely conflict; the best captions are "red"
# <eos> and the first three words of the long references, cut at the step limit. With
# scst.eos_token the end counts as a word, so finishing (or not) is part of the reward. (On
# `REFERENCES`, whose best captions share words and mix endings, SCST from a uniform policy,
# like exact gradient ascent with Adam, often settles in a local optimum.)
CONVERGENCE_REFERENCES = [
    ["red", "red"],
    ["blue blue blue blue", "blue blue blue blue"],
    ["circle circle circle circle", "circle circle circle circle"],
]
CONVERGENCE_STEPS = 200
CONVERGENCE_LR = 5e-3


def test_scst_from_a_uniform_policy_converges_to_the_best_caption():
    """Adam on scst_loss from equal token probabilities: afterwards each image's greedy caption
    is its argmax-CIDEr-D caption and the sampled reward is near the best."""
    torch.manual_seed(0)
    model = build_decoder(LSTM, VOCAB).train()
    with torch.no_grad():  # every allowed token equally likely
        model.output.weight.zero_()
        model.output.bias.zero_()
    images = len(CONVERGENCE_REFERENCES)
    features = torch.randn(images, contract.REGIONS, contract.CHANNELS)  # (I, R, C)
    reward = CaptionReward(CONVERGENCE_REFERENCES, VOCAB, eos_token=True)
    pairs = enumerate_pairs(reward, images)
    with torch.no_grad():
        start = pair_log_probs(model, features, pairs).exp()  # (P,)
    torch.testing.assert_close(start, 0.25 ** pairs.lengths.float())  # 4 tokens allowed
    table = pairs.rewards.reshape(images, -1)  # (I, C)
    best = table.argmax(axis=1)  # (I,)
    assert (np.sort(table, axis=1)[:, -2] < table.max(axis=1) - 0.5).all()  # clear winners
    space = pairs.tokens[: len(pairs.keys)]  # (C, T)
    finished = [VOCAB.eos in space[b].tolist() for b in best]
    texts = [VOCAB.decode(space[b].tolist()) for b in best]
    assert (texts, finished) == (
        ["red", "blue blue blue", "circle circle circle"],
        [True, False, False],
    )

    scst = Scst(reward, ScstConfig(samples=SAMPLES, max_len=MAX_LEN, eos_token=True), SUPPRESS)
    optimizer = torch.optim.Adam(model.parameters(), lr=CONVERGENCE_LR)
    generator = torch.Generator().manual_seed(0)
    batch, batch_images = features.repeat(2, 1, 1), np.tile(np.arange(images), 2)
    sampled = []
    for _ in range(CONVERGENCE_STEPS):
        loss, stats = scst_loss(model, batch, batch_images, scst, VOCAB, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sampled.append(stats.reward / stats.samples)

    decoded = greedy_decode(
        model.eval(), features, VOCAB.sos, VOCAB.eos, MAX_LEN + 1, suppress=SUPPRESS
    )
    for image, caption in enumerate(decoded):
        words = [t for t in space[best[image]].tolist() if t not in (VOCAB.eos, VOCAB.pad)]
        assert (caption.tokens, caption.finished) == (words, finished[image]), image
    top = table.max(axis=1).mean()
    assert np.mean(sampled[-20:]) > 0.9 * top, (np.mean(sampled[-20:]), top)
    with torch.no_grad():
        probs = pair_log_probs(model.train(), features, pairs).exp().double().numpy()
    expected = (probs.reshape(images, -1) * table).sum(axis=1)  # (I,) exact E[r] per image
    assert (expected > 0.9 * table.max(axis=1)).all(), (expected, table.max(axis=1))
