"""The GPU check as a bare GPU machine runs it: `benchmarks/gpu_bundle.py` (`make gpu-bundle`)
gathers what that machine's python3 lacks, and `benchmarks/gpu_run.sh` runs
`benchmarks/gpu_check.py` with it, here on the CPU at tiny sizes.

A second torch is too heavy to install here, so the test simulates the GPU machine: `python3`
on PATH is this interpreter, and a sitecustomize.py lets a top-level module be imported from
anywhere only when it belongs to the GPU machine's packages (`GPU_MACHINE`, with what they
require as installed here); any other module is found only in the standard library, the bundle
or the repository.
"""

import json
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest

from pipeline.metrics import coco as metrics

REPO = Path(__file__).resolve().parents[1]
BUNDLER = REPO / "benchmarks" / "gpu_bundle.py"
GPU_RUN = REPO / "benchmarks" / "gpu_run.sh"
GPU_MACHINE = (  # distributions the GPU machine's python3 has
    "torch",
    "torchvision",
    "h5py",
    "pandas",
    "click",
    "tqdm",
    "pillow",
    "tensorboard",
    "numpy",
)
BUNDLED = ("pycocoevalcap", "nltk", "regex")  # what the bundle must provide
SECTIONS = (
    "stage_one",
    "training",
    "end_to_end",
    "beam",
    "bulk_caption",
    "torchrun",
    "scst",
    "training_variants",
)
SITECUSTOMIZE = '''"""Imports as on the GPU machine (written by tests/test_gpu_run.py): a top-level module
not in ALLOWED is looked for in ROOTS and the standard library's folders only."""

import importlib.machinery
import sys

ALLOWED = {allowed!r}
STDLIB = [p for p in sys.path if p.startswith(sys.base_prefix) and "-packages" not in p]
SEARCHED = {roots!r} + STDLIB


class GpuMachineFinder(importlib.machinery.PathFinder):
    """PathFinder, with top-level modules not on the GPU machine looked for in SEARCHED only."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if path is None and name not in ALLOWED:
            path = SEARCHED
        return super().find_spec(name, path, target)


sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = GpuMachineFinder
'''


def canonical(name: str) -> str:
    """A distribution's name as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def gpu_machine_modules() -> set[str]:
    """Top-level modules of GPU_MACHINE's distributions and of what they require (extras left
    out), as installed here."""
    wanted, todo = set(), list(GPU_MACHINE)
    while todo:
        name = canonical(todo.pop())
        if name in wanted:
            continue
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:  # required on other platforms only
            continue
        wanted.add(name)
        todo += [re.match(r"[A-Za-z0-9._-]+", r).group() for r in requires if "extra ==" not in r]
    owners = packages_distributions().items()
    return {module for module, dists in owners if any(canonical(d) in wanted for d in dists)}


@pytest.fixture(scope="module")
def gpu_machine(tmp_path_factory):
    """(bundle folder, environment of a bare GPU machine's shell) with a fresh bundle."""
    root = tmp_path_factory.mktemp("gpu-machine")
    bundle = root / "bundle"
    made = subprocess.run(
        [sys.executable, str(BUNDLER), "--out", str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert f"in {bundle}: " in made.stdout and " MiB" in made.stdout  # its size
    site, bin_folder = root / "site", root / "bin"
    site.mkdir()
    bin_folder.mkdir()
    allowed = sorted(gpu_machine_modules() - set(BUNDLED))
    text = SITECUSTOMIZE.format(allowed=allowed, roots=[str(bundle), str(REPO)])
    (site / "sitecustomize.py").write_text(text, "utf-8")
    python3 = bin_folder / "python3"  # a wrapper: a symlink would lose the .venv
    python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', "utf-8")
    python3.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_folder}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(site),
        "GPU_BUNDLE": str(bundle),
        "OUT": str(root / "out"),
    }
    return bundle, env


def test_the_bundle_is_small_and_the_simulated_machine_lacks_the_rest(gpu_machine):
    bundle, env = gpu_machine
    assert not [*bundle.rglob("*.jar"), *bundle.rglob("*.gz"), *bundle.rglob("__pycache__")]
    assert sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) < 16 * 2**20
    probe = (
        "import importlib.util, pycocoevalcap, nltk\n"
        "print(*pycocoevalcap.__path__, *nltk.__path__)\n"
        "print(importlib.util.find_spec('pytest'), importlib.util.find_spec('joblib'))\n"
    )
    done = subprocess.run(
        ["python3", "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    folders, missing = done.stdout.splitlines()
    assert folders.split() == [str(bundle / "pycocoevalcap"), str(bundle / "nltk")]
    assert missing == "None None"  # not on the GPU machine, so not here either


def test_gpu_run_without_a_bundle_says_what_to_do(gpu_machine, tmp_path):
    _, env = gpu_machine
    done = subprocess.run(
        ["sh", str(GPU_RUN)],
        env={**env, "GPU_BUNDLE": str(tmp_path / "none")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "make gpu-bundle" in done.stderr


def test_gpu_run_runs_every_path_on_cpu_with_only_the_gpu_machines_packages(gpu_machine, tmp_path):
    bundle, env = gpu_machine
    work = tmp_path / "work"
    done = subprocess.run(
        ["sh", str(GPU_RUN), "--device", "cpu", "--tiny", "--work", str(work)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((Path(env["OUT"]) / "gpu_check.json").read_text("utf-8"))
    assert json.loads(done.stdout.strip().splitlines()[-1]) == report  # the final JSON line
    for section in SECTIONS:  # printed as each ended, before the final JSON line
        assert f"\n{section}:\n" in done.stdout
    assert report["failures"] == {} and report["finished"] is True
    assert report["sections"] == dict.fromkeys(SECTIONS, "ok")
    environment = report["environment"]
    for key in ("python", "torch", "torchvision", "h5py", "cpu_cores"):
        assert environment[key], key
    assert {"gpu", "driver", "cuda", "cudnn", "nccl"} <= environment.keys()
    for name in BUNDLED:
        folders = environment["packages"][name]["folders"]
        assert folders and all(f.startswith(str(bundle)) for f in folders), name
    results = report["results"]
    for section in SECTIONS:
        assert results[f"{section}_seconds"] >= 0, section
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
    scored = json.loads((work / "evaluations" / "torchrun" / "metrics.json").read_text("utf-8"))
    assert scored["tokenizer"] == "simple"  # no jars in the bundle: the pure-Python tokenizer
    assert scored["scores"]["METEOR"] is None and scored["scores"]["CIDEr"] is not None


def test_missing_java_files_mean_the_python_tokenizer_and_no_meteor(tmp_path, monkeypatch):
    java = tmp_path / "java"  # a Java that starts: only the files are missing
    java.write_text("#!/bin/sh\nexit 0\n", "utf-8")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(metrics, "JAVA_FILES", (tmp_path / "meteor-1.5.jar",))

    report = metrics.score_captions({"a": ["a dog runs .", "a dog"]}, {"a": "a dog runs"})

    assert not metrics.java_available()
    assert report.tokenizer == "simple" and report.scores["METEOR"] is None
    assert any("meteor-1.5.jar" in note for note in report.notes)
    assert report.scores["CIDEr"] is not None
