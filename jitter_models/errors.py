"""Bad input, told apart from bugs.

``BadInput`` is what validation raises about a user's input: a spec key, a flag, a plan
field, a file. Its message starts with the key path (``jitter[2].dist: lognormal: sigma:
must be > 0, got -1.0``). The CLI turns it into one line and exit code 2, and a sweep
records a point whose input is bad as failed; any other exception is a bug, which the CLI
reports as one (exit 1, with its traceback) and a sweep does not hide in ``failed/``.

The parsers below the entry points raise plain ``ValueError``; the entry points that read
input (``experiments.spec.parse_spec``, ``launch.plan.Plan``, the CLI's commands) wrap
their parsing in ``reading_input()``, which re-raises a ``ValueError`` from that code as
``BadInput``. Code that runs after the input was read does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class BadInput(ValueError):
    """Input that fails validation; ``str()`` is ``"<key path>: <what is wrong>"``."""

    @property
    def path(self) -> str:
        """The key path the message starts with ("" when it names none)."""
        text = str(self)
        head, sep, _ = text.partition(": ")
        return head if sep and " " not in head.strip("'\"") else ""


@contextlib.contextmanager
def reading_input() -> Iterator[None]:
    """Inside: a ``ValueError`` is about the input being read, re-raised as ``BadInput``
    (with the original as its cause)."""
    try:
        yield
    except BadInput:
        raise
    except ValueError as exc:
        raise BadInput(*exc.args) from exc
