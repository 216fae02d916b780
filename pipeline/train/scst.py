"""Self-critical sequence training (SCST): fine-tune a decoder on the CIDEr-D of its own samples.

`train.objective = "scst"` replaces the cross-entropy epoch with this one (Rennie et al. 2017;
the "new self-critical" baseline of Luo 2020). Per train image, `scst.samples` = K captions are
drawn from the model (`pipeline.decoder.sample`, at most `scst.max_len` words, stopping at
`<eos>`); each gets the reward r = CIDEr-D against all references of its image, with document
frequencies from the train split's references (`pipeline.decoder.cider`, fixed once per run),
minus `scst.bad_ending_penalty` when it ends in a function word (`BAD_ENDINGS`). The baseline b
(`scst.baseline`) is "mean": the mean reward of the image's other K-1 samples, or "greedy": the
reward of the model's greedy caption (eval mode, no gradient). The loss of a batch of B images is

    loss = -1/(B*K) * sum over samples of (r - b) * sum_t log p(w_t)

where the inner sum runs over the sample's tokens up to and including `<eos>` (not divided by
the length): a mean over samples, a sum over tokens. `train.batch_size` counts images here.

Each epoch visits every train image once in a seeded order; sampling draws from a generator
seeded with (train.seed, epoch, rank), so a resumed run repeats a straight one. Under torchrun
each rank samples its own images, rewards need no communication, and the gradients are averaged
across ranks by one all-reduce (the decoder is not wrapped in DDP for SCST).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist
from tqdm import tqdm

from pipeline import distributed
from pipeline.config import Config, ScstConfig, config_from_dict
from pipeline.dataset.batches import SplitData, plan_epoch
from pipeline.dataset.teacher_forced import make_loader, training_autocast
from pipeline.decoder.cider import CiderD
from pipeline.decoder.decode import greedy_decode
from pipeline.decoder.generate import suppressed_tokens
from pipeline.decoder.sample import sample_captions
from pipeline.decoder.vocab import Vocabulary
from pipeline.errors import UserError

BAD_ENDINGS = ("a", "of", "with", "the")  # a caption ending in one of these is cut short


def ends_badly(caption: str) -> bool:
    """Whether a caption's last word is one of `BAD_ENDINGS`."""
    words = caption.split()
    return bool(words) and words[-1] in BAD_ENDINGS


class CaptionReward:
    """CIDEr-D of sampled captions (vocabulary ids) against their image's references."""

    def __init__(
        self, references: list[list[str]], vocab: Vocabulary, bad_ending_penalty: float = 0.0
    ):
        self.cider = CiderD(references)  # image i's reference captions: references[i]
        self.words = self.cider.vocab_table(vocab)  # (V, k) vocabulary id -> evaluation tokens
        self.bad = np.isin(np.asarray(vocab.itos), BAD_ENDINGS)  # (V,)
        self.penalty = bad_ending_penalty
        self.eos = vocab.eos

    def __call__(self, images: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images (N,) positions in `references`; tokens (N, T) vocabulary ids, then `<eos>`
        and padding.

        Returns rewards (N,) float64 (CIDEr-D minus the bad-ending penalty) and (N,) bool:
        the caption ends in a function word.
        """
        ended = tokens == self.eos  # (N, T)
        words = np.where(ended.any(axis=1), ended.argmax(axis=1), tokens.shape[1])  # (N,)
        kept = np.where(np.arange(tokens.shape[1]) < words[:, None], tokens, 0)  # (N, T)
        evaluation = self.words[kept].reshape(len(tokens), -1)  # (N, T*k)
        last = kept[np.arange(len(tokens)), np.maximum(words - 1, 0)]  # (N,)
        bad = (words > 0) & self.bad[last]
        return self.cider.scores(images, evaluation) - self.penalty * bad, bad


@dataclass
class Scst:
    """What an SCST run adds to a trainer: the reward and the settings."""

    reward: CaptionReward
    config: ScstConfig
    suppress: list[int]  # ids sampling never draws (as decoding: <pad>, <sos>, maybe <unk>)


def build_scst(config: Config, train_split: SplitData, vocab: Vocabulary) -> Scst:
    """The reward over the train split's references (document frequencies computed once)."""
    reward = CaptionReward(train_split.references, vocab, config.scst.bad_ending_penalty)
    return Scst(reward, config.scst, suppressed_tokens(vocab, config.eval))


def baselines(rewards: np.ndarray, kind: str, greedy: np.ndarray | None = None) -> np.ndarray:
    """rewards (B, K) -> baselines (B, K): "mean" of the image's other K-1 samples, or
    "greedy": the image's greedy-caption reward `greedy` (B,) for each of its samples."""
    if kind == "greedy":
        return np.repeat(greedy[:, None], rewards.shape[1], axis=1)
    count = rewards.shape[1]
    return (rewards.sum(axis=1, keepdims=True) - rewards) / (count - 1)


@dataclass
class StepStats:
    """Sums over one step's samples (for the epoch's means)."""

    loss: float
    reward: float
    baseline: float
    words: int
    tokens: int  # words plus the <eos> of the captions that ended
    bad_endings: int
    samples: int

    def __add__(self, other: StepStats) -> StepStats:
        return StepStats(
            *(
                a + b
                for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
            )
        )


def scst_loss(
    model: torch.nn.Module,
    features: torch.Tensor,
    images: np.ndarray,
    scst: Scst,
    vocab: Vocabulary,
    generator: torch.Generator | None,
    autocast: torch.autocast | None = None,
) -> tuple[torch.Tensor, StepStats]:
    """The SCST loss of one batch (see the module docstring) and its statistics.

    features (B, 49, 2048) on the model's device; images (B,) positions in the reward's split.
    The model samples in its current mode (training: dropout on); the greedy baseline decodes
    in eval mode.
    """
    k, device = scst.config.samples, features.device
    greedy = (
        _greedy_rewards(model, features, images, scst, vocab)
        if scst.config.baseline == "greedy"
        else None
    )
    with autocast or contextlib.nullcontext():
        samples = sample_captions(
            model,
            features,
            vocab.sos,
            vocab.eos,
            vocab.pad,
            k,
            scst.config.max_len + 1,
            scst.suppress,
            generator,
        )
    tokens = samples.tokens.cpu().numpy()  # (B*K, T)
    rewards, bad = scst.reward(np.repeat(images, k), tokens)  # (B*K,)
    base = baselines(rewards.reshape(-1, k), scst.config.baseline, greedy).reshape(-1)
    advantage = torch.from_numpy(rewards - base).float().to(device)  # (B*K,)
    loss = -(advantage * samples.log_probs).mean()
    sampled = int(samples.lengths.sum())
    words = sampled - int((tokens == vocab.eos).sum())
    stats = StepStats(
        float(loss.detach()) * len(tokens),
        float(rewards.sum()),
        float(base.sum()),
        words,
        sampled,
        int(bad.sum()),
        len(tokens),
    )
    return loss, stats


def _greedy_rewards(
    model: torch.nn.Module,
    features: torch.Tensor,
    images: np.ndarray,
    scst: Scst,
    vocab: Vocabulary,
) -> np.ndarray:
    """(B,) reward of each image's greedy caption (eval mode, no gradient)."""
    was_training = model.training
    model.eval()
    decoded = greedy_decode(
        model, features, vocab.sos, vocab.eos, scst.config.max_len + 1, suppress=scst.suppress
    )
    model.train(was_training)
    tokens = np.full((len(decoded), scst.config.max_len + 1), vocab.pad, dtype=np.int64)
    for i, caption in enumerate(decoded):
        tokens[i, : len(caption.tokens)] = caption.tokens  # words only: no <eos> in Decoded
    return scst.reward(images, tokens)[0]


def train_epoch(trainer, epoch: int, rng: np.random.Generator) -> dict:
    """One SCST pass over the train images (`trainer`: pipeline.train.trainer.Trainer).

    `rng` is the epoch's seeded planner generator. Returns the epoch's metrics: train_loss
    (mean SCST loss per sample), reward, baseline, sample_length (words), bad_endings (share
    of samples ending in a function word), tokens_per_s (sampled tokens), epoch_seconds.
    """
    config = trainer.config
    plan = distributed.shard_plan(
        plan_epoch(trainer.train_split, config.train.batch_size, "random", rng), trainer.dist
    )
    generator = torch.Generator(device=trainer.device)
    generator.manual_seed(config.train.seed * 1_000_003 + epoch * 1_009 + trainer.dist.rank)
    loader = make_loader(
        trainer.data.store,
        trainer.train_split,
        plan,
        trainer.vocab.pad,
        config.train.workers,
        trainer.device,
    )
    trainer.model.train()
    totals = StepStats(0.0, 0.0, 0.0, 0, 0, 0, 0)
    started = time.perf_counter()
    bar = tqdm(
        zip(plan, loader, strict=True),
        total=len(plan),
        desc=f"scst epoch {epoch + 1}/{config.train.epochs}",
        disable=None if trainer.dist.is_main else True,
        mininterval=1.0,
        leave=False,
    )
    for (images, _), batch in bar:
        features = batch["features"].to(trainer.device, non_blocking=True)  # (B, 49, 2048)
        loss, stats = scst_loss(
            trainer.model,
            features,
            images,
            trainer.self_critical,
            trainer.vocab,
            generator,
            training_autocast(config, trainer.device),
        )
        _apply(trainer, loss)
        totals = totals + stats
        bar.set_postfix(reward=f"{totals.reward / totals.samples:.3f}")
    return _epoch_record(trainer, totals, time.perf_counter() - started)


def _apply(trainer, loss: torch.Tensor) -> None:
    """Backward, average gradients across ranks, clip, optimizer step (AMP-scaled on CUDA)."""
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(loss).backward()
    _average_gradients(trainer.model, trainer.dist)
    if trainer.config.train.grad_clip > 0:
        trainer.scaler.unscale_(trainer.optimizer)
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.config.train.grad_clip)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.state.step += 1


def _average_gradients(model: torch.nn.Module, dist: distributed.DistInfo) -> None:
    """Mean of every trainable parameter's gradient over the ranks (one flat all-reduce)."""
    if not dist.enabled or dist.world_size == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    torch_dist.all_reduce(flat)
    flat /= dist.world_size
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def _epoch_record(trainer, totals: StepStats, seconds: float) -> dict:
    """Means over every rank's samples."""
    sums = {}
    for key in ("loss", "reward", "baseline", "words", "tokens", "bad_endings"):
        sums[key], count = distributed.sum_pair(
            float(getattr(totals, key)), totals.samples, trainer.dist, trainer.device
        )
    count = max(count, 1)
    return {
        "train_loss": sums["loss"] / count,
        "reward": sums["reward"] / count,
        "baseline": sums["baseline"] / count,
        "sample_length": sums["words"] / count,
        "bad_endings": sums["bad_endings"] / count,
        "tokens_per_s": sums["tokens"] / seconds,
        "epoch_seconds": seconds,
    }


# model.* keys a run started with --init may change: training-only settings, not the function
INIT_FREE_KEYS = (
    "dropout",
    "doubly_stochastic",
    "attention_penalty",
    "init",
    "pretrained_embeddings",
    "freeze_embeddings",
)


def load_init_weights(model: torch.nn.Module, config: Config, payload: dict, path: str) -> None:
    """`--init`: copy a checkpoint's weights into the freshly built `model`.

    The config's model.* must equal the checkpoint's (sizes, kind, attention, ...; only
    `INIT_FREE_KEYS` may differ): otherwise one UserError naming the first differences.
    """
    saved = config_from_dict(payload["config"]).model
    differ = [
        f"model.{f.name} {getattr(saved, f.name)!r} vs {getattr(config.model, f.name)!r}"
        for f in dataclasses.fields(saved)
        if f.name not in INIT_FREE_KEYS and getattr(saved, f.name) != getattr(config.model, f.name)
    ]
    if differ:
        raise UserError(
            f"--init {path}: its decoder does not fit this config's model "
            f"(checkpoint vs config: {'; '.join(differ[:3])}); set model.* as the "
            "checkpoint was trained"
        )
    model.load_state_dict(payload["model"])
