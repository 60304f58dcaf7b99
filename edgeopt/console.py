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
        # soft_wrap: a long line is left to the terminal, so a command or a path in it copies back whole
        self.out.print(text, markup=False, soft_wrap=True)

    def error(self, text: str) -> None:
        self.err.print(f"[bold red]error:[/] {text}", markup=True, highlight=False) if self.interactive else print(
            f"error: {text}", file=sys.stderr, flush=True
        )


@contextmanager
def native_output_to_log(prefix: str = "edgeopt-"):
    """Send what converters' native code prints (absl, XNNPACK, progress bars) to a log file.

    File descriptors 1 and 2 are pointed at the log while ``sys.stdout``/``sys.stderr`` keep writing to
    the terminal, so edgeopt's own output is untouched. The log is removed on success and kept (its path
    is yielded) when the block fails, for the bug report.
    """
    import io
    import os
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    fd, log_path = tempfile.mkstemp(prefix=prefix, suffix=".log")
    saved = os.dup(1), os.dup(2)
    old_streams = sys.stdout, sys.stderr
    sys.stdout = io.TextIOWrapper(os.fdopen(os.dup(saved[0]), "wb", buffering=0), write_through=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(saved[1]), "wb", buffering=0), write_through=True)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    ok = False
    try:
        yield log_path
        ok = True
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)
        sys.stdout, sys.stderr = old_streams
        if ok or os.path.getsize(log_path) == 0:
            os.unlink(log_path)
        else:
            print(f"(converter output kept in {log_path})", file=sys.stderr)
