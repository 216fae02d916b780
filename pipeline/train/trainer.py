"""Training from the HDF5 cache: epochs, validation, metrics log, checkpoints, resume.

Determinism: each epoch reseeds torch and the batch planner from (train.seed, epoch), so a
run resumed at an epoch boundary logs exactly what a straight run logs (on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline import contract, distributed, output
from pipeline.config import Config, checkpoint_config, config_to_dict
from pipeline.dataset.batches import SplitData, build_split
from pipeline.dataset.experiment import ExperimentData, load_experiment_data
from pipeline.dataset.teacher_forced import split_loss
from pipeline.decoder.build import build_decoder, check_model_fits
from pipeline.decoder.checkpoint import (
    check_run,
    load_checkpoint,
    load_weights,
    run_record,
    save_checkpoint,
)
from pipeline.decoder.embeddings import load_word_vectors
from pipeline.decoder.generate import decode_rows
from pipeline.decoder.vocab import MOST_FREQUENT, Vocabulary, build_vocabulary
from pipeline.device import grad_scaler_enabled, resolve_device
from pipeline.errors import UserError
from pipeline.metrics.coco import score_captions
from pipeline.train import scst
from pipeline.train.loop import train_epoch
from pipeline.train.objectives import build_objective
from pipeline.train.run_folder import (
    RunLock,
    append_metrics,
    default_run_name,
    lock_run,
    remove_leftovers,
    start_run,
    truncate_metrics,
)

FUSED_ADAM_DEVICES = ("cpu", "cuda")


@dataclass
class RunState:
    """What changes from epoch to epoch and must survive a resume."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps so far
    best_value: float | None = None
    best_epoch: int = -1
    epochs_since_best: int = 0
    history: list[dict] = field(default_factory=list)


@dataclass
class Trainer:
    """The pieces of one training run, built by `build_trainer`."""

    config: Config
    run_dir: Path
    device: torch.device
    data: ExperimentData
    vocab: Vocabulary
    train_split: SplitData
    val_split: SplitData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    state: RunState
    dist: distributed.DistInfo
    objective: object  # pipeline.train.objectives: what turns a batch into a loss
    lock: RunLock | None = None  # held by rank 0 while it trains in run_dir
    run: dict = field(default_factory=dict)  # `run_record`: what every checkpoint says of it


def train(
    config: Config,
    resume: str | Path | None = None,
    overrides: tuple[str, ...] = (),
    init: str | Path | None = None,
) -> Path:
    """Train (or resume) a run; returns the run folder. Prints progress as it goes.

    `init`: a checkpoint whose weights and vocabulary start a new run (e.g. SCST after XE).
    """
    with distributed.process_group() as dist:  # a UserError on one rank ends them all
        lock = lock_run(Path(resume)) if resume is not None and dist.is_main else None
        trainer = None
        try:
            trainer = build_trainer(config, resume, overrides, dist, init, lock)
            run_epochs(trainer)
            return trainer.run_dir
        finally:
            for held in (lock, trainer.lock if trainer else None):
                if held is not None:
                    held.release()


def build_trainer(
    config: Config, resume, overrides, dist, init=None, lock: RunLock | None = None
) -> Trainer:
    """Resolve config, data, vocabulary, model and optimizer (from a checkpoint if resuming;
    a new run's weights, vocabulary and splits from the `init` checkpoint if given).

    A resumed run's folder comes locked (`lock`); a new run's is created and locked here."""
    checkpoint = None
    if resume is not None:
        run_dir = Path(resume)
        if dist.is_main:
            remove_leftovers(run_dir)
        checkpoint = load_checkpoint(run_dir / "last.pt")
        check_run(checkpoint, run_dir / "last.pt")
        config = checkpoint_config(checkpoint["config"], overrides)  # `--set` e.g. train.epochs
        check_same_objective(checkpoint, config, run_dir)
    else:
        run_dir = Path(config.train.out_dir) / (config.train.name or default_run_name(config))
    device = distributed.device_for(dist, resolve_device(config.train.device))
    source = checkpoint or (load_checkpoint(init) if init is not None else None)
    data = load_experiment_data(
        config,
        source["features"] if source else None,
        saved_splits=source.get("splits") if source else None,
        device=device,
    )
    if checkpoint:
        vocab = Vocabulary(checkpoint["vocab"], config.vocab.tokenizer)
    elif source:
        vocab = init_vocabulary(config, source)
    else:
        vocab = make_vocabulary(data, config)
    train_split = build_split(data.frame, "train", vocab, config.vocab.max_len, data.row_of)
    val_split = build_split(data.frame, "val", vocab, config.vocab.max_len, data.row_of)
    if not train_split.tokens or not val_split.tokens:
        raise UserError(
            "the train and val splits both need images: check data.split_ratios or the "
            "split lists (captioner inspect CAPTIONS shows the splits)"
        )
    shape = contract.feature_shape(data.fingerprint)  # the decoder's input: the file's grid
    check_model_fits(config.model, vocab, device, shape)  # before allocating any weight
    torch.manual_seed(config.train.seed)  # the initial weights, the same on every rank
    model = build_model(config, vocab, shape).to(device)
    if init is not None and not checkpoint:
        scst.load_init_weights(model, config, source, str(init))
    optimizer = build_optimizer(config, model, device)
    if init is not None and not checkpoint and config.scst.keep_optimizer:
        keep_optimizer_state(optimizer, source, config, str(init))
    scheduler = build_scheduler(config, optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=grad_scaler_enabled(config, device))
    state = RunState()
    if checkpoint:
        load_weights(
            model,
            checkpoint["model"],
            run_dir / "last.pt",
            hint="; a resumed run keeps its model.* sizes",
        )
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = RunState(**checkpoint["state"])
        output.say(
            f"resuming {run_dir} after epoch {state.epoch} (until epoch {config.train.epochs})"
        )
    elif dist.is_main:
        run_dir, lock = start_run(config, vocab, data.splits)
    run = run_record(run_dir) if dist.is_main else {}
    distributed.broadcast_parameters(model, dist)
    return Trainer(
        config,
        run_dir,
        device,
        data,
        vocab,
        train_split,
        val_split,
        model,
        optimizer,
        scheduler,
        scaler,
        state,
        dist,
        build_objective(config, train_split, val_split, vocab, device),
        lock,
        run,
    )


def check_same_objective(checkpoint: dict, config: Config, run_dir: Path) -> None:
    """`--resume` continues a run as it was trained: another train.objective is a new run."""
    saved = checkpoint_config(checkpoint["config"]).train.objective
    if config.train.objective != saved:
        raise UserError(
            f"{run_dir} was trained with train.objective = {saved!r}: --resume cannot switch it "
            f"to {config.train.objective!r}; start a new run from its checkpoint with "
            f"`captioner train --config CONFIG --init {run_dir / 'best.pt'}`"
        )


def init_vocabulary(config: Config, source: dict) -> Vocabulary:
    """The vocabulary of the --init checkpoint, with the tokenizer and language it was built
    with: the new run takes `vocab.tokenizer` and `data.language` into its config (and says
    so when they differ), so its reward and scores read the captions the same way."""
    saved = checkpoint_config(source["config"])
    for section, key in (("vocab", "tokenizer"), ("data", "language")):
        theirs, ours = getattr(getattr(saved, section), key), getattr(getattr(config, section), key)
        if theirs != ours:
            output.say(f"{section}.{key}: {theirs!r}, as the --init checkpoint's (not {ours!r})")
            setattr(getattr(config, section), key, theirs)
    return Vocabulary(source["vocab"], config.vocab.tokenizer)


def make_vocabulary(data: ExperimentData, config: Config) -> Vocabulary:
    """Vocabulary from the train split's captions; prints size and the 10 most frequent words."""
    train_captions = data.frame.loc[data.frame["split"] == "train", "caption"]
    vocab, counts = build_vocabulary(train_captions, config.vocab.min_freq, config.vocab.tokenizer)
    top = ", ".join(f"{w} ({c})" for w, c in counts.most_common(MOST_FREQUENT))
    output.say(
        f"vocabulary: {len(vocab)} tokens (min_freq {config.vocab.min_freq}, "
        f"{len(counts)} distinct train words); most frequent: {top}"
    )
    return vocab


def build_model(
    config: Config, vocab: Vocabulary, shape: contract.FeatureShape = contract.LEGACY_SHAPE
) -> torch.nn.Module:
    """The decoder over grids of `shape`, with pretrained word vectors if configured; prints
    parameter counts."""
    vectors = None
    if config.model.pretrained_embeddings:
        vectors, coverage = load_word_vectors(
            config.model.pretrained_embeddings, vocab.itos, config.model.embed_dim
        )
        output.say(
            f"embeddings: {config.model.pretrained_embeddings} covers "
            f"{coverage:.1%} of the vocabulary"
            f"{' (frozen)' if config.model.freeze_embeddings else ''}"
        )
    model = build_decoder(config.model, vocab, pretrained_embeddings=vectors, shape=shape)
    total, trainable = model.parameter_counts()
    output.say(
        f"decoder ({describe_decoder(config)}): {total / 1e6:.2f} M parameters, "
        f"{trainable / 1e6:.2f} M trainable. No CNN here: the grids "
        f"({shape.describe()}) come from the feature file."
    )
    return model


def describe_decoder(config: Config) -> str:
    """A few words naming the decoder, e.g. "lstm, additive attention"."""
    m = config.model
    if m.kind == "transformer":
        return f"transformer, {m.layers} layers, d {m.embed_dim}, {m.heads} heads"
    return f"lstm, {m.attention} attention"


def build_optimizer(config: Config, model: torch.nn.Module, device: torch.device):
    """Adam over the trainable parameters; fused (one kernel per update instead of a pass per
    element-wise op) on CPU and CUDA. A resumed run keeps the kind its checkpoint saved."""
    return torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.train.lr,
        fused=device.type in FUSED_ADAM_DEVICES,
    )


def keep_optimizer_state(
    optimizer: torch.optim.Optimizer, payload: dict, config: Config, path: str
) -> None:
    """`scst.keep_optimizer`: continue the --init checkpoint's Adam moments (as
    self-critical.pytorch does) at this run's learning rate."""
    saved = payload.get("optimizer")
    if not saved:
        raise UserError(f"--init {path} holds no optimizer state (scst.keep_optimizer = true)")
    try:
        optimizer.load_state_dict(saved)
    except ValueError as error:  # other trainable parameters, e.g. freeze_embeddings changed
        raise UserError(
            f"--init {path}: its optimizer state does not fit this run's trainable "
            f"parameters ({error}); keep model.freeze_embeddings as it was, or set "
            "scst.keep_optimizer = false"
        ) from None
    for group in optimizer.param_groups:
        group["lr"] = config.train.lr
        group.pop("initial_lr", None)


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer):
    """StepLR, ReduceLROnPlateau (on the selection metric) or a constant rate."""
    t = config.train
    if t.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, t.step_size, t.gamma)
    if t.scheduler == "plateau":
        mode = "min" if t.selection_metric == "loss" else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=t.gamma, patience=t.plateau_patience
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def validation_scores(trainer: Trainer) -> tuple[dict, list[tuple[str, str, list[str]]]]:
    """Greedy-decoded BLEU-4 and CIDEr on val (train.val_images caps it); a few samples."""
    split = trainer.val_split
    count = len(split.image_names)
    if trainer.config.train.val_images:
        count = min(count, trainer.config.train.val_images)
    positions = distributed.shard_indices(count, trainer.dist)
    decoded = decode_rows(
        trainer.model,
        trainer.data.store,
        split.image_rows[positions],
        trainer.vocab,
        trainer.config.eval,
        1,
        trainer.device,
    )
    captions = distributed.gather_captions(
        {int(p): trainer.vocab.decode(d.tokens) for p, d in zip(positions, decoded, strict=True)},
        trainer.dist,
    )
    if not trainer.dist.is_main:
        return {}, []
    predictions = {str(p): captions[p] for p in range(count)}
    references = {str(p): split.references[p] for p in range(count)}
    report = score_captions(
        references,
        predictions,
        metrics=("Bleu_4", "CIDEr"),
        language=trainer.config.data.language,
        tokenizer=trainer.config.vocab.tokenizer,
    )
    samples = [
        (split.image_names[p], captions[p], split.references[p])
        for p in range(min(trainer.config.train.samples, count))
    ]
    return {"Bleu_4": report.scores["Bleu_4"], "CIDEr": report.scores["CIDEr"]}, samples


def is_better(config: Config, value: float, best: float | None) -> bool:
    """Higher is better for CIDEr/BLEU-4, lower for loss."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if config.train.selection_metric == "loss" else value > best


def stopped_early(config: Config, state: RunState) -> bool:
    """Whether train.patience epochs have passed without an improvement."""
    return bool(config.train.patience) and state.epochs_since_best >= config.train.patience


def run_epochs(trainer: Trainer) -> None:
    """Epoch loop with validation, logging, checkpoints and early stopping."""
    config, state = trainer.config, trainer.state
    if trainer.dist.is_main:
        truncate_metrics(trainer.run_dir, state.epoch)
    if state.epoch >= config.train.epochs:
        output.say(
            f"{trainer.run_dir} has already trained {state.epoch} epochs; "
            "extend it with --set train.epochs=N"
        )
    elif stopped_early(config, state):
        output.say(
            f"{trainer.run_dir} stopped early after epoch {state.epoch} (no "
            f"{config.train.selection_metric} improvement for {config.train.patience} epochs); "
            "raise train.patience to train on"
        )
        return
    while state.epoch < config.train.epochs:
        epoch = state.epoch
        record = {"epoch": epoch + 1, "lr": trainer.optimizer.param_groups[0]["lr"]}
        record.update(train_epoch(trainer, trainer.objective, epoch))
        record["val_loss"] = split_loss(
            trainer.model,
            trainer.data.store,
            trainer.val_split,
            config,
            trainer.vocab.pad,
            trainer.device,
            trainer.dist,
        )
        scores, samples = validation_scores(trainer)
        record.update(scores)
        record.update(trainer.objective.validation(trainer))
        value = distributed.broadcast_float(
            record["val_loss"]
            if config.train.selection_metric == "loss"
            else record.get(config.train.selection_metric, 0.0),
            trainer.dist,
            trainer.device,
        )
        step_scheduler(trainer, value)
        state.epoch += 1
        improved = is_better(config, value, state.best_value)
        if improved:
            state.best_value, state.best_epoch, state.epochs_since_best = value, epoch + 1, 0
        else:
            state.epochs_since_best += 1
        state.history.append({k: v for k, v in record.items() if isinstance(v, (int, float))})
        if trainer.dist.is_main:
            report_epoch(trainer, record, samples, improved)
            save_run_checkpoints(trainer, improved)
        if stopped_early(config, state):
            output.say(
                f"early stopping: no {config.train.selection_metric} improvement "
                f"for {config.train.patience} epochs (best epoch {state.best_epoch})"
            )
            break
    output.say(
        f"run folder: {trainer.run_dir} (best epoch {state.best_epoch}, "
        f"{config.train.selection_metric} {state.best_value})"
    )


def step_scheduler(trainer: Trainer, value: float) -> None:
    """Plateau schedulers watch the selection metric; the others step once per epoch."""
    if isinstance(trainer.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        trainer.scheduler.step(value)
    else:
        trainer.scheduler.step()


def report_epoch(trainer: Trainer, record: dict, samples: list, improved: bool) -> None:
    """Print the epoch line and samples; append to metrics.jsonl (and TensorBoard if present)."""
    parts = [
        f"epoch {record['epoch']}",
        f"train_loss {record['train_loss']:.4f}",
        f"val_loss {record['val_loss']:.4f}",
    ]
    parts += [
        f"{k} {record[k]:.4f}"
        for k in ("reward", "baseline", "Bleu_4", "CIDEr")
        if record.get(k) is not None
    ]
    parts.append(f"{record['tokens_per_s']:.0f} tok/s")
    output.say("  ".join(parts) + ("  *best*" if improved else ""))
    for image, generated, references in samples:
        output.say(f"  {image}: {generated!r}  (reference: {references[0]!r})")
    append_metrics(trainer.run_dir, record)
    log_tensorboard(trainer.run_dir, record)


# metrics.jsonl key -> TensorBoard tag ("loss/train" and "loss/val" share one chart)
TENSORBOARD_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "CIDEr": "val/CIDEr",
    "Bleu_4": "val/BLEU-4",
    "lr": "lr",
    "tokens_per_s": "speed/tokens_per_s",
    "epoch_seconds": "speed/epoch_seconds",
}


def log_tensorboard(run_dir: Path, record: dict) -> None:
    """TENSORBOARD_TAGS scalars to RUN/tensorboard when tensorboard is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        for key, tag in TENSORBOARD_TAGS.items():
            if isinstance(record.get(key), (int, float)):
                writer.add_scalar(tag, record[key], record["epoch"])


def checkpoint_payload(trainer: Trainer) -> dict:
    """Everything a resume or an evaluation needs, as tensors and plain Python types."""
    state = trainer.state
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "state": {
            "epoch": state.epoch,
            "step": state.step,
            "best_value": state.best_value,
            "best_epoch": state.best_epoch,
            "epochs_since_best": state.epochs_since_best,
            "history": state.history,
        },
        "config": config_to_dict(trainer.config),
        "vocab": list(trainer.vocab.itos),
        "features": trainer.data.fingerprint,
        "splits": trainer.data.splits,
        "run": trainer.run,
    }


def save_run_checkpoints(trainer: Trainer, improved: bool) -> None:
    """RUN/last.pt every epoch; RUN/best.pt when the selection metric improved."""
    payload = checkpoint_payload(trainer)
    if improved:  # best.pt first: a kill between the two leaves last.pt behind, so the
        save_checkpoint(payload, trainer.run_dir / "best.pt")  # resume redoes this epoch
    save_checkpoint(payload, trainer.run_dir / "last.pt")
