"""Write files so a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, then rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | os.PathLike[str], field: str) -> None:
    """Raise ValueError naming ``field`` unless ``path`` can be written later (its folder
    exists or can be made, and is writable; the path is not a folder)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{field}: {str(path)!r} is a directory")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    try:  # the only sure test: make (and remove) a file there
        if not parent.is_dir():
            raise OSError("not a directory")
        fd, probe = tempfile.mkstemp(prefix=".jitterlab-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError:
        raise ValueError(f"{field}: cannot write {str(path)!r} ({str(parent)!r} is not a "
                         "writable directory)") from None
