"""`captioner demo` end to end at a tiny size: data, extract, train, evaluate, caption."""

import re
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest import TINY_CONFIG


def test_demo_runs_every_step_and_ends_with_report_then_scores(tmp_path):
    config = tmp_path / "demo.toml"
    config.write_text(
        TINY_CONFIG.format(
            captions=tmp_path / "data" / "dataset.json",
            images=tmp_path / "data" / "images",
            features=tmp_path / "features.h5",
            runs=tmp_path / "runs",
        ).replace("epochs = 2", "epochs = 1")
    )
    result = CliRunner().invoke(main, ["demo", "--config", str(config), "--images", "40"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("demo: CIDEr model=") and "baseline=" in lines[-1]
    assert lines[-2].startswith("report: ")
    report = Path(lines[-2].removeprefix("report: "))
    assert report.is_file() and "<html" in report.read_text("utf-8")[:500].lower()
    run = report.parents[1]
    assert (run / "best.pt").is_file() and list((run / "attention").glob("*.png"))
    timing = re.search(r"outputs \((\d+\.\d) min in all: (.*)\):", result.output)
    steps = dict(part.rsplit(" ", 2)[:2] for part in timing.group(2).split(", "))
    assert list(steps) == ["data", "extract", "train", "evaluate", "captions"]
    assert abs(sum(float(s) for s in steps.values()) / 60 - float(timing.group(1))) < 0.1
