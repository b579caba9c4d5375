"""Write files so a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from collectives.files import FILE_MODE, make_dirs, set_file_mode
from jitter_models.errors import BadInput
from jitter_models.files import named_error

__all__ = ["FILE_MODE", "check_writable", "make_dirs", "named_error", "write_bytes_atomic",
           "write_text_atomic"]


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to a temporary file beside ``path``, fsync it, then rename it
    over; see :func:`write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over.
    On any failure (a full disk midway) the temporary file is removed and an OSError
    names ``path``, the file asked for, not the temporary one."""
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise named_error(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            set_file_mode(f.fileno())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise named_error(exc, path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | os.PathLike[str], field: str) -> None:
    """Raise ValueError naming ``field`` unless ``path`` can be written later (its folder
    exists or can be made, and is writable; the path is not a folder)."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{field}: {str(path)!r} is a directory")
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
        raise BadInput(f"{field}: cannot write {str(path)!r} ({str(parent)!r} is not a "
                         "writable directory)") from None
