"""Training objectives: what turns a batch into a loss (`train.objective`).

An objective plans an epoch's batches, computes a batch's loss with the sums its epoch record
needs, and may add validation metrics of its own. The loop (`pipeline.train.loop`) does the
rest once for all of them: backward, gradient averaging, clipping, the non-finite stop, AMP,
warmup and the optimizer step.

- `CrossEntropy` ("xe"): teacher-forced cross-entropy (plus the doubly stochastic penalty)
  over `train.batching` batches of captions.
- `SelfCritical` ("scst"): the SCST policy gradient (`pipeline.train.scst`) over batches of
  `train.batch_size` train images.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.config import Config
from pipeline.dataset.batches import SplitData, plan_epoch
from pipeline.dataset.teacher_forced import batch_loss, teacher_forced_loss
from pipeline.decoder.vocab import Vocabulary
from pipeline.device import training_autocast
from pipeline.train import scst


class CrossEntropy:
    """Teacher-forced cross-entropy; sums: `loss` (CE x tokens, on the device) and `tokens`.

    The step (`teacher_forced_loss`) has static shapes and never waits for the device;
    `train.compile` compiles it.
    """

    name = "xe"
    host_bound = False  # nothing in a step reads the device

    def __init__(self, config: Config, device: torch.device):
        self.loss_function = teacher_forced_loss(config, device, config.train.compile)

    def plan(self, trainer, epoch: int, rng: np.random.Generator) -> list:
        """The epoch's batches of captions (`train.batching`)."""
        config = trainer.config.train
        return plan_epoch(trainer.train_split, config.batch_size, config.batching, rng)

    def loss(self, trainer, key, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch's loss (with the attention penalty) and its CE x tokens, tokens."""
        total, cross_entropy, tokens = batch_loss(
            self.loss_function, trainer.model, batch, trainer.device
        )
        return total, {"loss": cross_entropy.detach().double() * tokens, "tokens": tokens}

    def progress(self, sums: dict[str, float], seconds: float) -> str:
        """The progress bar's text so far."""
        return f"loss={sums['loss'] / sums['tokens']:.3f}, tok_s={sums['tokens'] / seconds:.0f}"

    def record(self, sums: dict[str, float], seconds: float) -> dict:
        """The epoch's metrics from its sums over every rank."""
        tokens = max(sums.get("tokens", 0.0), 1.0)
        return {"train_loss": sums.get("loss", 0.0) / tokens, "tokens_per_s": tokens / seconds}

    def validation(self, trainer) -> dict:
        """Nothing beyond the trainer's own validation."""
        return {}


class SelfCritical:
    """SCST (see pipeline/train/scst.py); sums: the fields of `scst.StepStats`."""

    name = "scst"
    host_bound = True  # every step reads its samples on the host for their rewards

    def __init__(self, config: Config, train_split: SplitData, val_split: SplitData, vocab):
        self.scst = scst.build_scst(config, train_split.references, vocab)
        self.monitor = scst.build_monitor(config, val_split, vocab)
        self.generator: torch.Generator | None = None

    def plan(self, trainer, epoch: int, rng: np.random.Generator) -> list:
        """Batches of `train.batch_size` train images, each image once; reseeds sampling."""
        config = trainer.config.train
        self.generator = torch.Generator(device=trainer.device)
        self.generator.manual_seed(config.seed * 1_000_003 + epoch * 1_009 + trainer.dist.rank)
        return plan_epoch(trainer.train_split, config.batch_size, "random", rng)

    def loss(self, trainer, key, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch's SCST loss and `scst.StepStats` sums."""
        images, _ = key
        features = batch["features"].to(trainer.device, non_blocking=True)  # (B, R, D)
        loss, stats = scst.scst_loss(
            trainer.model,
            features,
            images,
            self.scst,
            trainer.vocab,
            self.generator,
            training_autocast(trainer.config, trainer.device),
        )
        return loss, stats.as_sums()

    def progress(self, sums: dict[str, float], seconds: float) -> str:
        """The progress bar's text so far."""
        return f"reward={sums['reward'] / sums['samples']:.3f}"

    def record(self, sums: dict[str, float], seconds: float) -> dict:
        """The epoch's means per sample (loss, reward, baseline, length, bad endings)."""
        count = max(sums.get("samples", 0.0), 1.0)
        return {
            "train_loss": sums.get("loss", 0.0) / count,
            "reward": sums.get("reward", 0.0) / count,
            "baseline": sums.get("baseline", 0.0) / count,
            "sample_length": sums.get("words", 0.0) / count,
            "bad_endings": sums.get("bad_endings", 0.0) / count,
            "tokens_per_s": sums.get("tokens", 0.0) / seconds,
        }

    def validation(self, trainer) -> dict:
        """The sampled and greedy reward on the fixed val subset (rank 0 only)."""
        if self.monitor is None or not trainer.dist.is_main:
            return {}
        return self.monitor.rewards(trainer.model, trainer.data.store, trainer.device)


def build_objective(
    config: Config,
    train_split: SplitData,
    val_split: SplitData,
    vocab: Vocabulary,
    device: torch.device,
):
    """The objective `train.objective` names."""
    if config.train.objective == "scst":
        return SelfCritical(config, train_split, val_split, vocab)
    return CrossEntropy(config, device)
