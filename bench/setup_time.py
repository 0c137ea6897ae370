"""Benchmark: how long a fresh clone takes to set up its environment, with uv and with pip.

Copies the project's tracked files (the working tree's version of each) into a new folder, then
times `make setup` (what `make run` installs: lmpipe and its run-time dependencies) and the test
extras `make test` adds on top, each on an empty package cache of its own (UV_CACHE_DIR and
PIP_CACHE_DIR point into a new temporary folder), so nothing a previous install downloaded is
reused: what a fresh machine pays. Both installers run in the same invocation, uv first, so the
ratio holds on a day when the network or the disk is slow. Chromium, which `make test` installs
with apt where it is missing, is outside the figure (on this machine kind it is a Debian package
install, not Python). Requirement (issue #18): ≤ 90 s for a fresh clone.

    .venv/bin/python bench/setup_time.py [--installers uv pip] [--write-readme]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from readme_block import write_block  # noqa: E402

README = ROOT / "bench" / "README.md"


def fresh_copy(dest: Path) -> Path:
    """The tracked files of the project as they are in the working tree."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True,
                           text=True).stdout.split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file() or source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name, follow_symlinks=False)
    return dest


def timed_make(project: Path, target: str, installer: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(["make", target, f"INSTALLER={installer}"], cwd=project, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"make {target} ({installer}) failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def measure(installer: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"lmpipe-setup-{installer}-") as tmp:
        project = fresh_copy(Path(tmp) / "lmpipe")
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
        env |= {"UV_CACHE_DIR": str(Path(tmp) / "uv-cache"),
                "PIP_CACHE_DIR": str(Path(tmp) / "pip-cache"),
                "PATH": os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                        if ".venv" not in p)}
        run = timed_make(project, "setup", installer, env)
        test = timed_make(project, ".venv/.test-extras-stamp", installer, env)
    return {"run": run, "test_extras": test, "test": run + test}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--installers", nargs="+", default=["uv", "pip"], choices=["uv", "pip"])
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    results = {}
    for installer in args.installers:
        results[installer] = measure(installer)
        r = results[installer]
        print(f"{installer:>4}: make run's environment {r['run']:.0f} s, + test extras "
              f"{r['test_extras']:.0f} s = make test's {r['test']:.0f} s", flush=True)
    lines = ["| installer | `make run` env (s) | `make test` env (s) |", "|---|---:|---:|"]
    lines += [f"| {name} | {r['run']:.0f} | {r['test']:.0f} |" for name, r in results.items()]
    if {"uv", "pip"} <= results.keys():
        lines += ["", f"uv takes {results['uv']['test'] / results['pip']['test']:.2f}x pip's time "
                  "for `make test`'s environment."]
    block = "\n".join([f"Measured with `bench/setup_time.py` on {date.today().isoformat()} "
                       f"({os.cpu_count()} CPU cores, {platform.machine()}, Python "
                       f"{platform.python_version()}; empty package caches):", "", *lines])
    print(block)
    if args.write_readme:
        write_block(README, "setup-time", block)


if __name__ == "__main__":
    main()
