"""Loading numba's compiled loops (the optional ``fast`` extra): a module of them, or None where numba is
missing or cannot compile on this machine; the callers then run their numpy or scipy path, which gives
the same numbers."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable
from types import ModuleType

log = logging.getLogger(__name__)


def load_compiled(module: str, warm: Callable[[ModuleType], object], what: str) -> ModuleType | None:
    """The module ``module`` (relative to this package) after ``warm(module)`` has loaded (or compiled) the
    loops it calls; None without numba, or where compiling fails (logged with ``what``)."""
    try:
        loops = importlib.import_module(f".{module}", __package__)
        warm(loops)
    except ImportError:
        return None
    except Exception:  # numba present but unusable here: not a reason to fail a run
        log.warning("numba could not compile %s; the uncompiled path computes them", what, exc_info=True)
        return None
    return loops


def numba_installed() -> bool:
    """Whether numba can be imported here (found, not imported: its import takes ~0.4 s)."""
    return importlib.util.find_spec("numba") is not None
