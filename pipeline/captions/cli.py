"""`captioner demo-data`: write the embedded demo data set (images + both caption layouts)."""

from pathlib import Path

import click

from pipeline import output
from pipeline.captions.demo_grammar import GRAMMARS
from pipeline.config import DEFAULT_LANGUAGE, DEFAULT_TOKENIZER, SEED_LIMIT


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
    from pipeline.captions.demo_data import generate_demo_data
    from pipeline.captions.readers import read_captions  # pandas, Pillow: not for `--help`

    stats = generate_demo_data(
        out_dir, n_images=n_images, seed=seed, overwrite=overwrite, language=language
    )
    output.say(f"wrote {stats['images']:,} images to {stats['images_dir']}")
    output.say(
        f"wrote {stats['captions']:,} captions to {stats['results_csv']} "
        f"(Flickr30k csv) and {stats['dataset_json']} (Karpathy json)"
    )
    output.say(read_captions(stats["dataset_json"]).summary())
    if (stats["language"], stats["tokenizer"]) != (DEFAULT_LANGUAGE, DEFAULT_TOKENIZER):
        output.say(
            f"captions in {stats['language']}: train and evaluate with --set "
            f"data.language={stats['language']} --set vocab.tokenizer={stats['tokenizer']}"
        )
