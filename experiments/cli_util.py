"""What the CLI's commands share: bad-input errors and JSON output."""

from __future__ import annotations

import argparse
import json
import math


def bad(message: str) -> ValueError:
    """A ``BadInput`` (imported here: ``--help`` must not import jitter_models)."""
    from jitter_models.errors import BadInput

    return BadInput(message)


def strict(value: object) -> object:
    """Non-finite floats (an infinite E[max]) become null: strict JSON, readable by jq."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strict(v) for v in value]
    return value


def write_json(path: str | None, payload: object) -> None:
    if path:
        from .atomic import write_text_atomic

        write_text_atomic(path, json.dumps(strict(payload), indent=2, allow_nan=False) + "\n")


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated integers >= 1 (world sizes)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values
