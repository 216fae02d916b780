"""The backbone axis's first step: each backbone's feature file, extracted once.

Every selected variant of `sweep.backbones` names its backbone and its own feature file
(pipeline/sweep/spec.py); each file is extracted here with the variant's resolved config
([data] images and captions, [features]) through `captioner extract`'s own job, so an
interrupted file is finished, a complete one is reused as it is, and one made with other
settings is refused before any training starts.
"""

from __future__ import annotations

from pipeline import output
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.extract.job import job_from_config, run_job
from pipeline.sweep.spec import Sweep


def extract_backbones(sweep: Sweep, names: list[str]) -> None:
    """Extract (or finish, or reuse) the feature file of every backbone variant in `names`."""
    done: set[str] = set()
    for name in names:
        if name not in sweep.backbones:
            continue
        variant = sweep.variants[name]
        config = load_config(sweep.config, [*sweep.extra, *variant.overrides])
        if config.features.path in done:
            continue
        if not config.data.images:
            raise UserError(
                f"the backbone axis extracts each backbone's features from the images: set "
                f"data.images in {sweep.config} or pass --set data.images=DIR"
            )
        output.say(f"backbone {name}: features in {config.features.path}")
        job = job_from_config(config)
        if run_job(job) != 0:
            raise UserError(f"extracting {name}'s features failed (see above)")
        done.add(config.features.path)
