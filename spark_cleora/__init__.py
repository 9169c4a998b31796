"""spark_cleora: Cleora hypergraph embeddings on Apache Spark, numerically equal to pycleora."""

from __future__ import annotations

from ._version import __version__

import os as _os
import sys as _sys

from .runtime.compat import check_environment as _check_environment
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
from .engine.embed import EmbedResult, embed, run_embedding  # noqa: E402

__all__ = ["ConfigError", "EmbedConfig", "EmbedResult", "embed", "parse_columns", "run_embedding", "__version__"]
