"""Test receivers that answer slowly on purpose."""

from __future__ import annotations

import contextlib
import io
import time

__all__ = ["trickle"]


def trickle(wfile: io.BufferedIOBase, *, every_s: float = 0.2, most: int = 3000) -> None:
    """Writes a response body one byte every ``every_s`` seconds, up to ``most`` bytes or until the
    client hangs up: each read is quick, the body never ends."""
    with contextlib.suppress(OSError):
        for _ in range(most):
            wfile.write(b"x")
            wfile.flush()
            time.sleep(every_s)
