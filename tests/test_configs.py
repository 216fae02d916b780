"""Shipped configs resolve; SCST configs fit the runs they start from; `base` inheritance."""

from pathlib import Path

import pytest

from pipeline.config import load_config, to_toml
from pipeline.errors import UserError
from pipeline.train.scst import INIT_FREE_KEYS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# SCST config -> the config of the cross-entropy run whose best.pt it is started from (--init)
SCST_BASES = {
    "demo-scst": "demo",
    "flickr30k-scst": "flickr30k-sat",
    "flickr8k-scst": "flickr8k",
    "coco-scst": "coco",
    "testbed-scene-scst": "testbed-scene",
    "testbed-language-scst": "testbed-language",
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


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_config_resolves_and_validates(path):
    config = load_config(path)
    assert config.name == path.stem and "\nbase = " not in to_toml(config)


def test_bases_merge_in_order_and_own_keys_then_set_win(tmp_path):
    (tmp_path / "a.toml").write_text("[train]\nepochs = 3\nlr = 0.1\n[vocab]\nmin_freq = 7\n")
    (tmp_path / "b.toml").write_text("base = 'a.toml'\n[train]\nlr = 0.2\nseed = 4\n")
    (tmp_path / "c.toml").write_text("[train]\nseed = 5\n")
    (tmp_path / "top.toml").write_text("base = ['b.toml', 'c.toml']\n[train]\nepochs = 9\n")
    config = load_config(tmp_path / "top.toml", ["train.seed=6"])
    assert (config.train.epochs, config.train.lr, config.train.seed) == (9, 0.2, 6)
    assert config.vocab.min_freq == 7 and config.name == "top"
    assert load_config(tmp_path / "top.toml").train.seed == 5  # the later base wins


def test_a_circle_of_bases_or_a_missing_base_is_one_clear_error(tmp_path):
    (tmp_path / "x.toml").write_text("base = 'y.toml'\n")
    (tmp_path / "y.toml").write_text("base = 'x.toml'\n")
    with pytest.raises(UserError, match="bases go round in a circle"):
        load_config(tmp_path / "x.toml")
    (tmp_path / "z.toml").write_text("base = 'gone.toml'\n")
    with pytest.raises(UserError, match=r"config file not found: .*gone.toml \(a base of"):
        load_config(tmp_path / "z.toml")
    (tmp_path / "w.toml").write_text("base = 3\n")
    with pytest.raises(UserError, match="base must be a file name or a list"):
        load_config(tmp_path / "w.toml")


@pytest.mark.parametrize("key", ["train.seed", "data.split_seed"])
def test_seeds_out_of_the_generators_range_are_refused(key):
    for value in (-1, 2**32):
        with pytest.raises(UserError, match=f"{key} must be in"):
            load_config(None, [f"{key}={value}"])
