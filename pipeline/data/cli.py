"""`captioner demo-data`: write the embedded demo data set (images + both caption layouts)."""

from pathlib import Path

import click

from pipeline.config import DEFAULT_LANGUAGE, DEFAULT_TOKENIZER, SEED_LIMIT
from pipeline.data.demo_grammar import GRAMMARS
from pipeline.data.testbed_knobs import SCENE_CODES, LanguageKnobs, SceneKnobs


@click.command("demo-data")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option(
    "--images",
    "n_images",
    type=int,
    default=1500,
    show_default=True,
    help="Number of demo images (5 captions each).",
)
@click.option(
    "--seed",
    type=click.IntRange(0, SEED_LIMIT - 1),
    default=0,
    show_default=True,
    help="Random seed; the same seed writes byte-identical files.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Write into OUT_DIR even if it holds files (replacing images/, "
    "results.csv and dataset.json).",
)
@click.option(
    "--language",
    type=click.Choice(tuple(GRAMMARS)),
    default=DEFAULT_LANGUAGE,
    show_default=True,
    help="Language of the captions (the same images in every language); train on them with "
    "--set data.language=LANG --set vocab.tokenizer=TOKENIZER (printed).",
)
def demo_data_command(
    out_dir: Path, n_images: int, seed: int, overwrite: bool, language: str
) -> None:
    """Write demo images (coloured shapes) and captions to a new or empty OUT_DIR."""
    from pipeline.data.captions import read_captions  # pandas, Pillow: not for `--help`
    from pipeline.data.demo_data import generate_demo_data

    stats = generate_demo_data(
        out_dir, n_images=n_images, seed=seed, overwrite=overwrite, language=language
    )
    click.echo(f"wrote {stats['images']:,} images to {stats['images_dir']}")
    click.echo(
        f"wrote {stats['captions']:,} captions to {stats['results_csv']} "
        f"(Flickr30k csv) and {stats['dataset_json']} (Karpathy json)"
    )
    click.echo(read_captions(stats["dataset_json"]).summary())
    if (stats["language"], stats["tokenizer"]) != (DEFAULT_LANGUAGE, DEFAULT_TOKENIZER):
        click.echo(
            f"captions in {stats['language']}: train and evaluate with --set "
            f"data.language={stats['language']} --set vocab.tokenizer={stats['tokenizer']}"
        )


@click.group("testbed")
def testbed_command() -> None:
    """Write a testbed: a caption file and a feature file whose grids carry known information.

    Testbeds measure decoders and objectives (SCST, LSTM vs Transformer), not a vision model:
    no image is read and no CNN runs. Train, evaluate and sweep on them like on any cache.
    """


def knob(name: str, knobs: type, help_text: str = ""):
    """A --NAME option whose default is the knob's (pipeline/data/testbed_knobs.py)."""
    default = getattr(knobs, name)
    return click.option(
        f"--{name.replace('_', '-')}",
        name,
        type=type(default),
        default=default,
        show_default=True,
        help=help_text or None,
    )


NOISE_HELP = "Noise std per channel (noise makes each image memorable: decoders overfit it)."


@testbed_command.command("scene")
@click.argument("out_dir", type=click.Path(path_type=Path))
@knob("images", SceneKnobs, "Demo scenes (the demo data of this many images).")
@knob("extra_test", SceneKnobs, "More test scenes, after the demo's (for tighter intervals).")
@knob("seed", SceneKnobs, "Demo data and perception errors seed.")
@knob("colour_error", SceneKnobs, "Chance a shape's colour is seen wrong.")
@knob("shape_error", SceneKnobs, "Chance a shape's kind is seen wrong (0.67: chance).")
@knob("cell_error", SceneKnobs, "Chance a covered cell shows up in a neighbouring cell.")
@knob("noise", SceneKnobs, NOISE_HELP)
@click.option(
    "--code",
    type=click.Choice(SCENE_CODES),
    default=SceneKnobs.code,
    show_default=True,
    help="blocks: a block of channels per code value; projection: the same code through a "
    "fixed random projection (the control).",
)
@click.option("--overwrite", is_flag=True, help="Replace another testbed's files in OUT_DIR.")
def scene_command(out_dir: Path, overwrite: bool, **knobs) -> None:
    """The demo's scenes and captions; grids coding each shape's colour, kind and size in the
    cells it covers, with perception errors (defaults: captions at the demo's level)."""
    from pipeline.data.testbed_files import describe
    from pipeline.data.testbed_scene import write_scene_testbed

    written = write_scene_testbed(out_dir, SceneKnobs(**knobs), overwrite)
    click.echo(("wrote " if written else "already complete: ") + describe(out_dir, "scene", knobs))


@testbed_command.command("language")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option(
    "--captions",
    type=click.Path(path_type=Path),
    required=True,
    help="Flickr8k.token.txt (its official split lists beside it, or --split-lists).",
)
@click.option("--split-lists", type=click.Path(path_type=Path), help="Folder of the split lists.")
@knob("train_images", LanguageKnobs, "A seeded subset of the official train images.")
@knob("seed", LanguageKnobs, "Detection, distractor and subset seed.")
@knob("recall", LanguageKnobs, "Chance one reference's use of a word makes it seen.")
@knob("distractors", LanguageKnobs, "Mean number of unrelated words seen per image.")
@knob("noise", LanguageKnobs, NOISE_HELP)
@knob("min_count", LanguageKnobs, "Train references a concept word needs.")
@click.option("--overwrite", is_flag=True, help="Replace another testbed's files in OUT_DIR.")
def language_command(
    out_dir: Path, captions: Path, split_lists: Path | None, overwrite: bool, **knobs
) -> None:
    """Flickr8k's human captions and official splits; grids of the concepts "detected" from
    each image's references (recall grows with how many references use a word) plus
    distractors and noise."""
    from pipeline.data.testbed_files import describe
    from pipeline.data.testbed_language import language_knobs, write_language_testbed

    settings = language_knobs(captions, **knobs)
    written, stats = write_language_testbed(out_dir, captions, settings, split_lists, overwrite)
    click.echo(
        ("wrote " if written else "already complete: ") + describe(out_dir, "language", knobs)
    )
    images = ", ".join(f"{split} {count:,}" for split, count in stats["images"].items())
    dropped = "; ".join(f"{count:,} {why}" for why, count in stats["dropped"].items() if count)
    click.echo(f"images: {images}; concept vocabulary {stats['concepts']:,} words")
    if stats["words_seen_per_image"] is not None:
        click.echo(f"words seen per image: {stats['words_seen_per_image']:.1f} on average")
    if dropped:
        click.echo(f"left out of {captions}: {dropped}")
