"""A sweep file: which variants of an experiment to train, with how many seeds, and how to
compare them.

    [sweep]
    config = "../demo.toml"     # the base experiment (paths relative to this file)
    seeds = 3                   # seeds first_seed .. first_seed + seeds - 1 per variant
    reference = "lstm"          # what every variant is compared against, by default
    beam_size = 3               # test decoding: greedy and this beam
    split = "test"
    default = ["lstm", "scst"]  # what runs without --variants (all variants when absent)

    [variants.lstm]
    about = "the base config"

    [variants.transformer]
    config = "../demo-transformer.toml"      # a variant may bring its own config (or a list
                                             # of files, merged in order) ...
    set = ["train.lr=1e-3"]                  # ... and overrides (section.key=value)

    [variants.scst]
    from = "lstm"               # SCST from each seed's best.pt of variant lstm: its config
    set = ["train.objective='scst'", "train.lr=5e-5"]   # and set, then these
    # compare = "lstm"          # (the default for a `from` variant: the run it starts from)

A backbone axis: `backbones = ["resnet50", "convnext_tiny", "vit_b_16"]` in [sweep] adds one
variant per backbone, named after it: the base config with `features.backbone` set to it and
`features.path` its own file (the base config's features.path for the base config's backbone,
else STEM-NAME.h5 beside it). `captioner sweep` extracts each file first (data.images must be
set; a complete file is reused), then trains the same decoder on each; the first backbone is
the reference unless `reference` names another. [variants.*] tables are then optional.

Every variant resolves to a full `pipeline.config.Config`; variants that resolve to the same
recipe (config and start) share their runs. Variant names are TOML keys: letters, digits, "-"
and "_" (a name with a dot needs quotes: [variants."lr-2.5e-4"]).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.backbones import BACKBONES
from pipeline.config import SPLITS, EvalConfig, load_config
from pipeline.errors import UserError

SWEEP_KEYS = (
    "config",
    "seeds",
    "first_seed",
    "reference",
    "beam_size",
    "split",
    "default",
    "backbones",
)
VARIANT_KEYS = ("about", "config", "set", "from", "compare")


@dataclass(frozen=True)
class Variant:
    """One recipe of the sweep."""

    name: str
    about: str = ""
    config: tuple[Path, ...] = ()  # config files merged in order; none: the sweep's (or the
    # `start` variant's)
    overrides: tuple[str, ...] = ()
    start: str | None = None  # `from`: the variant whose best.pt of the same seed it starts from
    compare: str | None = None  # the variant it is compared against


@dataclass
class Sweep:
    """A whole sweep file, checked."""

    path: Path
    config: Path
    variants: dict[str, Variant]
    seeds: int = 3
    first_seed: int = 0
    reference: str = ""
    beam_size: int = EvalConfig.beam_size  # test decoding: greedy, and this beam
    split: str = EvalConfig.split
    default: tuple[str, ...] = ()  # the variants run when none are named (empty: all)
    extra: tuple[str, ...] = field(default_factory=tuple)  # --set for every variant, first
    backbones: tuple[str, ...] = ()  # the backbone axis: one variant per name, named after it

    @property
    def name(self) -> str:
        """The sweep's name: its file's stem."""
        return self.path.stem

    def seed_list(self) -> list[int]:
        """The seeds every variant runs with."""
        return list(range(self.first_seed, self.first_seed + self.seeds))

    def chain(self, name: str) -> list[Variant]:
        """The variant and the variants it starts from, the first start first."""
        chain = [self.variants[name]]
        while chain[0].start is not None:
            chain.insert(0, self.variants[chain[0].start])
        return chain

    def compared_with(self, name: str) -> str | None:
        """The variant `name` is compared against (None for the reference itself)."""
        variant = self.variants[name]
        other = variant.compare or variant.start or self.reference
        return None if other == name else other


def _fail(path: Path, message: str) -> UserError:
    return UserError(f"sweep file {path}: {message}")


def _variant(path: Path, name: str, table: object) -> Variant:
    if not isinstance(table, dict):
        raise _fail(path, f"[variants.{name}] must be a table")
    unknown = sorted(set(table) - set(VARIANT_KEYS))
    if unknown:
        raise _fail(
            path,
            f"unknown key {unknown[0]!r} in [variants.{name}]; known: {', '.join(VARIANT_KEYS)}",
        )
    overrides = table.get("set", [])
    if not isinstance(overrides, list) or not all(isinstance(x, str) for x in overrides):
        raise _fail(path, f"variants.{name}.set must be a list of 'section.key=value' strings")
    for key in ("about", "from", "compare"):
        if key in table and not isinstance(table[key], str):
            raise _fail(path, f"variants.{name}.{key} must be a string")
    files = table.get("config", [])
    files = [files] if isinstance(files, str) else files
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise _fail(path, f"variants.{name}.config must be a file name or a list of them")
    config = tuple(path.parent / f for f in files)
    return Variant(
        name,
        table.get("about", ""),
        config,
        tuple(overrides),
        table.get("from"),
        table.get("compare"),
    )


def load_sweep(path: str | Path, extra: tuple[str, ...] = ()) -> Sweep:
    """Read and check a sweep file; `extra` overrides apply to every variant, before its own."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"sweep file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"sweep", "variants"})
    if unknown:
        raise _fail(
            path, f"unknown table [{unknown[0]}]; a sweep file has [sweep] and [variants.*]"
        )
    head, tables = raw.get("sweep", {}), raw.get("variants", {})
    if not isinstance(head, dict) or not isinstance(tables, dict):
        raise _fail(path, "[sweep] and [variants.NAME] must be tables")
    bad = sorted(set(head) - set(SWEEP_KEYS))
    if bad:
        raise _fail(path, f"unknown key sweep.{bad[0]}; known: {', '.join(SWEEP_KEYS)}")
    if not isinstance(head.get("config"), str):
        raise _fail(path, "sweep.config must name the base experiment's TOML file")
    backbones = _backbones(path, head.get("backbones", []))
    if not tables and not backbones:
        raise _fail(path, "it names no variant ([variants.NAME] tables, or sweep.backbones)")
    default = head.get("default", [])
    if not isinstance(default, list) or not all(isinstance(n, str) for n in default):
        raise _fail(path, "sweep.default must be a list of variant names")
    variants = {name: _variant(path, name, table) for name, table in tables.items()}
    config = path.parent / head["config"]
    if backbones:
        if not config.is_file():
            raise _fail(path, f"config file not found: {config}")
        for name, variant in backbone_variants(config, backbones, tuple(extra)).items():
            if name in variants:
                raise _fail(path, f"[variants.{name}] has the name of a backbone of the axis")
            variants[name] = variant
    settings = {k: head[k] for k in ("seeds", "first_seed", "beam_size", "split") if k in head}
    sweep = Sweep(
        path=path,
        config=config,
        variants=variants,
        reference=head.get("reference", backbones[0] if backbones else next(iter(variants))),
        default=tuple(default),
        extra=tuple(extra),
        backbones=backbones,
        **settings,
    )
    check_sweep(sweep)
    return sweep


def _backbones(path: Path, names: object) -> tuple[str, ...]:
    """sweep.backbones checked: distinct names of the backbone table."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _fail(path, "sweep.backbones must be a list of backbone names")
    unknown = [n for n in names if n not in BACKBONES]
    if unknown:
        raise _fail(
            path, f"sweep.backbones: unknown backbone {unknown[0]!r}; known: {', '.join(BACKBONES)}"
        )
    if len(set(names)) != len(names):
        raise _fail(path, "sweep.backbones names a backbone twice")
    return tuple(names)


def backbone_features(base_path: str, base_backbone: str, name: str) -> str:
    """Where the backbone axis keeps backbone `name`'s features: the base config's own file
    for its own backbone, else STEM-NAME.SUFFIX beside it."""
    if name == base_backbone:
        return base_path
    base = Path(base_path)
    return str(base.with_name(f"{base.stem}-{name}{base.suffix or '.h5'}"))


def backbone_variants(
    config: Path, backbones: tuple[str, ...], extra: tuple[str, ...]
) -> dict[str, Variant]:
    """One variant per backbone of the axis: the base config (with the sweep's --set) on that
    backbone's own feature file."""
    base = load_config(config, extra).features
    return {
        name: Variant(
            name,
            f"the base config on {name} features",
            (),
            (
                f"features.backbone={json.dumps(name)}",  # a TOML string
                f"features.path={json.dumps(backbone_features(base.path, base.backbone, name))}",
            ),
        )
        for name in backbones
    }


def check_sweep(sweep: Sweep) -> None:
    """Names that exist, no cycle of `from`, numbers in range: else one UserError."""
    path = sweep.path
    for key in ("seeds", "first_seed", "beam_size"):
        value = getattr(sweep, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < (key != "first_seed"):
            raise _fail(path, f"sweep.{key} must be an integer >= {int(key != 'first_seed')}")
    if sweep.split not in SPLITS:
        raise _fail(path, f"sweep.split must be one of {', '.join(SPLITS)}")
    if sweep.reference not in sweep.variants:
        raise _fail(path, f"sweep.reference {sweep.reference!r} is not a variant")
    unknown = [name for name in sweep.default if name not in sweep.variants]
    if unknown:
        raise _fail(path, f"sweep.default names no variant: {unknown[0]!r}")
    for variant in sweep.variants.values():
        for key, other in (("from", variant.start), ("compare", variant.compare)):
            if other is not None and other not in sweep.variants:
                raise _fail(path, f"variants.{variant.name}.{key} names no variant: {other!r}")
        seen = {variant.name}
        start = variant.start
        while start is not None:
            if start in seen:
                raise _fail(path, f"variants.{variant.name}: `from` goes round in a circle")
            seen.add(start)
            start = sweep.variants[start].start
        for config in variant.config or (sweep.config,):
            if not config.is_file():
                raise _fail(path, f"config file not found: {config}")


def select(sweep: Sweep, names: list[str]) -> list[str]:
    """`names` (else sweep.default, else every variant) plus what they start from and are
    compared with, in the file's order; UserError for an unknown name."""
    unknown = [n for n in names if n not in sweep.variants]
    if unknown:
        raise UserError(
            f"unknown variant {unknown[0]!r}; the sweep has {', '.join(sweep.variants)}"
        )
    wanted = set(names or sweep.default or sweep.variants)
    for name in list(wanted):
        wanted.update(v.name for v in sweep.chain(name))
        other = sweep.compared_with(name)
        if other:
            wanted.update(v.name for v in sweep.chain(other))
    return [n for n in sweep.variants if n in wanted]
