"""Each shipped SCST config fits the cross-entropy run it is started from (`--init`)."""

from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.train.scst import INIT_FREE_KEYS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# SCST config -> the config of the cross-entropy run whose best.pt it is started from (--init)
SCST_BASES = {
    "demo-scst": "demo",
    "flickr30k-scst": "flickr30k-sat",
    "flickr8k-scst": "flickr8k",
    "coco-scst": "coco",
}


@pytest.mark.parametrize("scst,base", sorted(SCST_BASES.items()))
def test_scst_config_matches_its_base_run(scst, base):
    scst_config, base_config = (
        load_config(CONFIGS / f"{scst}.toml"),
        load_config(CONFIGS / f"{base}.toml"),
    )
    assert scst_config.train.objective == "scst"
    assert scst_config.data == base_config.data and scst_config.vocab == base_config.vocab
    assert scst_config.features.path == base_config.features.path
    model, base_model = scst_config.model, base_config.model
    for key in INIT_FREE_KEYS:  # training-only keys: --init allows them to differ
        setattr(model, key, getattr(base_model, key))
    assert model == base_model
