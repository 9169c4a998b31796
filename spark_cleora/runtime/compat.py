"""The supported Python and Spark versions, and one form of each call that differs between them.

spark_cleora runs on PySpark 3.5 through 4.x. Calls that some of these versions lack have one spelling
here, used everywhere else, so that every version computes the same numbers:

- :func:`is_valid_utf8` — ``F.is_valid_utf8`` (4.0+) or a UTF-8 decode round trip (3.5);
- :func:`vector_norm` / :func:`cosine_similarity` — plain higher-order SQL (``aggregate``/``zip_with``) in
  float64 on every version, rather than 4.3's ``vector_*`` functions, so the results do not depend on
  the version;
- :func:`grouped_arrow` — ``applyInArrow`` (4.0+) or, on 3.5, the same groups
  formed by ``repartition`` + ``sortWithinPartitions`` + ``mapInArrow``.

Setting ``SPARK_CLEORA_COMPAT_FALLBACK=1`` takes the older-version form on every version (tests compare
both forms in one session).

This module imports no PySpark at import time: the package checks the environment with it first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import MissingPySparkError, UnsupportedEnvironmentError

if sys.version_info >= (3, 11):
    import tomllib  # noqa: F401  (re-exported: config.py reads TOML with it)
else:  # Python 3.10: the same parser, as a package (the tomli dependency)
    import tomli as tomllib  # noqa: F401

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame

#: oldest supported (major, minor) of Python and of Spark; Spark below ``SPARK_BELOW`` is supported
PYTHON_MIN = (3, 10)
SPARK_MIN = (3, 5)
SPARK_BELOW = (5, 0)
SUPPORTED = "Python >= 3.10 with PySpark 3.5 to 4.x"
INSTALL_HINT = (
    "pip install 'spark-cleora[local]' for a local Spark on this machine; on a cluster or Databricks use "
    "the Spark the platform provides"
)


def _major_minor(version: str) -> tuple[int, int]:
    parts = (version.split(".") + ["0"])[:2]
    return int("".join(ch for ch in parts[0] if ch.isdigit()) or 0), int(
        "".join(ch for ch in parts[1] if ch.isdigit()) or 0)


def spark_supported(version: str) -> bool:
    """Whether an Apache Spark version (``3.5.9``, ``4.1.0.dev1``: major and minor are compared) is in the
    supported range.

    The versions checked are PySpark's own (``pyspark.__version__``) and the running session's
    ``spark.version``, which are Spark versions on every platform. A platform's runtime name (Databricks'
    ``15.4.x-scala2.12``) is not one and is never read: on Databricks 15.4 the check sees Spark 3.5.
    """
    return SPARK_MIN <= _major_minor(version) < SPARK_BELOW


def check_python(version_info: Sequence[int] | None = None) -> None:
    """Raise :class:`UnsupportedEnvironmentError` unless Python is at least :data:`PYTHON_MIN`."""
    v = tuple(version_info or sys.version_info)[:3]
    if tuple(v[:2]) < PYTHON_MIN:
        raise UnsupportedEnvironmentError(
            f"Python {'.'.join(map(str, v))} is not supported; spark_cleora needs {SUPPORTED}")


def check_spark_version(version: str, what: str = "PySpark") -> None:
    """Raise :class:`UnsupportedEnvironmentError` naming ``version`` and the supported range."""
    if not spark_supported(version):
        raise UnsupportedEnvironmentError(f"{what} {version} is installed; spark_cleora supports {SUPPORTED}")


def pyspark_version() -> str:
    """The importable PySpark's version; :class:`MissingPySparkError` (with how to install one) if none."""
    try:
        import pyspark
    except ImportError as exc:
        raise MissingPySparkError(f"PySpark is not installed; spark_cleora needs {SUPPORTED}: {INSTALL_HINT}") from exc
    return str(pyspark.__version__)


def check_environment() -> None:
    """The start-up check: a supported Python and an importable, supported PySpark."""
    check_python()
    check_spark_version(pyspark_version())


def check_session(spark: Any) -> None:
    """The running session's Spark (a Connect server can differ from the client's PySpark)."""
    check_spark_version(str(spark.version), "Spark")


def is_remote(spark: Any) -> bool:
    """True for a Spark Connect session."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def observes_writes(spark: Any) -> bool:
    """Whether ``DataFrame.observe(Observation(...))`` on a write returns its metrics: classic sessions,
    and Spark Connect from 4.0 (a 3.5 Connect client refuses ``Observation``)."""
    return not is_remote(spark) or _major_minor(str(spark.version)) >= (4, 0)


def _fallback(native: bool) -> bool:
    return not native or os.environ.get("SPARK_CLEORA_COMPAT_FALLBACK", "") == "1"


# -- SQL functions -----------------------------------------------------------------------------------

def is_valid_utf8(col: str | Column) -> Column:
    """Whether a string column holds valid UTF-8 (NULL for NULL), as ``F.is_valid_utf8`` of Spark 4.

    On 3.5: decoding replaces every malformed sequence with U+FFFD, so exactly the valid strings come back
    byte for byte from ``encode(decode(bytes))``. (Spark 4's ``decode`` raises on malformed input instead,
    so it keeps the native function.)
    """
    from pyspark.sql import functions as F

    c = F.col(col) if isinstance(col, str) else col
    if not _fallback(hasattr(F, "is_valid_utf8")):
        return F.is_valid_utf8(c)
    raw = c.cast("binary")
    return F.encode(F.decode(raw, "UTF-8"), "UTF-8") == raw


def _sum_of(values: Column) -> Column:
    from pyspark.sql import functions as F

    return F.aggregate(values, F.lit(0.0).cast("double"), lambda acc, x: acc + x)


def try_double(name: str) -> Column:
    """The column ``name`` as a double, null where it does not parse (``Column.try_cast`` is PySpark 4.0+;
    the SQL function exists on every supported version)."""
    from pyspark.sql import functions as F

    quoted = name.replace("`", "``")
    return F.expr(f"try_cast(`{quoted}` as double)")


def vector_norm(col: str | Column) -> Column:
    """L2 norm of an ``array<float>`` in float64 (0 for an empty array, NULL for NULL)."""
    from pyspark.sql import functions as F

    v = F.col(col) if isinstance(col, str) else col
    return F.sqrt(_sum_of(F.transform(v, lambda x: x.cast("double") * x.cast("double"))))


def cosine_similarity(a: str | Column, b: str | Column) -> Column:
    """Cosine of two ``array<float>`` in float64; NULL where either is NULL, has norm 0 or the lengths
    differ."""
    from pyspark.sql import functions as F

    a = F.col(a) if isinstance(a, str) else a
    b = F.col(b) if isinstance(b, str) else b
    dot = _sum_of(F.zip_with(a, b, lambda x, y: x.cast("double") * y.cast("double")))  # NULL if lengths differ
    den = vector_norm(a) * vector_norm(b)
    return F.when(den > 0, dot / den)


# -- grouped Arrow functions -------------------------------------------------------------------------

def _groups(batches: Iterator[pa.RecordBatch], keys: Sequence[str]) -> Iterator[pa.Table]:
    """Consecutive rows with equal ``keys`` (the partition is sorted by them) as one table per group,
    holding one group at a time."""
    import numpy as np
    import pyarrow as pa

    pending: list[pa.RecordBatch] = []
    current: tuple | None = None
    for b in batches:
        if b.num_rows == 0:
            continue
        change = np.zeros(b.num_rows, dtype=bool)
        cols = [b.column(k) for k in keys]
        for c in cols:
            arr = c.to_numpy(zero_copy_only=False)
            change[1:] |= arr[1:] != arr[:-1]
        starts = [0, *np.flatnonzero(change).tolist(), b.num_rows]
        for lo, hi in zip(starts[:-1], starts[1:]):
            key = tuple(c[lo].as_py() for c in cols)
            if pending and key != current:
                yield pa.Table.from_batches(pending)
                pending = []
            current = key
            pending.append(b.slice(lo, hi - lo))
    if pending:
        yield pa.Table.from_batches(pending)


def grouped_arrow(df: DataFrame, keys: Sequence[str], func: Callable[[pa.Table], pa.Table],
                  schema: str) -> DataFrame:
    """``df.groupBy(*keys).applyInArrow(func, schema)`` (table form: one call per group)."""
    from pyspark.sql import GroupedData

    if not _fallback(hasattr(GroupedData, "applyInArrow")):
        return df.groupBy(*keys).applyInArrow(func, schema)
    keys = list(keys)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for group in _groups(batches, keys):
            yield from func(group).to_batches()

    return df.repartition(*keys).sortWithinPartitions(*keys).mapInArrow(run, schema)
