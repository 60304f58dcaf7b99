"""Where the built-in profiles and device runners are, from a source tree or an installed wheel.

In the source tree they are the top-level ``profiles/`` and ``runtimes/`` folders; the wheel ships the
same folders as the packages ``edgeopt.data_profiles`` and ``edgeopt.data_runtimes``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PACKAGES = {"profiles": "edgeopt.data_profiles", "runtimes": "edgeopt.data_runtimes"}


def builtin_dir(kind: str) -> Path:
    """The folder holding the built-in ``profiles`` or ``runtimes``.

    Raises:
        KeyError: for any other ``kind``.
        FileNotFoundError: when the installation is missing them (a broken install).
    """
    package = _PACKAGES[kind]
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            path = Path(location)
            if path.is_dir():
                return path
    source_tree = Path(__file__).resolve().parent.parent / kind
    if source_tree.is_dir():
        return source_tree
    raise FileNotFoundError(f"edgeopt's built-in {kind} are missing (looked for package {package}); reinstall edgeopt")
