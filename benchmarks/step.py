"""The teacher-forced training step: captioner's LSTM decoder vs the public tutorial's step.

    .venv/bin/python -m benchmarks.step [--rounds 6] [--compile]

Sizes: embed/hidden/attention 512, vocabulary 10,000, batch 32
captions of up to 20 steps (lengths drawn once, seeded; the same batch for every variant),
49 regions x 2048 channels, Adam (the tutorial's plain one, ours fused as the trainer builds
it), dropout 0.5, doubly stochastic λ = 1, 2 torch threads.

The reference is our own re-implementation, from its published description, of the structure
of sgrvinod's Show-Attend-Tell tutorial step (`TutorialDecoder` below): every step recomputes
the image side of the attention (W_f·features) for the active rows, writes its (b, V)
projection into a (B, T, V) tensor, and the loss packs that tensor afterwards. captioner's
step is the trainer's on a CPU (`pipeline.dataset.teacher_forced.teacher_forced_loss`: the
LSTM's packed `forward`, its batch shrinking step by step), W_f·features once per batch, the
embedding's share of the LSTM gates once, the output projection once on all the hidden states,
each step weight's gradient once over all the steps (pipeline/decoder/step_weight.py); `captioner_static` is the static-shape step a GPU runs (every
caption every step of the batch, the padded ones masked in the loss), eager on this CPU. `--compile` adds the step through
torch.compile (`train.compile`; compiling takes minutes on a CPU, in the warm-up round).

Printed: seconds per step (best of the rounds, variants alternated), the speedup, and
`step_gemm_efficiency` = the step's matmul FLOPs (forward + backward, counted by
torch.utils.flop_counter) / (step seconds x this machine's fp32 matmul FLOP/s, measured in the
same run on 1024^3 products). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import timed
from pipeline.config import Config, ModelConfig
from pipeline.contract import CHANNELS, REGIONS
from pipeline.dataset.teacher_forced import teacher_forced_loss
from pipeline.decoder.loss import dense_caption_loss
from pipeline.decoder.lstm import CaptionDecoder
from pipeline.device import cpu_has_native_bf16
from pipeline.train.trainer import build_optimizer

VOCAB, WIDTH, BATCH, MAX_STEPS = 10_000, 512, 32, 20
PAD = 0


class TutorialAttention(nn.Module):
    """The tutorial's attention: ReLU(W_f f + W_h h) -> score -> softmax over regions."""

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.encoder_att = nn.Linear(feature_dim, attention_dim)
        self.decoder_att = nn.Linear(hidden_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    def forward(self, features: torch.Tensor, h: torch.Tensor):
        """features (b, R, D), h (b, H) -> context (b, D), alpha (b, R)."""
        projected = self.encoder_att(features)  # (b, R, A): recomputed at every step
        scores = self.full_att(F.relu(projected + self.decoder_att(h).unsqueeze(1))).squeeze(2)
        alpha = torch.softmax(scores, dim=1)  # (b, R)
        return (features * alpha.unsqueeze(2)).sum(dim=1), alpha


class TutorialDecoder(nn.Module):
    """The tutorial's decoder structure: per-step attention, per-step (b, V) output slices."""

    def __init__(self, vocab: int, width: int, feature_dim: int = CHANNELS):
        super().__init__()
        self.attention = TutorialAttention(feature_dim, width, width)
        self.embedding = nn.Embedding(vocab, width)
        self.dropout = nn.Dropout(0.5)
        self.decode_step = nn.LSTMCell(width + feature_dim, width)
        self.init_h = nn.Linear(feature_dim, width)
        self.init_c = nn.Linear(feature_dim, width)
        self.f_beta = nn.Linear(width, feature_dim)
        self.fc = nn.Linear(width, vocab)
        self.vocab = vocab

    def forward(self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor):
        """features (B, R, D), captions (B, T), lengths (B,) sorted descending ->
        predictions (B, T-1, V), alphas (B, T-1, R)."""
        batch = features.shape[0]
        steps = (lengths - 1).tolist()
        embeddings = self.embedding(captions)  # (B, T, E)
        mean = features.mean(dim=1)  # (B, D)
        h, c = self.init_h(mean), self.init_c(mean)  # (B, H) each
        predictions = features.new_zeros(batch, max(steps), self.vocab)  # (B, T-1, V)
        alphas = features.new_zeros(batch, max(steps), features.shape[1])  # (B, T-1, R)
        for t in range(max(steps)):
            b = sum(s > t for s in steps)
            context, alpha = self.attention(features[:b], h[:b])  # (b, D), (b, R)
            context = torch.sigmoid(self.f_beta(h[:b])) * context
            h, c = self.decode_step(
                torch.cat([embeddings[:b, t], context], dim=1), (h[:b], c[:b])
            )  # (b, H) each
            predictions[:b, t] = self.fc(self.dropout(h))  # (b, V) into the (B, T-1, V) tensor
            alphas[:b, t] = alpha
        return predictions, alphas


def tutorial_loss(model: TutorialDecoder, batch: dict) -> torch.Tensor:
    """Cross-entropy on the packed predictions + λ Σ_i (1 - Σ_t α_ti)² / B (the tutorial's)."""
    predictions, alphas = model(batch["features"], batch["captions"], batch["lengths"])
    steps = (batch["lengths"] - 1).tolist()
    packed = nn.utils.rnn.pack_padded_sequence(predictions, steps, batch_first=True).data
    targets = nn.utils.rnn.pack_padded_sequence(
        batch["captions"][:, 1:], steps, batch_first=True
    ).data
    return F.cross_entropy(packed, targets) + ((1.0 - alphas.sum(dim=1)) ** 2).mean()


def captioner_loss(
    model: CaptionDecoder, precision: str, compile: bool = False
) -> Callable[[dict], torch.Tensor]:
    """captioner's training loss of a batch (each caption its own image) under
    `train.precision` = `precision`, as the trainer computes it."""
    config = Config()
    config.model.doubly_stochastic = 1.0
    config.train.precision = precision
    loss = teacher_forced_loss(config, torch.device("cpu"), compile)
    return lambda b: loss(model, b["features"], b["image_index"], b["captions"], b["lengths"])[0]


def static_loss(model: CaptionDecoder) -> Callable[[dict], torch.Tensor]:
    """The static-shape step a GPU (or `train.compile`) runs, eager here in fp32: every
    caption every step of the batch, the padded steps masked in the loss."""

    def loss(b: dict) -> torch.Tensor:
        logits, alphas = model.teacher_forced(b["features"], b["image_index"], b["captions"])
        return dense_caption_loss(logits, b["captions"], alphas, b["lengths"], 1.0)[0]

    return loss


def make_batch(seed: int = 0) -> dict:
    """One batch: BATCH grids and captions of 9..MAX_STEPS+1 tokens, sorted by length."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, MAX_STEPS + 2, (BATCH,), generator=generator)
    lengths = lengths.sort(descending=True).values  # (B,)
    captions = torch.randint(4, VOCAB, (BATCH, int(lengths.max())), generator=generator)
    captions[:, 0] = 1
    for row, length in enumerate(lengths.tolist()):
        captions[row, length - 1] = 2
        captions[row, length:] = PAD
    features = torch.randn(BATCH, REGIONS, CHANNELS, generator=generator)  # (B, 49, 2048)
    return {
        "features": features,
        "captions": captions,
        "lengths": lengths,
        "image_index": torch.arange(BATCH),
    }


def build_variants(compile: bool) -> dict:
    """name -> (model, loss function of the batch)."""
    torch.manual_seed(0)
    ours = CaptionDecoder(
        VOCAB, ModelConfig(embed_dim=WIDTH, hidden_dim=WIDTH, attention_dim=WIDTH, dropout=0.5)
    )
    tutorial = TutorialDecoder(VOCAB, WIDTH)
    variants = {
        "tutorial": (tutorial, lambda b: tutorial_loss(tutorial, b)),
        "captioner": (ours, captioner_loss(ours, "fp32")),
        "captioner_static": (ours, static_loss(ours)),
    }
    if compile:
        variants["captioner_compiled"] = (ours, captioner_loss(ours, "fp32", compile=True))
    if cpu_has_native_bf16():
        variants["captioner_bf16"] = (ours, captioner_loss(ours, "bf16"))
    return variants


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_of, batch: dict) -> None:
    """zero_grad, forward, backward, Adam step."""
    optimizer.zero_grad(set_to_none=True)
    loss_of(batch).backward()
    optimizer.step()


def step_flops(model: nn.Module, loss_of, batch: dict) -> int:
    """Matmul FLOPs of one forward + backward (torch's flop counter)."""
    with FlopCounterMode(display=False) as counter:
        loss_of(batch).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_flops_per_s(size: int = 1024, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of a size^3 matrix product on this machine, now."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b))[0] for _ in range(repeats))
    return 2 * size**3 / best


def measure(rounds: int, compile: bool) -> dict:
    """Alternate the variants for `rounds` rounds (round 0 is warm-up); best step of each."""
    torch.set_num_threads(2)
    batch = make_batch()
    variants = build_variants(compile)
    config = Config()
    config.train.lr = 1e-4
    optimizers = {  # the tutorial's plain Adam; ours as the trainer builds it (fused on CPU)
        name: torch.optim.Adam(model.parameters(), lr=config.train.lr)
        if name == "tutorial"
        else build_optimizer(config, model, torch.device("cpu"))
        for name, (model, _) in variants.items()
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    peak = []
    for round_index in range(rounds + 1):
        names = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for name in names:
            model, loss_of = variants[name]
            model.train()
            seconds, _ = timed(lambda: train_step(model, optimizers[name], loss_of, batch))  # noqa: B023
            if round_index:
                times[name].append(seconds)
        peak.append(matmul_flops_per_s())
    flops = {  # a compiled step does the eager step's work (the counter cannot see into it)
        name: step_flops(model, loss_of, batch)
        for name, (model, loss_of) in variants.items()
        if name != "captioner_compiled"
    }
    if "captioner_compiled" in variants:
        flops["captioner_compiled"] = flops["captioner"]
    return {
        "seconds": {name: min(values) for name, values in times.items()},
        "flops": flops,
        "matmul_flops_per_s": max(peak),
    }


def report(measured: dict) -> dict:
    """Print the table; return the JSON figures."""
    seconds, flops, peak = measured["seconds"], measured["flops"], measured["matmul_flops_per_s"]
    print(
        f"teacher-forced step: batch {BATCH}, <= {MAX_STEPS} steps, {WIDTH}/{WIDTH}/{WIDTH}, "
        f"V = {VOCAB:,}; machine fp32 matmul {peak / 1e9:.0f} GFLOP/s"
    )
    print(f"{'variant':<20}{'s/step':>9}{'GFLOP':>9}{'matmul eff.':>13}{'vs tutorial':>13}")
    for name in seconds:
        efficiency = flops[name] / (seconds[name] * peak)
        print(
            f"{name:<20}{seconds[name]:>9.3f}{flops[name] / 1e9:>9.1f}{efficiency:>13.2f}"
            f"{seconds['tutorial'] / seconds[name]:>12.2f}x"
        )
    result = {
        "step_seconds": {k: round(v, 4) for k, v in seconds.items()},
        "speedup_step_vs_tutorial": round(seconds["tutorial"] / seconds["captioner"], 3),
        "step_gemm_efficiency": round(flops["captioner"] / (seconds["captioner"] * peak), 3),
        "tutorial_gemm_efficiency": round(flops["tutorial"] / (seconds["tutorial"] * peak), 3),
        "matmul_gflops": round(peak / 1e9, 1),
    }
    result["speedup_static_step_vs_tutorial"] = round(
        seconds["tutorial"] / seconds["captioner_static"], 3
    )
    if "captioner_compiled" in seconds:
        result["speedup_compiled_step_vs_tutorial"] = round(
            seconds["tutorial"] / seconds["captioner_compiled"], 3
        )
    if "captioner_bf16" in seconds:
        result["speedup_step_bf16_vs_fp32"] = round(
            seconds["captioner"] / seconds["captioner_bf16"], 3
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="measured rounds (default 6)")
    parser.add_argument(
        "--compile", action="store_true", help="also the torch.compile'd step (train.compile)"
    )
    args = parser.parse_args()
    print(json.dumps(report(measure(args.rounds, args.compile))))


if __name__ == "__main__":
    main()
