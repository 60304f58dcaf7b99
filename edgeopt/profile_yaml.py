"""Reading a profile's YAML safely: bounded size and depth, no aliases, no tags, no duplicate keys.

Every refusal is a ``ProfileError`` that names the file, line and column.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

from edgeopt.errors import ProfileError

MAX_PROFILE_BYTES = 1 << 20  # a profile is ~2 KB; anything near a MiB is the wrong file or an attack
_MAX_DEPTH = 16  # the schema is 3 levels deep; the bound keeps PyYAML's recursive composer safe
_MAX_NODES = 10_000

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60


def _key_text(key: Any) -> str:
    return key if isinstance(key, str) else _repr.repr(key)



class _Refused(yaml.MarkedYAMLError):
    """A YAML construct a profile may not use; carries its position like PyYAML's own errors."""

    def __init__(self, problem: str, mark: Any):
        super().__init__(problem=problem, problem_mark=mark)


class _Located(dict):
    """A mapping that remembers the line of each key, so problems can name it."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict = {}


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (alias bombs), deep nesting and foreign tags, and records duplicates."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = self.nodes = 0
        self.duplicates: list[tuple[Any, Any, int]] = []

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"YAML alias *{event.anchor} is not allowed in a profile (write the value out)",
                           event.start_mark)
        self.depth, self.nodes = self.depth + 1, self.nodes + 1
        if self.depth > _MAX_DEPTH or self.nodes > _MAX_NODES:
            limits = f"{_MAX_DEPTH} levels, {_MAX_NODES} values"
            raise _Refused(f"too deep or too large for a profile (limits: {limits})", event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, OverflowError) as e:  # e.g. `!!float abc`, `!!int 1x`
            problem = f"cannot read {_tag(node)} value {_repr.repr(node.value)}: {e}"
            raise _Refused(problem, node.start_mark) from None

    def construct_mapping(self, node: Any, deep: bool = False) -> _Located:
        if not isinstance(node, yaml.MappingNode):
            raise _Refused(f"expected a mapping, found a {node.id}", node.start_mark)
        mapping = _Located()
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                problem = f"a mapping key must be a plain name, found a {key_node.id}"
                raise _Refused(problem, key_node.start_mark) from None
            line = key_node.start_mark.line + 1
            if key in mapping:
                self.duplicates.append((key, key_node.start_mark, mapping.lines[key]))
                continue
            mapping[key] = self.construct_object(value_node, deep=deep)
            mapping.lines[key] = line
        return mapping

    def construct_undefined(self, node: Any) -> Any:
        raise _Refused(f"YAML tag {_tag(node)} is not allowed in a profile (profiles are plain data: mappings, "
                       f"lists, strings, numbers; remove the tag)", node.start_mark)


def _tag(node: Any) -> str:
    return str(node.tag).replace("tag:yaml.org,2002:", "!!")


def _construct_map(loader: _StrictLoader, node: Any) -> Any:
    data = _Located()
    yield data
    built = loader.construct_mapping(node)
    data.update(built)
    data.lines.update(built.lines)


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_StrictLoader.add_constructor(None, _StrictLoader.construct_undefined)


def _position(source: str, mark: Any) -> str:
    return f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source


def parse_profile_yaml(text: str, source: str = "<string>") -> Any:
    """Parse profile YAML text into plain data (not yet validated).

    Raises:
        ProfileError: syntax errors, aliases, tags, duplicate keys; each with ``source:line:column``.
    """
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader already rejects control characters here
        data = loader.get_single_data()
    except _Refused as e:
        raise ProfileError(f"{_position(source, e.problem_mark)}: {e.problem}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        context = f" ({e.context} at line {e.context_mark.line + 1})" if e.context and e.context_mark else ""
        problem = f"YAML syntax error: {e.problem or e.context}{context}"
        raise ProfileError(f"{_position(source, mark)}: {problem}") from None
    except yaml.YAMLError as e:
        raise ProfileError(f"{source}: not valid YAML: {e}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if loader.duplicates:
        raise ProfileError("\n".join(
            f"{_position(source, mark)}: duplicate key {_key_text(key)!r} "
            f"(first written on line {first}; keep one)"
            for key, mark, first in sorted(loader.duplicates, key=lambda d: (d[1].line, d[1].column))))
    return data


def read_profile_text(path: Path, shown: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        raise ProfileError(f"profile file not found: {shown}") from None
    except IsADirectoryError:
        raise ProfileError(f"{shown} is a directory, not a profile file (give the .yaml file)") from None
    except OSError as e:
        raise ProfileError(f"cannot read profile file {shown}: {e.strerror or e}") from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise ProfileError(
            f"{shown} is larger than 1 MiB; a profile is a few KB of YAML (is this the right file?)"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ProfileError(f"{shown}: not UTF-8 text (byte offset {e.start}); save the profile as UTF-8") from None
