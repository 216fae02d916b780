"""`captioner demo-data`: write the embedded demo data set (images + both caption layouts)."""

from pathlib import Path

import click


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
    type=int,
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
def demo_data_command(out_dir: Path, n_images: int, seed: int, overwrite: bool) -> None:
    """Write demo images (coloured shapes) and captions to a new or empty OUT_DIR."""
    from pipeline.data.captions import read_captions  # pandas, Pillow: not for `--help`
    from pipeline.data.demo_data import generate_demo_data

    stats = generate_demo_data(out_dir, n_images=n_images, seed=seed, overwrite=overwrite)
    click.echo(f"wrote {stats['images']:,} images to {stats['images_dir']}")
    click.echo(
        f"wrote {stats['captions']:,} captions to {stats['results_csv']} "
        f"(Flickr30k csv) and {stats['dataset_json']} (Karpathy json)"
    )
    click.echo(read_captions(stats["dataset_json"]).summary())
