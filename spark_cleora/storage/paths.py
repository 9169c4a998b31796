"""Paths: local or remote, and what can be known about local inputs before Spark starts (they exist,
their Parquet footers' row counts, whether Spark can read them as one table)."""

from __future__ import annotations

import logging
import os
from urllib.parse import urlparse

from ..errors import BadInputError, ConfigError

log = logging.getLogger(__name__)


def local_path(uri: str) -> str | None:
    """The local filesystem path of ``uri``, or None for remote stores (s3a://, abfss://, dbfs:/ ...)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        return parsed.path if parsed.scheme == "file" else uri
    return None


#: above this many files the footers are left to Spark (one job reads them in parallel)
FOOTER_FILES_MAX = 2_000


def parquet_footer_rows(inputs: tuple[str, ...] | list[str]) -> int | None:
    """Rows of local Parquet inputs from their footers, read here; None when Spark should count (a
    non-local path, a glob, too many files, an unreadable footer).

    ``count()`` on Parquet also only reads footers, but as a Spark job: about a second on a small
    local run, spent before the graph build can start. Files are the ones Spark reads: data files
    below the paths, skipping names that start with ``_`` or ``.`` (``_SUCCESS``, ``_delta_log``,
    staging directories).
    """
    import pyarrow.parquet as pq

    files = _local_parquet_files(inputs)
    if files is None:
        return None
    try:
        return sum(pq.read_metadata(f).num_rows for f in files)
    except Exception:  # not Parquet after all, or unreadable: Spark's count will say what is wrong
        log.debug("reading Parquet footers failed; Spark counts instead", exc_info=True)
        return None


def _local_parquet_files(inputs: tuple[str, ...] | list[str]) -> list[str] | None:
    """The data files Spark reads below local Parquet inputs (skipping ``_``/``.`` names), or None when
    that cannot be known here (a remote path, a glob, a missing path, too many files)."""
    files: list[str] = []
    for p in inputs:
        lp = local_path(p)
        if lp is None or any(c in lp for c in "*?[{") or not os.path.exists(lp):
            return None
        if os.path.isfile(lp):
            files.append(lp)
            continue
        for d, dirs, names in os.walk(lp):
            dirs[:] = [x for x in dirs if not x.startswith(("_", "."))]
            files.extend(os.path.join(d, f) for f in names if not f.startswith(("_", ".")))
            if len(files) > FOOTER_FILES_MAX:
                return None
    return files


def check_parquet_inputs(inputs: tuple[str, ...] | list[str], what: str = "input") -> None:
    """Refuse, before Spark starts, local Parquet inputs Spark cannot read as one table: files whose
    column types disagree, duplicate column names, nanosecond timestamps (pandas' default)."""
    import pyarrow as pa
    import pyarrow.parquet as pq


    files = _local_parquet_files(inputs)
    if not files:
        return
    def kind(t: pa.DataType) -> str:  # widths of one kind are Spark's to reconcile; kinds are not
        for name, test in (("integer", pa.types.is_integer), ("floating", pa.types.is_floating),
                           ("string", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x))):
            if test(t):
                return name
        return str(t)

    types: dict[str, tuple[pa.DataType, str]] = {}
    for f in files:
        try:
            schema = pq.read_schema(f)
        except Exception:  # not Parquet: Spark's own error says so
            return
        names = schema.names
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise BadInputError(f"{what} {f!r} has duplicate column name(s) {dup}; rename them")
        for field in schema:
            if pa.types.is_timestamp(field.type) and field.type.unit == "ns":
                raise BadInputError(
                    f"{what} {f!r}: column {field.name!r} holds nanosecond timestamps, which Spark cannot read; "
                    "write the Parquet with microseconds (pandas: to_parquet(..., coerce_timestamps='us', "
                    "allow_truncated_timestamps=True))")
            seen = types.setdefault(field.name, (field.type, f))
            if kind(seen[0]) != kind(field.type):
                raise BadInputError(
                    f"{what}: column {field.name!r} is {seen[0]} in {seen[1]!r} but {field.type} in {f!r}; "
                    "rewrite the files with one type per column")


def check_local_inputs(inputs: tuple[str, ...], fmt: str) -> None:
    """A missing local input (not a glob) is a usage error, found before Spark starts."""
    if fmt == "table":
        return
    for p in inputs:
        lp = local_path(p)
        if lp is not None and not any(c in lp for c in "*?[") and not os.path.exists(lp):
            raise ConfigError(f"input {p!r} does not exist")
