"""edgeopt: plan, package, verify and benchmark a model for a named device profile.

Importing edgeopt imports no converter and no torch; the public API is loaded on first use:
``edgeopt.load_profile``, ``edgeopt.inspect``, ``edgeopt.make_plan``, ``edgeopt.package``, ``edgeopt.bench``,
``edgeopt.report``, ``edgeopt.calibrate_profile`` and ``edgeopt.sweep`` (docs and runnable examples:
``help(edgeopt.package)``).
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = ("load_profile", "inspect", "make_plan", "package", "bench", "report", "calibrate_profile", "sweep")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from edgeopt import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgeopt' has no attribute {name!r}")
