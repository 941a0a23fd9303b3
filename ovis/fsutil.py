"""Writing directories so that a reader never sees a half-written one, and refusing to overwrite
what the user did not ask to replace."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ovis.errors import OutputExistsError


@contextmanager
def atomic_directory(out: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` to fill; on success it replaces ``out`` by a rename,
    on any error it is removed and ``out`` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    # mkdtemp makes the directory private (0700); the result should have what a plain mkdir gives.
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def check_output_dir(out: str | Path, *, overwrite: bool, sources: tuple[Path, ...] = ()) -> None:
    """Refuse to write to ``out`` when it holds something (unless ``overwrite``) or is one of the
    ``sources`` being read."""
    out = Path(out)
    for source in sources:
        if out.resolve() == Path(source).resolve():
            raise OutputExistsError(f"--out {out} is the source directory; write to another directory")
        if out.resolve() in Path(source).resolve().parents:
            # (--overwrite would replace the directory the source is in: the source with it)
            raise OutputExistsError(f"--out {out} holds the source {source}; write to another directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(
            f"{out} exists and is not empty; choose another --out or pass --overwrite (overwrite=True from Python)"
        )
