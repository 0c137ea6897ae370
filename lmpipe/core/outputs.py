"""Stage outputs that appear only when they are finished.

Every stage writes into a staging folder beside its output (`runs/.staging/teacher` for
`runs/teacher`, on the same filesystem) and publishes it over the output only once it has
finished: a crash, a kill, a divergence or a refused input leaves the previous output exactly as
it was. DVC therefore declares every output `persist: true` (DVC never deletes it before a run;
the stage replaces it whole when it succeeds). Hidden folders are skipped by the store's indexer.

A training run's staging folder also holds its checkpoints, so a killed run resumes from there;
it is cleared when a run of another identity starts (lmpipe/params/identity.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

STAGING = ".staging"


def staging_dir(final: str | Path) -> Path:
    """Where the output `final` is built before it is published."""
    final = Path(final)
    return final.parent / STAGING / final.name


def publish(staging: str | Path, final: str | Path) -> None:
    """Replace `final` by the finished `staging` folder (or file).

    Two renames: the old output steps aside, the new one takes its place, then the old one is
    deleted; a kill between the renames leaves both on disk, never a half-written output.
    """
    staging, final = Path(staging), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    old = staging.parent / f".old-{final.name}-{os.getpid()}"
    if final.exists() or final.is_symlink():
        os.replace(final, old)
    os.replace(staging, final)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    elif old.exists() or old.is_symlink():
        old.unlink()
    with contextlib.suppress(OSError):  # leave no empty .staging folder behind
        staging.parent.rmdir()


def discard(staging: str | Path) -> None:
    """Remove a staging folder that holds nothing worth keeping."""
    staging = Path(staging)
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError):
        staging.parent.rmdir()


@contextlib.contextmanager
def staged(final: str | Path) -> Iterator[Path]:
    """Build the output `final` in a fresh staging folder; publish it if the block succeeds,
    discard it if the block raises (the previous `final` stays as it was)."""
    work = staging_dir(final)
    discard(work)
    work.mkdir(parents=True)
    try:
        yield work
    except BaseException:
        discard(work)
        raise
    publish(work, final)


def write_atomic(path: str | Path, text: str) -> None:
    """Write a whole file or nothing: a temporary sibling renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
