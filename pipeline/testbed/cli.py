"""`captioner testbed scene|language`: write a testbed's caption file and feature file."""

from pathlib import Path

import click

from pipeline import output
from pipeline.testbed.knobs import SCENE_CODES, LanguageKnobs, SceneKnobs


@click.group("testbed")
def testbed_command() -> None:
    """Write a testbed: a caption file and a feature file whose grids carry known information.

    Testbeds measure decoders and objectives (SCST, LSTM vs Transformer), not a vision model:
    no image is read and no CNN runs. Train, evaluate and sweep on them like on any cache.
    """


def knob(name: str, knobs: type, help_text: str = ""):
    """A --NAME option whose default is the knob's (pipeline/testbed/knobs.py)."""
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
    from pipeline.testbed.files import describe
    from pipeline.testbed.scene import write_scene_testbed

    written = write_scene_testbed(out_dir, SceneKnobs(**knobs), overwrite)
    output.say(("wrote " if written else "already complete: ") + describe(out_dir, "scene", knobs))


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
    from pipeline.testbed.files import describe
    from pipeline.testbed.language import language_knobs, write_language_testbed

    settings = language_knobs(captions, **knobs)
    written, stats = write_language_testbed(out_dir, captions, settings, split_lists, overwrite)
    output.say(
        ("wrote " if written else "already complete: ") + describe(out_dir, "language", knobs)
    )
    images = ", ".join(f"{split} {count:,}" for split, count in stats["images"].items())
    dropped = "; ".join(f"{count:,} {why}" for why, count in stats["dropped"].items() if count)
    output.say(f"images: {images}; concept vocabulary {stats['concepts']:,} words")
    if stats["words_seen_per_image"] is not None:
        output.say(f"words seen per image: {stats['words_seen_per_image']:.1f} on average")
    if dropped:
        output.say(f"left out of {captions}: {dropped}")
