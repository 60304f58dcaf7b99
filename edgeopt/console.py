"""Terminal output for the CLI: rich progress and tables on a terminal, plain lines otherwise.

Only the CLI uses this module; the library reports progress through a callback and never prints.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class Console:
    def __init__(self, *, quiet: bool = False):
        from rich.console import Console as RichConsole

        self.err = RichConsole(stderr=True, highlight=False)
        # Not a terminal (CI logs, pipes): rich would assume 80 columns and fold the plan table's cells.
        self.out = RichConsole(highlight=False, width=None if sys.stdout.isatty() else 160)
        self.interactive = sys.stderr.isatty()
        self.quiet = quiet
        self._status = None
        self._start = time.perf_counter()

    def progress(self, message: str) -> None:
        """One stage message: a live status line on a terminal, a timestamped line otherwise."""
        if self.quiet:
            return
        if self.interactive and self._status is not None:
            self._status.update(f"[bold]{message}")
            self.err.log(message)
        else:
            print(f"[{time.perf_counter() - self._start:6.1f}s] {message}", file=sys.stderr, flush=True)

    @contextmanager
    def working(self, message: str):
        if self.interactive and not self.quiet:
            with self.err.status(f"[bold]{message}") as status:
                self._status = status
                try:
                    yield
                finally:
                    self._status = None
        else:
            yield

    def table(self, title: str | None, header: list[str], rows: list[list[str]], *, highlight_row: int | None = None) -> None:
        from rich.table import Table

        table = Table(title=title, show_lines=False)
        for h in header:
            table.add_column(h, overflow="fold")
        for i, row in enumerate(rows):
            table.add_row(*row, style="bold green" if i == highlight_row else None)
        self.out.print(table)

    def line(self, text: str = "") -> None:
        self.out.print(text, markup=False)

    def error(self, text: str) -> None:
        self.err.print(f"[bold red]error:[/] {text}", markup=True, highlight=False) if self.interactive else print(
            f"error: {text}", file=sys.stderr, flush=True
        )
