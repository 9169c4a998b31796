"""Reading EMDE inputs and writing EMDE outputs with their manifest, atomically.

Every EMDE output directory carries its manifest twice: as a one-row Parquet table ``_emde`` (read
through Spark, so it works on any filesystem a cluster can reach) and, on local paths, as JSON for
people (``manifest.json`` in a coder, ``_manifest.json`` beside Parquet data, which Spark skips).
``_emde`` is written after the data, so on object stores (no atomic rename) it marks completion.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from ..errors import ConfigError
from ..storage.outputs import guarded_dir, mark_output, write_atomically, write_json
from ..storage.filesystem import active_session, path_state, qualify, qualify_fields
from ..storage.paths import local_path
from .._version import __version__
from ..storage.readers import read_table, require_columns

log = logging.getLogger(__name__)

META = "_emde"
FORMAT_VERSION = 1


def join(base: str, *parts: str) -> str:
    """Join path parts of a local path or a URI (``s3a://b/x`` + ``codes``)."""
    return "/".join([base.rstrip("/"), *parts])


def write_meta(spark: SparkSession, directory: str, meta: dict[str, Any], *, json_name: str) -> None:
    meta = {**meta, "format_version": FORMAT_VERSION, "spark_cleora_version": __version__,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    text = json.dumps(meta, sort_keys=True, default=str)
    spark.createDataFrame([(text,)], "manifest string").coalesce(1).write.mode("overwrite").parquet(
        join(directory, META))
    lp = local_path(directory)
    if lp is not None:
        write_json(os.path.join(lp, json_name), meta)


def read_meta(spark: SparkSession | None, directory: str, kind: str) -> dict[str, Any]:
    """The manifest of an EMDE output of ``kind`` (coder, sketches, ...), or a clear error.

    ``spark`` may be None for a local output: its manifest is then read without a session.
    """
    if spark is not None:  # scheme-less: on the session's default filesystem
        directory = qualify(spark, directory)
    lp = local_path(directory)
    if lp is not None and not os.path.isdir(os.path.join(lp, META)):
        raise ConfigError(f"{directory!r} is not a complete EMDE {kind} output (no {META} manifest)")
    try:
        if lp is not None:
            # a local output: its one row without a Spark job (and without Spark's warning "All paths
            # were ignored", which a directory named "_..." draws although Spark reads it)
            import pyarrow.parquet as pq

            rows = pq.read_table(os.path.join(lp, META)).to_pylist()
        else:
            rows = spark.read.parquet(join(directory, META)).collect()
    except Exception as exc:  # AnalysisException: path does not exist
        raise ConfigError(f"{directory!r} is not a complete EMDE {kind} output ({exc.__class__.__name__})") from exc
    meta = json.loads(rows[0]["manifest"])
    if meta.get("kind") != kind:
        raise ConfigError(f"{directory!r} holds EMDE {meta.get('kind')!r}, expected {kind!r}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ConfigError(f"{directory!r} was written by a newer spark_cleora (format {meta['format_version']})")
    return meta


def write_output(spark: SparkSession, target: str, write_data: Callable[[str], dict[str, Any]], *,
                 json_name: str = "_manifest.json") -> dict[str, Any]:
    """Write data with ``write_data(staging) -> manifest``, then the manifest, then ``_SUCCESS``,
    all into a staging directory renamed into place (see :func:`spark_cleora.storage.outputs.write_atomically`)."""
    out: dict[str, Any] = {}
    target = qualify(spark, target)

    def write(staging: str) -> None:
        meta = write_data(staging)
        write_meta(spark, staging, meta, json_name=json_name)
        mark_output(staging, f"emde-{meta.get('kind', 'output')}")
        lp = local_path(staging)
        if lp is not None:
            with open(os.path.join(lp, "_SUCCESS"), "w", encoding="utf-8"):
                pass
        out.update(meta)

    write_atomically(target, write)
    return out


#: the config fields that name inputs of an EMDE step (paths no output may touch)
INPUT_FIELDS = ("embeddings", "events", "coder", "previous", "sketches", "candidates", "queries", "model",
                "examples", "customer_features")


def input_paths(cfg: Any) -> list[str]:
    """The input paths of an EMDE step's config (events given as table names are not paths)."""
    out: list[str] = []
    for name in INPUT_FIELDS:
        value = getattr(cfg, name, None)
        if not value or (name == "events" and getattr(cfg, "events_format", "parquet") == "table"):
            continue
        out.extend([value] if isinstance(value, str) else list(value))
    return out


@contextlib.contextmanager
def guarded_output(cfg: Any) -> Iterator[None]:
    """Check the step's ``--output`` (before Spark starts) and hold its lock while the step runs."""
    if not getattr(cfg, "output", None):
        yield
        return
    with guarded_dir(cfg.output, inputs=input_paths(cfg)):
        yield


#: the config fields of an EMDE step that are paths besides its inputs
OUTPUT_FIELDS = ("output", "work_dir")


def qualified_config(spark: SparkSession, cfg: Any) -> Any:
    """An EMDE step's config with its paths as Spark resolves them (see
    :func:`spark_cleora.storage.filesystem.qualify`); events given as table names stay names."""
    table = getattr(cfg, "events_format", "parquet") == "table"
    fields = [f for f in (*INPUT_FIELDS, *OUTPUT_FIELDS) if hasattr(cfg, f)]
    return qualify_fields(spark, cfg, fields, skip=("events",) if table else ())


def refuse_existing(target: str, *, overwrite: bool, what: str) -> None:
    """Refuse to replace an existing output unless asked to (codes must never change silently)."""
    lp = local_path(target)
    if overwrite:
        return
    if lp is None:
        spark = active_session()
        taken = spark is not None and path_state(spark, target) == "dir"
    else:
        taken = os.path.exists(lp) and bool(os.listdir(lp))
    if taken:
        raise ConfigError(f"{what} {target!r} already exists; refit into a new directory or pass --overwrite "
                          "(sketches built with the old coder can then no longer be scored)")


def read_candidates(spark: SparkSession, path: str) -> DataFrame:
    """The ``--candidates`` items (an ``item`` column): Parquet, or CSV/TSV by the file's extension."""
    ext = os.path.splitext(path.rstrip("/"))[1].lower()
    fmt = {".csv": "csv", ".tsv": "tsv"}.get(ext, "parquet")
    df = read_table(spark, [path], fmt)
    require_columns(df, ["item"], f"candidates {path!r}")
    return df
