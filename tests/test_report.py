"""evaluate's report.html and comparison.html, caption --html: content, health numbers on a
crafted degenerate run, self-containment, and a real headless Chromium rendering the page."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import main
from pipeline.decoder.checkpoint import load_checkpoint, save_checkpoint
from pipeline.infer.gallery import THUMBNAIL, TILE
from pipeline.metrics.coco import METRIC_NAMES
from tests.conftest import write_tiny_config

URL_ATTRIBUTE = re.compile(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", re.IGNORECASE)
DATA_URI = re.compile(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)")
MAX_BYTES_PER_CARD = 45_000  # 100 gallery images stay under ~5 MB


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def degenerate_copy(run: Path, out: Path, images: str) -> Path:
    """A copy of `run` whose decoder always says its most frequent word and never <eos>,
    and whose config points at an images folder that does not exist."""
    payload = load_checkpoint(run / "best.pt")
    word = 4  # the first word after <pad> <sos> <eos> <unk>
    payload["model"]["output.weight"] = torch.zeros_like(payload["model"]["output.weight"])
    bias = torch.full_like(payload["model"]["output.bias"], -10.0)
    bias[word] = 10.0
    payload["model"]["output.bias"] = bias
    payload["config"]["data"]["images"] = images
    out.mkdir(parents=True)
    save_checkpoint(payload, out / "best.pt")
    shutil.copy(run / "metrics.jsonl", out / "metrics.jsonl")
    return out


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, demo_cache) -> dict:
    """One tiny run (2 epochs) and a degenerate copy of it, evaluated together."""
    root = tmp_path_factory.mktemp("report")
    config = write_tiny_config(root, demo_cache)
    trained = cli("train", "--config", config, "--set", "train.name=tiny")
    assert trained.exit_code == 0, trained.output
    broken = degenerate_copy(
        root / "runs" / "tiny", root / "runs" / "broken", str(root / "no-images")
    )
    out = root / "ev"
    result = cli(
        "evaluate",
        root / "runs" / "tiny",
        broken,
        "--out",
        out,
        "--beam-size",
        "2",
        "--examples",
        "0",
    )
    assert result.exit_code == 0, result.output
    return {
        "out": out,
        "output": result.output,
        "run": root / "runs" / "tiny",
        "images": demo_cache["images"],
        "captions": demo_cache["captions"],
    }


def read(out: Path, label: str) -> tuple[str, dict, list[dict]]:
    return (
        (out / label / "report.html").read_text("utf-8"),
        json.loads((out / label / "metrics.json").read_text()),
        json.loads((out / label / "predictions.json").read_text()),
    )


def references_by_image(captions: Path) -> dict[str, list[str]]:
    data = json.loads(captions.read_text())
    return {Path(im["filename"]).stem: [s["raw"] for s in im["sentences"]] for im in data["images"]}


def test_every_gallery_image_shows_its_prediction_and_references(evaluated):
    page, metrics, predictions = read(evaluated["out"], "tiny")
    refs = references_by_image(evaluated["captions"])
    assert page.count('class="card"') == metrics["num_images"] == len(predictions) == 4
    for p in predictions:
        assert html.escape(p["caption"]) in page
        for reference in refs[p["image_id"]]:
            assert html.escape(reference) in page
    assert f"report: {evaluated['out'] / 'tiny' / 'report.html'}" in evaluated["output"]


def test_scores_and_baseline_match_metrics_json(evaluated):
    page, metrics, _ = read(evaluated["out"], "tiny")

    def row(css_or_label: str) -> list[str]:
        found = re.search(rf"<tr[^>]*>{css_or_label}(.*?)</tr>", page)
        assert found, css_or_label
        return re.findall(r"<td>([^<]*)</td>", found.group(1))

    expected = [
        f"{100 * metrics['scores'][n]:.1f}" if metrics["scores"][n] is not None else "n/a"
        for n in METRIC_NAMES
    ]
    assert row("<td>model</td>") == expected
    baseline = metrics["baseline"]
    assert baseline["caption"] and html.escape(baseline["caption"]) in page
    assert row("<td>image-blind baseline</td>") == [
        f"{100 * baseline['scores'][n]:.1f}" if baseline["scores"][n] is not None else "n/a"
        for n in METRIC_NAMES
    ]
    for fact in (
        f"pycocoevalcap {metrics['pycocoevalcap']}",
        "references per image",
        f"epoch {metrics['epoch']}",
        "length penalty",
        "feature fingerprint",
        metrics["features"],
    ):
        assert html.escape(str(fact)) in page, fact


def test_reports_are_self_contained_and_light(evaluated):
    out = evaluated["out"]
    for path in (
        out / "tiny" / "report.html",
        out / "broken" / "report.html",
        out / "comparison.html",
    ):
        page = path.read_text("utf-8")
        urls = URL_ATTRIBUTE.findall(page)
        assert urls, path
        assert all(u.startswith(("data:", "#")) for u in urls), [
            u[:40] for u in urls if not u.startswith("data:")
        ]
        assert "<script" not in page.lower() and "@import" not in page
        assert "http://" not in page and "https://" not in page
    page = (out / "tiny" / "report.html").read_text("utf-8")
    assert len(page.encode()) < MAX_BYTES_PER_CARD * page.count('class="card"')


def test_thumbnails_and_attention_tiles_are_real_jpegs(evaluated):
    page, _, predictions = read(evaluated["out"], "tiny")
    sizes = [Image.open(io.BytesIO(base64.b64decode(b))).size for b in DATA_URI.findall(page)]
    assert sizes.count((THUMBNAIL, THUMBNAIL)) == len(predictions)  # one thumbnail per card
    words = sum(len(p["caption"].split()) for p in predictions)
    assert sizes.count((TILE, TILE)) == words  # one attention tile per generated word
    assert "were not found" not in page


def test_degenerate_run_health_numbers_and_flags(evaluated):
    page, metrics, predictions = read(evaluated["out"], "broken")
    health = metrics["health"]
    word_count = 12 + 1  # eval.max_len of the tiny config + the step meant for <eos>
    assert len({p["caption"] for p in predictions}) == 1
    assert len(predictions[0]["caption"].split()) == word_count
    assert health["unfinished_share"] == 1.0
    assert health["distinct_share"] == 1 / 4
    assert health["top_caption_share"] == 1.0
    assert health["repetition_share"] == 1.0
    assert health["vocabulary_used"] == 1
    assert health["mean_length"] == word_count
    assert health["top_repeated"] == [[predictions[0]["caption"], 4]]
    assert set(health["flags"]) >= {"top_caption_share", "unfinished_share", "repetition_share"}
    assert "Decoding looks degenerate" in page
    assert page.count("<tr class=flag>") == len(health["flags"])
    assert "decoding looks degenerate" in evaluated["output"]
    # no images for this run: attention on grey, said once at the top of the gallery
    assert "4 of 4 gallery images were not found" in page
    assert page.count('class="nothumb"') == 4


def test_comparison_page_ranks_runs_and_draws_their_cider_curves(evaluated):
    page = (evaluated["out"] / "comparison.html").read_text("utf-8")
    tiny = read(evaluated["out"], "tiny")[1]["scores"]["CIDEr"]
    broken = read(evaluated["out"], "broken")[1]["scores"]["CIDEr"]
    first, second = ("tiny", "broken") if tiny >= broken else ("broken", "tiny")
    assert page.index(f"</span>{first}</td>") < page.index(f"</span>{second}</td>")
    chart = page[page.index('<svg class="chart"') :]
    assert chart.count("<polyline") == 2  # one val-CIDEr curve per run (2 epochs each)
    assert "val CIDEr" in chart


def test_training_curves_come_from_metrics_jsonl(evaluated):
    page, metrics, _ = read(evaluated["out"], "tiny")
    charts = page[page.index('id="curves"') : page.index('id="provenance"')]
    assert charts.count('<svg class="chart"') == 3
    assert charts.count("<polyline") == 5  # train/val loss, CIDEr/BLEU-4, lr
    assert f">epoch {metrics['epoch']}</text>" in charts  # the evaluated checkpoint is marked


def test_caption_html_card_for_new_images(evaluated, tmp_path):
    image = tmp_path / "photo.jpg"
    shutil.copy(evaluated["images"] / "demo_00001.jpg", image)
    out = tmp_path / "cards" / "captions.html"
    result = cli(
        "caption", image, "--checkpoint", evaluated["run"], "--beam-size", "2", "--html", out
    )
    assert result.exit_code == 0, result.output
    caption = next(
        line for line in result.output.splitlines() if line.startswith(f"{image}: ")
    ).split(": ", 1)[1]
    page = out.read_text("utf-8")
    assert html.escape(caption) in page and page.count('class="card"') == 1
    sizes = [Image.open(io.BytesIO(base64.b64decode(b))).size for b in DATA_URI.findall(page)]
    assert sizes == [(THUMBNAIL, THUMBNAIL)] + [(TILE, TILE)] * len(caption.split())
    assert all(u.startswith(("data:", "#")) for u in URL_ATTRIBUTE.findall(page))


CHECK_IMAGES = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const decoded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  const marker = document.createElement("pre");
  marker.id = "decoded";
  marker.textContent = `decoded ${decoded} of ${images.length}`;
  document.body.appendChild(marker);
});
</script>"""


def chromium() -> str | None:
    return (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )


def headless(browser: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(
    chromium() is None,
    reason="no Chromium on this machine (.ci/run installs "
    "it with apt-get where it may: apt-get install chromium)",
)
def test_chromium_renders_the_report_and_decodes_every_image(evaluated, tmp_path):
    report = evaluated["out"] / "tiny" / "report.html"
    shot = tmp_path / "report.png"
    result = headless(
        chromium(), f"--screenshot={shot}", "--window-size=1280,1600", report.as_uri()
    )
    assert shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1280) and pixels.std() > 20  # not a blank page
    # the same page plus a probe script (the report itself has none): every <img> decoded
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text("utf-8").replace("</body>", CHECK_IMAGES + "</body>"))
    dom = headless(chromium(), "--dump-dom", "--virtual-time-budget=10000", probe.as_uri())
    count = report.read_text("utf-8").count("<img ")
    assert f"decoded {count} of {count}" in dom.stdout, dom.stderr[-2000:]
