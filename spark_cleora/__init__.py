"""spark_cleora: Cleora hypergraph embeddings on Apache Spark, numerically equal to pycleora."""

from __future__ import annotations

from ._version import __version__

import os as _os
import sys as _sys

from .runtime.pyspark_path import prefer_installed_pyspark as _prefer_installed_pyspark

_prefer_installed_pyspark()  # before PySpark is imported: a worker's PySpark from the package, not its zip

from .runtime.compat import check_environment as _check_environment  # noqa: E402
from .errors import EXIT_ENV as _EXIT_ENV
from .errors import ConfigError
from .errors import UnsupportedEnvironmentError as _Unsupported

try:  # before anything imports pyspark: one line on what is installed and what is supported
    _check_environment()
except _Unsupported as _exc:
    # the console scripts and the spark-submit scripts (jobs/*.py set the flag): no traceback, exit code 4
    _script = _os.path.basename(_sys.argv[0] if _sys.argv else "")
    _job = getattr(_sys.modules.get("__main__"), "SPARK_CLEORA_ENTRY_POINT", False)
    if _script in ("spark-cleora", "spark_cleora_job") or _job:
        print(f"error: {_exc}", file=_sys.stderr)
        raise SystemExit(_EXIT_ENV) from None
    raise

from .config import EmbedConfig, parse_columns  # noqa: E402

#: names imported on first use: the engine brings numpy, pyarrow and scipy, which an embedded Spark's Python
#: daemon (:mod:`spark_cleora.runtime.worker_daemon`, run as ``-m`` below this package) must not import
_LAZY = {"EmbedResult": "engine.embed", "embed": "engine.embed", "run_embedding": "engine.embed"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ConfigError", "EmbedConfig", "EmbedResult", "embed", "parse_columns", "run_embedding", "__version__"]
