"""benchmarks/gpu_check.py runs every path it checks on a GPU, here on the CPU at tiny sizes."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_every_path_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text("utf-8"))
    assert json.loads(done.stdout.strip().splitlines()[-1]) == report  # the final JSON line
    assert report["failures"] == {}
    results = report["results"]
    for key in (
        "forward_images_per_s",
        "loader_images_per_s",
        "extract_device_decode_images_per_s",
        "extract_cpu_decode_images_per_s",
        "tokens_per_s_fp32",
        "tokens_per_s_auto",
        "speedup_cached_vs_end_to_end",
        "beam3_images_per_s",
        "caption_beam1_images_per_s",
        "caption_beam3_images_per_s",
        "caption_beam3_cpu_decode_images_per_s",
        "caption_beam3_features_images_per_s",
        "scst_epoch_seconds",
    ):
        assert results[key] > 0, key
    assert results["extract_device_decode_failed"] == results["extract_cpu_decode_failed"] == 0
    assert results["caption_beam3_failed"] == results["caption_beam3_features_failed"] == 0
    assert results["caption_device_vs_cpu_decode_same_captions"] >= 0.5
    assert results["device_vs_cpu_decode_max_rel_diff"] < 0.05
    assert results["torchrun_backend"] == "gloo" and results["torchrun_test_CIDEr"] >= 0
