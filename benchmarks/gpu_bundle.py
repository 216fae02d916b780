"""Gather the packages a bare GPU machine lacks into one folder, to carry with the repository.

    .venv/bin/python benchmarks/gpu_bundle.py [--out gpu-bundle] [--python 3.12 ...]

`make gpu-bundle` runs it. The GPU machine's own `python3` has torch, torchvision, h5py, pandas,
click, tqdm, pillow, tensorboard and numpy, but not what else captioner imports: pycocoevalcap
(metrics) and nltk (the no-Java tokenizer), and nltk imports `regex` as it starts. They are
copied here from this interpreter's site-packages (the .venv's), each with its dist-info (so
`importlib.metadata.version` still answers), without `__pycache__`, test folders and
pycocoevalcap's Java programs and METEOR data (`*.jar`, `*.gz`: about 100 MB). Without those
files scoring uses the pure-Python tokenizer and reports METEOR as unavailable
(pipeline.metrics.coco), as it does without Java.

`regex` is compiled: its extension module is built for one Python version. For each
`--python` version other than this interpreter's, the same release's wheel for that version is
fetched once with pip (into build/gpu-wheels/, reused after) and its extension module is
added beside this one's; each interpreter loads the file named for its own version.
`benchmarks/gpu_run.sh` runs the GPU check with the folder on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import distribution
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "gpu-bundle"
WHEEL_CACHE = REPO / "build" / "gpu-wheels"
PACKAGES = ("pycocoevalcap", "nltk", "regex")  # distribution name = top-level package name
COMPILED = ("regex",)  # packages with an extension module built for one Python version
LEFT_OUT = ("__pycache__", "*.pyc", "test", "tests", "*.jar", "*.gz")
WHEEL_PLATFORM = "manylinux2014_x86_64"  # the GPU machine's (Linux on x86-64)
SIZE_LIMIT_MB = 64  # what travels to the GPU machine: this folder plus the repository


def copy_package(name: str, out: Path) -> None:
    """Copy the installed package `name` and its dist-info into `out`, less LEFT_OUT."""
    dist = distribution(name)
    package = Path(dist.locate_file(name))
    metadata = next(
        f for f in dist.files if f.name == "METADATA" and f.parent.suffix == ".dist-info"
    )
    info = Path(dist.locate_file(metadata)).parent
    shutil.copytree(package, out / name, ignore=shutil.ignore_patterns(*LEFT_OUT))
    shutil.copytree(info, out / info.name, ignore=shutil.ignore_patterns("RECORD"))


def extension_tag(version: str) -> str:
    """The part of an extension module's file name that names a CPython version: 'cpython-312'."""
    return f"cpython-{version.replace('.', '')}"


def add_extension_modules(name: str, version: str, out: Path) -> None:
    """Add to out/name the extension modules of `name`'s wheel for CPython `version` (the
    installed release), from WHEEL_CACHE, fetched there with pip when missing."""
    release = distribution(name).version
    abi = f"cp{version.replace('.', '')}"
    wheels = sorted(WHEEL_CACHE.glob(f"{name}-{release}-{abi}-{abi}-*.whl"))
    if not wheels:
        fetch = [sys.executable, "-m", "pip", "download", f"{name}=={release}", "--no-deps"]
        fetch += ["--only-binary=:all:", "--implementation", "cp", "--python-version", version]
        fetch += ["--abi", abi, "--platform", WHEEL_PLATFORM, "--quiet", "-d", str(WHEEL_CACHE)]
        if subprocess.run(fetch, check=False).returncode != 0:
            sys.exit(f"gpu_bundle: cannot fetch {name} {release} for Python {version} with pip")
        wheels = sorted(WHEEL_CACHE.glob(f"{name}-{release}-{abi}-{abi}-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        for member in wheel.namelist():
            if member.startswith(f"{name}/") and extension_tag(version) in member:
                (out / member).write_bytes(wheel.read(member))


def folder_mb(folder: Path) -> float:
    """Size of every file under `folder`, in MiB."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def repository_mb() -> float:
    """Size of the working tree's files that travel without being named (git's tracked and
    untracked, not ignored), in MiB."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    files = (REPO / name.decode() for name in listed if name)
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the folder (replaced)")
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="VERSION",
        help="also a Python version the bundle must import on (the GPU machine's, e.g. 3.12)",
    )
    args = parser.parse_args()
    here = sysconfig.get_python_version()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    for name in PACKAGES:
        copy_package(name, args.out)
    for version in sorted(set(args.python) - {here}):
        for name in COMPILED:
            add_extension_modules(name, version, args.out)
    bundle, repository = folder_mb(args.out), repository_mb()
    versions = ", ".join(sorted({here, *args.python}))
    print(
        f"gpu-bundle: {', '.join(PACKAGES)} for Python {versions} in {args.out}: "
        f"{bundle:.1f} MiB; with the repository ({repository:.1f} MiB) "
        f"{bundle + repository:.1f} of {SIZE_LIMIT_MB} MiB"
    )
    if bundle + repository > SIZE_LIMIT_MB:
        sys.exit(f"gpu_bundle: more than the {SIZE_LIMIT_MB} MiB that can travel")


if __name__ == "__main__":
    main()
