"""`captioner demo` (`make demo`): the whole pipeline, offline, on the embedded demo data.

demo-data -> extract (random-init ResNet50: nothing to download) -> train configs/demo.toml
-> evaluate on the demo test split -> caption three test images with attention maps. It
also scores an image-blind baseline (every test image gets the most frequent training
caption), so the last line shows whether the model learned to look at the images:

    demo: CIDEr model=<x> baseline=<y>
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import click

from pipeline import output
from pipeline.cli_options import config_options
from pipeline.config import Config, load_config
from pipeline.errors import UserError

CAPTIONED_IMAGES = 3


class StepClock:
    """Prints each demo step's title and keeps how long each step took."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def step(self, name: str, title: str) -> None:
        """End the running step (if any), print `title` and start timing `name`."""
        self.stop()
        output.say(f"\n== {title}", bold=True)
        self._current = (name, time.perf_counter())

    def stop(self) -> None:
        """End the running step."""
        if self._current is not None:
            name, start = self._current
            self.seconds[name] = time.perf_counter() - start
            self._current = None

    def summary(self) -> str:
        """e.g. '9.6 min in all: data 10 s, extract 128 s, train 421 s, ...'."""
        self.stop()
        minutes = (time.perf_counter() - self.started) / 60
        parts = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.seconds.items())
        return f"{minutes:.1f} min in all: {parts}"


@click.command("demo")
@config_options("The demo's TOML config.", default="configs/demo.toml")
@click.option(
    "--images",
    "n_images",
    default=1500,
    show_default=True,
    type=click.IntRange(min=20),
    help="Demo images to generate.",
)
def demo_command(config_path, n_images, overrides):
    """Generate demo data, extract, train, evaluate, caption; print where everything went."""
    config = load_config(config_path, overrides)
    if not config.train.name:
        config.train.name = f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_demo(config, n_images)


def run_demo(config: Config, n_images: int) -> None:
    """The five demo steps for `config` (its train.name set), then the summary lines."""
    # Imported here so that `captioner --help` does not load torch.
    from pipeline.captions.demo_data import generate_demo_data
    from pipeline.dataset.experiment import load_experiment_data
    from pipeline.extract.job import job_from_config, run_job
    from pipeline.infer.caption import CaptionJob, run_caption
    from pipeline.infer.caption_sources import Source
    from pipeline.infer.evaluate import evaluate_checkpoint
    from pipeline.train.trainer import train

    clock = StepClock()
    data_dir = Path(config.data.captions).parent
    images_dir = Path(config.data.images)

    clock.step("data", f"1/5 demo data -> {data_dir}")
    if Path(config.data.captions).is_file() and images_dir.is_dir():
        output.say(f"reusing {config.data.captions}")
    else:
        stats = generate_demo_data(data_dir, n_images=n_images, seed=0)
        output.say(f"wrote {stats['images']} images and {stats['captions']} captions")

    clock.step("extract", f"2/5 extract -> {config.features.path}")
    run_job(job_from_config(config))

    clock.step("train", f"3/5 train -> {config.train.out_dir}/{config.train.name}")
    run_dir = train(config)

    clock.step("evaluate", "4/5 evaluate on the test split")
    result = evaluate_checkpoint(
        run_dir, "test", config.eval.beam_size, run_dir / "eval-test", examples=3
    )  # scores the image-blind baseline too
    baseline = result["baseline"]
    if baseline is None:
        raise UserError("the demo data has no training captions for the baseline")
    with output.quiet():  # the training step printed what the data holds
        data = load_experiment_data(config)

    clock.step("captions", "5/5 caption three test images with attention maps")
    test_names = data.frame.loc[data.frame["split"] == "test", "image"].drop_duplicates()
    test_images = [images_dir / name for name in list(test_names)[:CAPTIONED_IMAGES]]
    job = CaptionJob(
        Source(paths=tuple(str(path) for path in test_images)),
        run_dir / "best.pt",
        beam_size=config.eval.beam_size,
        attention_dir=run_dir / "attention",
        workers=config.features.workers,
    )
    captioned = run_caption(job)
    if captioned.failed:
        raise UserError(f"captioning failed for {captioned.failed} demo images")

    output.say(f"\noutputs ({clock.summary()}):")
    output.say(f"  data          {data_dir}")
    output.say(f"  features      {config.features.path}")
    output.say(f"  run           {run_dir} (best.pt, last.pt, config.toml, metrics.jsonl)")
    output.say(
        f"  evaluation    {run_dir / 'eval-test'} (predictions.json, metrics.json, report.html)"
    )
    output.say(f"  attention     {run_dir / 'attention'} (one PNG and .npy per image)")
    output.say(
        f"next: make evaluate RUN={run_dir}   |   make caption IMAGES='your.jpg' "
        f"CHECKPOINT={run_dir / 'best.pt'}"
    )
    output.say(f"report: {run_dir / 'eval-test' / 'report.html'}")
    model_cider = result["scores"]["CIDEr"]
    output.say(f"demo: CIDEr model={model_cider:.3f} baseline={baseline['scores']['CIDEr']:.3f}")
