"""Files a user names (a sample file, a sweep spec): how they are read, which ones a
parsed schedule reads, and the error that names one when writing it fails.

A name typed by a user may be a FIFO (an open blocks forever), a device (``/dev/zero``
never ends), or any readable file whose lines an error message would print. So: regular
files only (checked before the open and again on the open descriptor, opened with
``O_NONBLOCK`` so even a FIFO swapped in between cannot block), at most ``max_bytes``,
and error messages quote a line number and a short escaped excerpt, never a whole line.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from .errors import BadInput

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))
_CHUNK = 1 << 20


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def read_input_file(path: str | os.PathLike[str], *, what: str, max_bytes: int) -> str:
    """The UTF-8 text (a BOM dropped) of the regular file ``path``, at most ``max_bytes``.

    Raises ValueError starting with ``what`` (e.g. ``"empirical: file 'x.txt'"``) for a
    file that is not a regular file, too big, or not UTF-8; OSError where it cannot be
    opened or read (the caller words that, as it always has).
    """
    kind = _not_regular(os.stat(path).st_mode)  # no open at all of a device or a FIFO
    if kind is not None:
        raise BadInput(f"{what}: is {kind}: only a regular file is read")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
                 | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        kind = _not_regular(st.st_mode)  # it may have been replaced since the stat
        if kind is not None:
            raise BadInput(f"{what}: is {kind}: only a regular file is read")
        if st.st_size > max_bytes:
            raise BadInput(f"{what}: {st.st_size} bytes, over the limit of {max_bytes} "
                             "bytes")
        chunks, total = [], 0
        while True:  # at most max_bytes + 1: a file that grows after the fstat is caught
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise BadInput(f"{what}: over the limit of {max_bytes} bytes")
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{what}: not UTF-8 text (byte {exc.start})") from None


def named_error(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """``exc`` as an OSError (same errno, so the same subclass) that names ``path``: a
    write that fails on a temporary file is reported as the file the user asked for."""
    if exc.filename == os.fspath(path):
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), os.fspath(path))


def excerpt(text: str, limit: int = 16) -> str:
    """A short, escaped quotation of ``text`` for an error message: control characters
    and other non-printables escaped (as ``repr`` does), at most ``limit`` characters of
    the original, ``...`` after a cut."""
    cut = text[:limit]
    return repr(cut) + ("..." if len(text) > limit else "")


def input_files(obj: Any) -> list[str]:
    """Every file path that ``obj`` reads, in order, each once: ``obj`` is a schedule, a
    distribution, a temporal model, stragglers, detours (a trace's file), or a list or
    tuple of them; nested distributions (a mixture, shift or clip of an empirical, a
    burst law, the stragglers' law) are walked. Paths are as written (relative to the
    working directory)."""
    from .schedules import Schedule, Stragglers

    out: list[str] = []

    def walk(o: Any) -> None:
        if o is None:
            return
        if isinstance(o, (list, tuple)):
            for item in o:
                walk(item)
        elif isinstance(o, Schedule):
            walk(o.dist)
            walk(o.temporal)
            walk(o.stragglers)
            walk(o.detours)
        elif isinstance(o, Stragglers):
            walk(o.dist)
        else:
            for p in getattr(type(o), "params", ()):
                if p.kind not in ("path", "dist", "components"):
                    continue  # (a duration of detours is not at p.attr: Periodic.duration)
                value = getattr(o, p.attr)
                if p.kind == "path" and value not in out:
                    out.append(value)
                elif p.kind == "dist":
                    walk(value)
                elif p.kind == "components":
                    walk([d for _, d in value])

    walk(obj)
    return out
