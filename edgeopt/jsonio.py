"""One bounded JSON reader for every JSON file or text edgeopt takes from a user, a bundle or a device.

``json.loads`` recurses once per nesting level: a 200,000-deep ``[[[...`` raises ``RecursionError`` (not a
``ValueError``), and a huge file is read whole into memory. Here the size is capped before anything is read
and the nesting depth is measured on the text (brackets outside strings) before it is parsed, so hostile
input is one clear message and the caller's exit code, never an internal error.

The device runner (``runtimes/common/runner.py``) keeps its own small copy of the depth check: it runs
without edgeopt installed.
"""

from __future__ import annotations

import json
import os
import re
from itertools import accumulate
from pathlib import Path
from typing import Any

from edgeopt.errors import EdgeoptError, InputFileError

MAX_DEPTH = 64  # what edgeopt writes and reads nests under 12 levels (a manifest's plan); HF configs under 8
MAX_BYTES = 16 * 1024 * 1024  # manifests, configs, results: a few KB to a few MB
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class JsonInputError(InputFileError, ValueError):
    """JSON input that is too large, too deep, not UTF-8 or not JSON (exit 3 unless a caller picks another class).

    Also a ``ValueError``, so a caller that already wraps bad JSON in its own message (``except ValueError``)
    wraps this one too: pass ``where=""`` there and the message is the reason alone."""


def nesting_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting of JSON text, counting brackets outside strings only; no recursion.

    Unbalanced or malformed text gives some number; ``json.loads`` reports the syntax afterwards.
    """
    if text.count("[") + text.count("{") == 0:
        return 0
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if not brackets:
        return 0
    return max(accumulate(1 if c in "[{" else -1 for c in brackets))


def loads(text: str | bytes, *, where: str, what: str = "JSON", fix: str = "",
          max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH, error: type[EdgeoptError] = JsonInputError,
          **json_kwargs: Any) -> Any:
    """Parse JSON text from outside edgeopt, bounded in size and nesting.

    Args:
        text: the JSON, as text or UTF-8 bytes.
        where: what names the input in a message (a path); "" when the caller's own message names it.
        what: what the input should have been ("bundle manifest"), for the message.
        fix: what the user can do, appended to the message ("rebuild the bundle with `edgeopt package`").
        max_bytes, max_depth: the caps; larger or deeper input is refused before it is parsed.
        error: the ``EdgeoptError`` class raised (its exit code is the caller's documented one).
        json_kwargs: passed to ``json.loads`` (``parse_constant``, ``parse_float``).

    Raises:
        ``error``: too large, not UTF-8, nested deeper than ``max_depth``, or not JSON; the message says which.
    """
    size = len(text.encode("utf-8", errors="surrogatepass")) if isinstance(text, str) else len(text)
    if size > max_bytes:
        _fail(error, where, f"{what} is larger than {max_bytes} bytes ({size})", fix)
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            _fail(error, where, f"{what} is not UTF-8 text (byte {e.start})", fix)
    depth = nesting_depth(text)
    if depth > max_depth:
        _fail(error, where, f"{what} nests {depth} levels deep, more than the {max_depth} allowed "
                            "(hostile or corrupt input)", fix)
    try:
        return json.loads(text, **json_kwargs)
    except json.JSONDecodeError as e:
        _fail(error, where, f"{what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", fix)
    except (ValueError, RecursionError) as e:  # parse_constant/parse_float hooks; RecursionError: belt and braces
        _fail(error, where, f"{what} is not usable JSON ({str(e)[:200] or type(e).__name__})", fix)


def load_file(path: str | Path, *, what: str = "JSON file", fix: str = "", where: str | None = None,
              max_bytes: int = MAX_BYTES,
              max_depth: int = MAX_DEPTH, error: type[EdgeoptError] = JsonInputError, **json_kwargs: Any) -> Any:
    """Read and parse a JSON file with ``loads``'s bounds; the size is checked before the file is read.

    Raises:
        ``error``: unreadable, too large, not UTF-8, too deep or not JSON; the message names ``path``.
    """
    p = Path(path)
    where = str(p) if where is None else where
    try:
        with p.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                _fail(error, where, f"{what} is larger than {max_bytes} bytes ({size})", fix)
            data = f.read(max_bytes + 1)
    except OSError as e:
        _fail(error, where, f"cannot read the {what} ({e.strerror or e})", fix)
    return loads(data, where=where, what=what, fix=fix, max_bytes=max_bytes, max_depth=max_depth, error=error,
                 **json_kwargs)


def _fail(error: type[EdgeoptError], where: str, reason: str, fix: str) -> None:
    raise error((f"{where}: " if where else "") + reason + (f"; {fix}" if fix else ""))
