"""Terminal helpers for long work: whether stderr is a terminal, and a one-line progress bar fed by
ComfyUI's websocket ``progress`` messages (render gate, activation collection)."""
from __future__ import annotations

import sys


def tty() -> bool:
    """True when stderr is a terminal (progress bars only there, never in logs or pipes)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def step_printer(msg: str):
    """A one-line progress bar on a terminal, fed by ComfyUI's websocket ``progress`` messages."""

    def show(value: int, maximum: int, node):
        if maximum > 0:
            n = int(20 * value / maximum)
            sys.stderr.write(f"\r  {msg} [{'#' * n}{'.' * (20 - n)}] {value}/{maximum}\x1b[K")
            if value >= maximum:
                sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
    return show
