"""A one-line progress bar on stderr, shown only on a terminal unless asked for."""

from __future__ import annotations

from typing import TextIO


class ProgressBar:
    WIDTH = 30

    def __init__(self, total: int, stream: TextIO, mode: str = "auto") -> None:
        self.total = total
        self.stream = stream
        self.enabled = mode == "always" or (mode == "auto" and stream.isatty())
        self._shown = False

    def update(self, done: int, loss: float) -> None:
        if not self.enabled:
            return
        filled = self.WIDTH * done // max(self.total, 1)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.stream.write(f"\r[{bar}] {done}/{self.total} epochs  loss {loss:.4f}")
        self.stream.flush()
        self._shown = True

    def write(self, line: str, stream: TextIO) -> None:
        """Print a line without tearing the bar: clear it, print, redraw on the next update."""
        if self._shown:
            self.stream.write("\r" + " " * (self.WIDTH + 40) + "\r")
            self.stream.flush()
        print(line, file=stream, flush=True)

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
