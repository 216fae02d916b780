"""Typed experiment configuration: TOML file -> dataclasses, `--set section.key=value` overrides.

Every section is a dataclass with defaults; a TOML file sets any subset of keys. Unknown
sections or keys, wrong types and out-of-range values end in one `UserError` naming the
key. The resolved config is saved with every run (`save_config`) and in every checkpoint
(`config_to_dict`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.backbones import BACKBONES, DEFAULT_BACKBONE, DEFAULT_GRID
from pipeline.errors import UserError

CAPTION_FORMATS = ("auto", "flickr30k-csv", "flickr8k-csv", "flickr8k-token", "karpathy", "coco")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FEATURE_DTYPES = ("float16", "float32")
DEVICES = ("auto", "cpu", "cuda")
# features.cache: how stage two holds the grids (pipeline/dataset/store.py)
FEATURE_CACHES = ("auto", "stream", "ram", "device")
# features.decode: where extract decodes plain JPEGs (pipeline/extract/device_decode.py)
DECODES = ("auto", "device", "cpu")
ATTENTIONS = ("linear", "additive")
MODEL_KINDS = ("lstm", "transformer")
ATTENTION_ACTIVATIONS = ("tanh", "relu")
ATTENTION_PENALTIES = ("mean", "sum")
DECODER_INITS = ("uniform", "xavier")
BATCHINGS = ("captions", "images", "random")
SCHEDULERS = ("step", "plateau", "none")
SPLITS = ("train", "val", "test")
SELECTION_METRICS = ("CIDEr", "Bleu_4", "loss")
OBJECTIVES = ("xe", "scst")
SCST_BASELINES = ("mean", "greedy")
# How captions become tokens (pipeline.captions.text); "ascii" is the regex of checkpoints saved
# before vocab.tokenizer existed (see LEGACY_KEYS), kept so they load and score as before.
TOKENIZERS = ("words", "characters", "ascii")
DEFAULT_TOKENIZER = "words"
DEFAULT_LANGUAGE = "en"
LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")  # BCP-47, simplified
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # NUL, tab, newline, DEL, C1...
SEED_LIMIT = 2**32  # seeds are in [0, SEED_LIMIT): what numpy's and torch's generators take


@dataclass
class DataConfig:
    """Where the captions and images are, and how to split them when the file has no split:
    by official split lists (`split_lists`, see pipeline.captions.readers), else by `split_ratios`."""

    captions: str = ""
    images: str = ""
    format: str = "auto"
    split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    split_seed: int = 0
    subset: float = 1.0
    split_lists: str = ""  # folder of Flickr8k's official split lists; "" = beside the captions
    language: str = DEFAULT_LANGUAGE  # BCP-47 tag of the captions: "en", "es", "zh-Hans", ...


@dataclass
class FeaturesConfig:
    """Stage one: the feature file and how it is made."""

    path: str = "features/features.h5"
    backbone: str = DEFAULT_BACKBONE  # a name of pipeline/backbones.py's table
    weights: str = "imagenet"
    grid: int = DEFAULT_GRID  # cells per side the grid is pooled to; 0: the backbone's own
    class_token: bool = False  # vit_b_16: keep the class token as one more region
    device: str = "auto"
    precision: str = "auto"
    dtype: str = "float16"
    batch_size: int = 32
    workers: int = 2
    decode: str = "auto"  # JPEGs decoded on the model's device: "auto" = on CUDA only
    cache: str = "auto"  # stage two: "stream" from HDF5, held in "ram" or on the "device"
    ram_budget_gb: float = 0.0  # the most RAM cache = "auto" may hold; 0: no cap of its own


@dataclass
class VocabConfig:
    """Vocabulary built from train-split captions only, split into tokens by `tokenizer`:
    "words" (spaced scripts) or "characters" (Chinese, Japanese, Thai)."""

    min_freq: int = 5
    max_len: int = 30
    tokenizer: str = DEFAULT_TOKENIZER


@dataclass
class ModelConfig:
    """The decoder: `kind` "lstm" (attention LSTM) or "transformer" (over the feature grid).

    Shared: embed_dim (the Transformer's width d), dropout, feature_norm, the embeddings.
    LSTM only: attention, hidden_dim, attention_dim, gate, attention_activation,
    init_state_tanh, init. Transformer only: layers, heads,
    ff_dim, grid_positions (a learned 2-D position code added to the grid's
    cells, sized from the feature file),
    tied_output (the output projection reuses the word embedding), max_positions.
    """

    kind: str = "lstm"
    attention: str = "additive"
    embed_dim: int = 512
    hidden_dim: int = 512
    attention_dim: int = 512
    dropout: float = 0.5
    gate: bool = True
    doubly_stochastic: float = 1.0
    attention_penalty: str = "mean"  # λ's penalty averaged (or summed) over the regions
    # The shipped configs choose relu / no tanh (benchmarks/quality.py); these defaults stay
    # the former behaviour so checkpoints saved without the keys load unchanged.
    attention_activation: str = "tanh"
    init_state_tanh: bool = True
    init: str = "uniform"
    feature_norm: bool = True
    pretrained_embeddings: str = ""
    freeze_embeddings: bool = False
    layers: int = 3
    heads: int = 8
    ff_dim: int = 2048
    grid_positions: bool = True
    tied_output: bool = True
    max_positions: int = 64


@dataclass
class TrainConfig:
    """Optimisation, checkpoints and model selection."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 4e-4
    seed: int = 0
    out_dir: str = "runs"
    name: str = ""
    scheduler: str = "step"
    step_size: int = 10
    gamma: float = 0.5
    plateau_patience: int = 2
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    batching: str = "captions"
    selection_metric: str = "CIDEr"
    patience: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int = 0
    val_images: int = 0
    samples: int = 3
    objective: str = "xe"
    warmup_steps: int = 0  # linear learning-rate warmup over the first N optimizer steps
    compile: bool = False  # torch.compile the cross-entropy step (CUDA graphs on CUDA)
    length_bucket: int = 1  # pad caption batches to a multiple of N tokens (1: their longest)


@dataclass
class ScstConfig:
    """Self-critical sequence training (train.objective = "scst"; see pipeline/train/scst.py)."""

    samples: int = 5
    baseline: str = "mean"
    max_len: int = 16
    bad_ending_penalty: float = 0.0
    eos_token: bool = False  # score <eos> as a CIDEr-D word (self-critical.pytorch does)
    keep_optimizer: bool = False  # --init: continue the checkpoint's Adam moments
    val_images: int = 100  # val images whose sampled and greedy reward each epoch logs


@dataclass
class EvalConfig:
    """Decoding for validation, evaluate and caption; evaluate's and caption's flags default
    to a checkpoint's saved section (`with_flags`)."""

    split: str = "test"  # evaluate's split (and the one `inspect` checks)
    beam_size: int = 3
    length_penalty: float = 0.0
    max_len: int = 30
    suppress_unk: bool = True
    batch_size: int = 50
    examples: int = 5  # images whose captions evaluate prints


@dataclass
class Config:
    """A whole experiment. `name` comes from the config file's stem, not from a section."""

    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    scst: ScstConfig = field(default_factory=ScstConfig)
    name: str = "default"


SECTIONS = ("data", "features", "vocab", "model", "train", "eval", "scst")
# Keys renamed since checkpoints were first written: old key -> (new key, old value -> new value).
RENAMED_KEYS = {
    ("train", "captions_per_image"): ("batching", {"all": "images", "random": "random"}),
    ("features", "in_memory"): (
        "cache",
        {"true": "ram", "false": "stream", True: "ram", False: "stream"},
    ),
}
# Keys a checkpoint saved before they existed lacks -> what that checkpoint was trained with.
LEGACY_KEYS = {("vocab", "tokenizer"): "ascii", ("data", "language"): "en"}


def load_config(
    path: str | Path | typing.Sequence[str | Path] | None = None,
    overrides: typing.Sequence[str] = (),
) -> Config:
    """Read a TOML file (or start from defaults), apply `section.key=value` overrides, validate.

    A file may start from others: `base = "demo.toml"` (or a list, merged in order), paths
    relative to the file, chained; its own keys override its bases', `--set` overrides all.
    A list of files is read the same way, as if it were a file's `base`.
    """
    raw: dict = {}
    name = "default"
    paths = [path] if isinstance(path, (str, Path)) else list(path or [])
    for layer in paths:
        merge_tables(raw, read_layers(Path(layer), ()))
    if paths:
        name = "+".join(Path(p).stem for p in paths)
    for item in overrides:
        section, key, value = parse_override(item)
        raw.setdefault(section, {})[key] = value
    config = config_from_dict(raw)
    config.name = name
    return config


def read_layers(path: Path, chain: tuple[Path, ...]) -> dict:
    """A config file's tables merged over those of its `base` files (recursively)."""
    if not path.is_file():
        where = f" (a base of {chain[-1]})" if chain else ""
        raise UserError(f"config file not found: {path}{where}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None
    bases = raw.pop("base", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise UserError(f"config file {path}: base must be a file name or a list of them")
    merged: dict = {}
    for base in bases:
        base_path = path.parent / base
        if base_path.resolve() in {p.resolve() for p in (*chain, path)}:
            raise UserError(f"config file {path}: its bases go round in a circle ({base})")
        merge_tables(merged, read_layers(base_path, (*chain, path)))
    merge_tables(merged, raw)
    return merged


def merge_tables(into: dict, layer: dict) -> None:
    """Copy `layer`'s keys into `into`, table by table (a layer's key wins)."""
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key].update(value)
        else:
            into[key] = dict(value) if isinstance(value, dict) else value


def parse_override(item: str) -> tuple[str, str, object]:
    """Split `section.key=value`; the value is read as a TOML value, else kept as a string."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise UserError(f"--set expects section.key=value, got {item!r}")
    dotted, text = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return section, key, value


def config_from_dict(raw: dict) -> Config:
    """Build and validate a Config from nested plain dicts (TOML or a checkpoint's copy)."""
    config = Config()
    for section, values in raw.items():
        if section == "name":
            config.name = str(values)
            continue
        if section not in SECTIONS:
            raise UserError(f"unknown config section [{section}]; known: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise UserError(f"config [{section}] must be a table of keys")
        target = getattr(config, section)
        hints = typing.get_type_hints(type(target))
        for key, value in values.items():
            if (section, key) in RENAMED_KEYS:
                key, values_map = RENAMED_KEYS[(section, key)]
                value = values_map.get(value, value)
            if key not in hints:
                known = ", ".join(f.name for f in dataclasses.fields(target))
                raise UserError(f"unknown config key {section}.{key}; known: {known}")
            setattr(target, key, coerce(f"{section}.{key}", value, hints[key]))
    validate(config)
    return config


def checkpoint_config(saved: dict, overrides: typing.Sequence[str] = ()) -> Config:
    """A checkpoint's saved config, with `LEGACY_KEYS` filled in where it lacks them (an older
    checkpoint), then `section.key=value` overrides applied. `saved` is not changed."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
    for (section, key), value in LEGACY_KEYS.items():
        raw.setdefault(section, {}).setdefault(key, value)
    for item in overrides:
        section, key, value = parse_override(item)
        raw.setdefault(section, {})[key] = value
    return config_from_dict(raw)


def with_flags(section, **flags):
    """`section` (a config dataclass, e.g. a checkpoint's `eval`) with each flag that was given
    (not None) in place of its value: how a command's options default to the checkpoint's."""
    return dataclasses.replace(section, **{k: v for k, v in flags.items() if v is not None})


def coerce(where: str, value: object, kind: object) -> object:
    """Check `value` against a field type (int, float, bool, str, list[float])."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (bool, int, float)):
            return str(value).lower() if isinstance(value, bool) else str(value)
    elif typing.get_origin(kind) is list:
        if isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            return [float(v) for v in value]
    name = getattr(kind, "__name__", str(kind))
    raise UserError(f"config {where} must be {name}, got {value!r}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(f"config {message}")


def _choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{where} must be one of {', '.join(choices)}; got {value!r}")


def _check_finite(config: Config) -> None:
    """Every float value (and list of floats) must be a finite number: no nan, no inf."""
    for section in SECTIONS:
        for key, value in dataclasses.asdict(getattr(config, section)).items():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(x, float) and not math.isfinite(x) for x in values):
                raise UserError(f"config {section}.{key} must be a finite number; got {value}")


def _check_text(config: Config) -> None:
    """No string value may hold a control character (it would not survive config.toml)."""
    for section in SECTIONS:
        for key, value in dataclasses.asdict(getattr(config, section)).items():
            if isinstance(value, str) and CONTROL_CHARACTER.search(value):
                raise UserError(
                    f"config {section}.{key} must not hold control characters (NUL, tab, "
                    f"newline...); got {value!r}"
                )


def validate(config: Config) -> None:
    """Range and choice checks that types alone cannot express."""
    d, f, v, m, t, e = (
        config.data,
        config.features,
        config.vocab,
        config.model,
        config.train,
        config.eval,
    )
    _check_finite(config)
    _check_text(config)
    _choice("data.format", d.format, CAPTION_FORMATS)
    _check(
        len(d.split_ratios) == 3
        and all(r >= 0 for r in d.split_ratios)
        and abs(sum(d.split_ratios) - 1.0) < 1e-6,
        f"data.split_ratios must be three non-negative numbers summing to 1; got {d.split_ratios}",
    )
    _check(0.0 < d.subset <= 1.0, f"data.subset must be in (0, 1]; got {d.subset}")
    for key, seed in (("data.split_seed", d.split_seed), ("train.seed", config.train.seed)):
        _check(0 <= seed < SEED_LIMIT, f"{key} must be in [0, 2**32); got {seed}")
    _check(
        LANGUAGE_TAG.fullmatch(d.language) is not None,
        f"data.language must be a BCP-47 language tag such as en, es, zh-Hans; got {d.language!r}",
    )
    _choice("features.backbone", f.backbone, tuple(BACKBONES))
    _check(f.grid >= 0, "features.grid must be >= 0 (0: the backbone's own grid)")
    _check(
        not f.class_token or BACKBONES[f.backbone].has_class_token,
        f"features.class_token: backbone {f.backbone} has no class token",
    )
    _choice("features.device", f.device, DEVICES)
    _choice("features.precision", f.precision, PRECISIONS)
    _choice("features.dtype", f.dtype, FEATURE_DTYPES)
    _choice("features.decode", f.decode, DECODES)
    _choice("features.cache", f.cache, FEATURE_CACHES)
    _check(f.batch_size >= 1, "features.batch_size must be >= 1")
    _check(f.workers >= 0, "features.workers must be >= 0")
    _check(f.ram_budget_gb >= 0, "features.ram_budget_gb must be >= 0 (0: no cap)")
    _check(v.min_freq >= 1, "vocab.min_freq must be >= 1")
    _check(v.max_len >= 2, "vocab.max_len must be >= 2")
    _choice("vocab.tokenizer", v.tokenizer, TOKENIZERS)
    _choice("model.attention", m.attention, ATTENTIONS)
    for key in ("embed_dim", "hidden_dim", "attention_dim"):
        _check(getattr(m, key) >= 1, f"model.{key} must be >= 1")
    _check(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1); got {m.dropout}")
    _check(m.doubly_stochastic >= 0, "model.doubly_stochastic must be >= 0")
    _choice("model.kind", m.kind, MODEL_KINDS)
    for key in ("layers", "heads", "ff_dim"):
        _check(getattr(m, key) >= 1, f"model.{key} must be >= 1")
    if m.kind == "transformer":
        _check(
            m.embed_dim % m.heads == 0,
            f"model.embed_dim ({m.embed_dim}) must be divisible by model.heads ({m.heads})",
        )
        longest = max(v.max_len, e.max_len) + 1  # positions: <sos> + the words
        _check(
            m.max_positions >= longest,
            f"model.max_positions must be >= {longest} "
            f"(max(vocab.max_len, eval.max_len) + 1); got {m.max_positions}",
        )
    _choice("model.attention_penalty", m.attention_penalty, ATTENTION_PENALTIES)
    _choice("model.attention_activation", m.attention_activation, ATTENTION_ACTIVATIONS)
    _choice("model.init", m.init, DECODER_INITS)
    _check(t.epochs >= 1, "train.epochs must be >= 1")
    _check(t.batch_size >= 1, "train.batch_size must be >= 1")
    _check(t.lr > 0, "train.lr must be finite and > 0")
    _choice("train.scheduler", t.scheduler, SCHEDULERS)
    _check(t.step_size >= 1, "train.step_size must be >= 1")
    _check(0 < t.gamma <= 1, "train.gamma must be in (0, 1]")
    _check(t.grad_clip >= 0, "train.grad_clip must be >= 0 (0 disables)")
    _check(0 <= t.label_smoothing < 1, "train.label_smoothing must be in [0, 1)")
    _choice("train.batching", t.batching, BATCHINGS)
    _choice("train.selection_metric", t.selection_metric, SELECTION_METRICS)
    _check(t.patience >= 0, "train.patience must be >= 0 (0 disables early stopping)")
    _choice("train.device", t.device, DEVICES)
    _choice("train.precision", t.precision, PRECISIONS)
    _check(t.workers >= 0, "train.workers must be >= 0")
    _check(t.val_images >= 0, "train.val_images must be >= 0 (0 = the whole split)")
    _check(
        "/" not in t.name and t.name not in (".", ".."), "train.name must be a plain folder name"
    )
    _choice("train.objective", t.objective, OBJECTIVES)
    _choice("scst.baseline", config.scst.baseline, SCST_BASELINES)
    _check(
        config.scst.samples >= (2 if config.scst.baseline == "mean" else 1),
        "scst.samples must be >= 2 with the mean baseline (>= 1 with greedy)",
    )
    _check(config.scst.max_len >= 1, "scst.max_len must be >= 1")
    _check(
        t.objective != "scst" or config.scst.max_len <= max(v.max_len, e.max_len),
        f"scst.max_len ({config.scst.max_len}) must be <= max(vocab.max_len, eval.max_len)",
    )
    _check(config.scst.bad_ending_penalty >= 0, "scst.bad_ending_penalty must be >= 0")
    _check(
        config.scst.bad_ending_penalty == 0 or d.language.split("-")[0].lower() == "en",
        "scst.bad_ending_penalty knows English endings only (a, of, with, the); set it to 0 "
        f"for data.language {d.language!r}",
    )
    _check(config.scst.val_images >= 0, "scst.val_images must be >= 0 (0 disables)")
    _check(t.warmup_steps >= 0, "train.warmup_steps must be >= 0 (0 disables)")
    _check(
        t.length_bucket >= 1,
        f"train.length_bucket must be >= 1 (1: each batch's longest caption); got {t.length_bucket}",
    )
    _choice("eval.split", e.split, SPLITS)
    _check(e.beam_size >= 1, "eval.beam_size must be >= 1")
    _check(e.max_len >= 2, "eval.max_len must be >= 2")
    _check(e.batch_size >= 1, "eval.batch_size must be >= 1")


def config_to_dict(config: Config) -> dict:
    """Nested plain dict (str/int/float/bool/list only): safe for TOML, JSON and checkpoints."""
    out = {section: dataclasses.asdict(getattr(config, section)) for section in SECTIONS}
    out["name"] = config.name
    return out


def to_toml(config: Config) -> str:
    """Render the resolved config as TOML that `load_config` reads back unchanged."""
    data = config_to_dict(config)
    lines = [f"# resolved config of experiment {data.pop('name')!r}"]
    for section, values in data.items():
        lines.append(f"\n[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as TOML (what `train` stores as RUN/config.toml)."""
    Path(path).write_text(to_toml(config), encoding="utf-8")
