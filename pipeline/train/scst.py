"""Self-critical sequence training (SCST): fine-tune a decoder on the CIDEr-D of its own samples.

`train.objective = "scst"` (`pipeline.train.objectives.SelfCritical`) trains with this loss
(Rennie et al. 2017; the "new self-critical" baseline of Luo 2020). Per train image,
`scst.samples` = K captions are drawn from the model (`pipeline.decoder.sample`, stopping at
`<eos>`; `scst.max_len` + 1 steps at most, as decoding counts them: up to `scst.max_len` words
then `<eos>`, or a caption cut after `scst.max_len` + 1 words); each gets the reward r = CIDEr-D against all
references of its image, with document frequencies from the train split's references
(`pipeline.metrics.cider`, fixed once per run), minus `scst.bad_ending_penalty` when it ends in
a function word (`BAD_ENDINGS`). With `scst.eos_token`, `<eos>` is scored as a word of the
candidate and of every reference (as self-critical.pytorch does), so how a caption ends counts.
The baseline b (`scst.baseline`) is "mean": the mean reward of the image's other K-1 samples,
or "greedy": the reward of the model's greedy caption (eval mode, no gradient). The loss of a
batch of B images is

    loss = -1/(B*K) * sum over samples of (r - b) * sum_t log p(w_t)

where the inner sum runs over the sample's tokens up to and including `<eos>` (not divided by
the length): a mean over samples, a sum over tokens. `train.batch_size` counts images here.

Sampling draws from a generator seeded with (train.seed, epoch, rank), so a resumed run
repeats a straight one. Under torchrun each rank samples its own images and rewards need no
communication; the training loop averages the gradients.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config import DEFAULT_LANGUAGE, Config, ScstConfig, checkpoint_config
from pipeline.dataset.batches import SplitData
from pipeline.dataset.store import FeatureStore
from pipeline.decoder.decode import Decoded, greedy_decode
from pipeline.decoder.generate import suppressed_tokens
from pipeline.decoder.sample import sample_captions
from pipeline.decoder.vocab import Vocabulary
from pipeline.errors import UserError
from pipeline.metrics.cider import CiderD

BAD_ENDINGS = ("a", "of", "with", "the")  # a caption ending in one of these is cut short (English)
MONITOR_SEED = 20_170_711  # the val-reward samples are the same draws every epoch


class CaptionReward:
    """CIDEr-D of sampled captions (vocabulary ids) against their image's references.

    `eos_token`: `<eos>` counts as a word at the end of every reference and of every caption
    that ended (a caption cut at the length limit has none). Captions are compared on the
    tokens evaluation scores them on (`evaluation_tokens` of `language`, the `data.language`,
    and the vocabulary's tokenizer).
    """

    def __init__(
        self,
        references: list[list[str]],
        vocab: Vocabulary,
        bad_ending_penalty: float = 0.0,
        eos_token: bool = False,
        language: str = DEFAULT_LANGUAGE,
    ):
        self.cider = CiderD(  # image i: references[i]
            references, end_token=eos_token, language=language, tokenizer=vocab.tokenizer
        )
        self.words = self.cider.vocab_table(vocab)  # (V, k) vocabulary id -> evaluation tokens
        self.bad = np.isin(np.asarray(vocab.itos), BAD_ENDINGS)  # (V,)
        self.penalty = bad_ending_penalty
        self.eos = vocab.eos
        self.eos_token = eos_token

    def __call__(self, images: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images (N,) positions in `references`; tokens (N, T) vocabulary ids, then `<eos>`
        and padding.

        Returns rewards (N,) float64 (CIDEr-D minus the bad-ending penalty) and (N,) bool:
        the caption ends in a function word.
        """
        ended = tokens == self.eos  # (N, T)
        finished = ended.any(axis=1)  # (N,)
        words = np.where(finished, ended.argmax(axis=1), tokens.shape[1])  # (N,)
        scored = words + (finished if self.eos_token else 0)  # (N,) tokens the reward reads
        kept = np.where(np.arange(tokens.shape[1]) < scored[:, None], tokens, 0)  # (N, T)
        evaluation = self.words[kept].reshape(len(tokens), -1)  # (N, T*k)
        last = kept[np.arange(len(tokens)), np.maximum(words - 1, 0)]  # (N,)
        bad = (words > 0) & self.bad[last]
        return self.cider.scores(images, evaluation) - self.penalty * bad, bad

    def of_decoded(self, images: np.ndarray, decoded: list[Decoded]) -> np.ndarray:
        """(B,) rewards of decoded captions (words only, `<eos>` implied where finished)."""
        width = max([1, *(len(d.tokens) + 1 for d in decoded)])
        tokens = np.zeros((len(decoded), width), dtype=np.int64)  # 0 = <pad>: scores nothing
        for i, caption in enumerate(decoded):
            tokens[i, : len(caption.tokens)] = caption.tokens
            if caption.finished:
                tokens[i, len(caption.tokens)] = self.eos
        return self(images, tokens)[0]


@dataclass
class Scst:
    """What an SCST run adds to a trainer: the reward and the settings."""

    reward: CaptionReward
    config: ScstConfig
    suppress: list[int]  # ids sampling never draws (as decoding: <pad>, <sos>, maybe <unk>)


def build_scst(config: Config, references: list[list[str]], vocab: Vocabulary) -> Scst:
    """The reward over `references` (per image; document frequencies computed once from
    them: the train split's for training) and the run's SCST settings."""
    reward = CaptionReward(
        references,
        vocab,
        config.scst.bad_ending_penalty,
        config.scst.eos_token,
        config.data.language,
    )
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

    def as_sums(self) -> dict[str, float]:
        """The fields as a name -> value dict (what the training loop adds up)."""
        return {k: float(v) for k, v in dataclasses.asdict(self).items()}


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

    features (B, R, C) on the model's device; images (B,) positions in the reward's split.
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
    return scst.reward.of_decoded(images, decoded)


@dataclass
class RewardMonitor:
    """The SCST reward on a fixed subset of val images, logged after every epoch."""

    scst: Scst  # its reward is over the subset's references
    vocab: Vocabulary
    rows: np.ndarray  # (n,) feature rows of the subset

    def rewards(self, model: torch.nn.Module, store: FeatureStore, device) -> dict[str, float]:
        """`val_reward_sample` (mean over K samples per image, the same draws every epoch,
        eval mode) and `val_reward_greedy` (the greedy captions')."""
        features = store.gather(self.rows).to(device)  # (n, R, D)
        images = np.arange(len(self.rows))
        k, vocab = self.scst.config.samples, self.vocab
        was_training = model.training
        model.eval()
        with torch.no_grad():
            samples = sample_captions(
                model,
                features,
                vocab.sos,
                vocab.eos,
                vocab.pad,
                k,
                self.scst.config.max_len + 1,
                self.scst.suppress,
                torch.Generator(device=device).manual_seed(MONITOR_SEED),
            )
        sampled, _ = self.scst.reward(np.repeat(images, k), samples.tokens.cpu().numpy())
        greedy = _greedy_rewards(model, features, images, self.scst, vocab)
        model.train(was_training)
        return {
            "val_reward_sample": float(sampled.mean()),
            "val_reward_greedy": float(greedy.mean()),
        }


def build_monitor(config: Config, val_split: SplitData, vocab: Vocabulary) -> RewardMonitor | None:
    """A monitor over the first `scst.val_images` val images (None when 0)."""
    count = min(config.scst.val_images, len(val_split.image_names))
    if count == 0:
        return None
    scst = build_scst(config, val_split.references[:count], vocab)
    return RewardMonitor(scst, vocab, val_split.image_rows[:count])


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
    saved = checkpoint_config(payload["config"]).model
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
