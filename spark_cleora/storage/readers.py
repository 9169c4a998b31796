"""Reading inputs (events as Parquet, CSV/TSV or a catalog table; Cleora text) and embeddings outputs back."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import EmbedConfig
from ..errors import ConfigError
from .filesystem import exists, qualify
from .paths import check_local_inputs, check_parquet_inputs, local_path

log = logging.getLogger(__name__)


def read_table(spark: SparkSession, paths: Sequence[str], fmt: str = "parquet", *, sep: str | None = None,
               what: str = "input", keep_bytes: bool = False) -> DataFrame:
    """A table from Parquet, CSV/TSV with a header row (:func:`read_csv`; ``sep`` overrides the format's
    separator), or a catalog table (``paths[0]`` is its name): the one reader of event tables (embed,
    fold-in, EMDE, the evaluations).

    ``keep_bytes``: CSV values keep invalid UTF-8 as it is, for the embed rules to count (embed, fold-in);
    without it they hold U+FFFD instead, as strings must for the Python steps of EMDE and the evaluations.

    Missing local inputs are a :class:`ConfigError`; local Parquet files Spark cannot read as one table a
    :class:`~spark_cleora.errors.BadInputError` (see :func:`check_parquet_inputs`), before Spark reads them.
    """
    if not paths:
        raise ConfigError("no input given")
    if fmt == "table":
        return spark.read.table(paths[0])
    paths = qualified_inputs(spark, paths)  # scheme-less: on the session's default filesystem
    check_local_inputs(paths, fmt)
    if fmt == "parquet":
        check_parquet_inputs(paths, what)
        return spark.read.parquet(*paths)
    return read_csv(spark, paths, sep=sep or ("\t" if fmt == "tsv" else ","), keep_bytes=keep_bytes)


def qualified_inputs(spark: SparkSession, paths: Sequence[str]) -> tuple[str, ...]:
    """Input paths as Spark resolves them (see :func:`spark_cleora.storage.filesystem.qualify`): a scheme-less
    path on a non-local default filesystem is not looked for on the driver's disk."""
    return tuple(qualify(spark, p) for p in paths)


def read_events(spark: SparkSession, cfg: EmbedConfig) -> DataFrame:
    """The event table of an embedding run (``cfg.inputs`` in ``cfg.input_format``), see :func:`read_table`."""
    return read_table(spark, cfg.inputs, cfg.input_format, sep=cfg.csv_delimiter, what="events", keep_bytes=True)


def require_columns(df: DataFrame, columns: Sequence[str | None], what: str) -> None:
    """A :class:`ConfigError` naming the columns (None entries: not asked for) ``df`` does not have."""
    missing = [c for c in columns if c and c not in df.columns]
    if missing:
        raise ConfigError(f"{what} has no column(s) {missing}; it has {df.columns}")


#: the charset the CSV files are decoded with: one character per byte, so every byte survives (see read_csv)
_BYTES = "ISO-8859-1"


def read_csv(spark: SparkSession, paths: Sequence[str], *, sep: str = ",", keep_bytes: bool = True) -> DataFrame:
    """CSV/TSV files with a header row, as RFC 4180 reads them, every value a string holding the file's bytes.

    * Quoting (RFC 4180): a quoted field may hold the separator, a newline (kept in the value) and a
      doubled quote (``"q""uote"`` is ``q"uote``); a backslash is an ordinary character. Quoted newlines
      make each file one task (``multiLine``): a line break cannot be found without reading from the start.
    * Encoding: the files are UTF-8, but Spark's UTF-8 decoding would turn every invalid byte sequence into
      U+FFFD, silently merging ``a\\xff`` and ``a\\xfe``. So they are decoded byte for byte (ISO-8859-1, in
      which the separator, quote and newline are the same bytes as in UTF-8) and each value is turned back
      into its bytes and read as UTF-8 without replacement: valid values are exactly the UTF-8 text, an
      invalid one stays invalid, and the events rules count it as ``invalid_utf8`` (a genuine U+FFFD in the
      file is valid and kept). The header's names are decoded the same way (a UTF-8 byte-order mark is
      dropped). With ``keep_bytes=False`` the values are Spark's UTF-8 decoding instead (invalid sequences
      become U+FFFD), for steps that need valid strings.
    """
    if not keep_bytes:
        raw = (spark.read.option("header", "true").option("sep", sep).option("quote", '"').option("escape", '"')
               .option("multiLine", "true").option("mode", "PERMISSIVE").csv(list(paths)))
        first = raw.columns[0] if raw.columns else ""
        return raw.withColumnRenamed(first, first.removeprefix("\ufeff")) if first.startswith("\ufeff") else raw
    raw = (spark.read.option("header", "true").option("sep", sep.encode("utf-8").decode(_BYTES)).option("encoding", _BYTES)
           .option("quote", '"').option("escape", '"').option("multiLine", "true").option("mode", "PERMISSIVE")
           .csv(list(paths)))
    out = []
    for i, name in enumerate(raw.columns):
        try:
            real = name.encode(_BYTES).decode("utf-8")
        except UnicodeError:
            raise ConfigError(f"CSV header column {i + 1} ({name!r}) is not valid UTF-8") from None
        if i == 0:
            real = real.removeprefix("\ufeff")
        out.append(F.encode(F.col(f"`{name.replace('`', '``')}`"), _BYTES).cast("string").alias(real))
    return raw.select(*out)


def read_cleora_text(spark: SparkSession, cfg: EmbedConfig) -> DataFrame:
    """Cleora's text input: one line = one hyperedge (``value`` column)."""
    if not cfg.inputs:
        raise ConfigError("no input given")
    inputs = qualified_inputs(spark, cfg.inputs)
    check_local_inputs(inputs, "cleora-tsv")
    return spark.read.option("lineSep", "\n").text(list(inputs))


# --------------------------------------------------------------------------------------------
# Reading an embeddings output back (similar, inspect, notebooks)
# --------------------------------------------------------------------------------------------

EMBEDDING_COLUMNS = ("entity", "embedding")


def read_embeddings(spark: SparkSession, source: str) -> DataFrame:
    """The Parquet output of ``spark-cleora embed`` (a directory or a path URI), or a catalog table.

    ``source`` is read as a table when it is not an existing local path and looks like a table name
    (``db.table`` or ``catalog.db.table``); npy/cleora-text exports are refused with the fix.
    """
    from pyspark.errors import AnalysisException

    if "/" in source or not _looks_like_table(source):
        source = qualify(spark, source)
    elif qualify(spark, source) != source and exists(spark, qualify(spark, source)):
        source = qualify(spark, source)  # a relative directory on the default filesystem, not a table
    lp = local_path(source)
    if lp is not None and not os.path.exists(lp):
        if not _looks_like_table(source):
            raise ConfigError(f"embeddings {source!r} do not exist")
        try:
            df = spark.read.table(source)
            df.columns  # Connect resolves lazily: make a missing table fail here
        except AnalysisException as exc:
            raise ConfigError(f"embeddings {source!r}: no such directory or table") from exc
    else:
        if lp is not None and (os.path.exists(os.path.join(lp, "embeddings.npy"))
                               or glob.glob(os.path.join(glob.escape(lp), "emb__*.out"))):
            raise ConfigError(f"{source!r} is an npy/cleora-text export; point at the Parquet output "
                              "(spark-cleora embed --output-format parquet)")
        df = spark.read.parquet(source)
    missing = [c for c in EMBEDDING_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"{source!r} has no column(s) {missing}; expected the embed output "
                          "(entity, column, degree, occurrences, embedding)")
    return df


def _looks_like_table(name: str) -> bool:
    parts = name.split(".")
    return "/" not in name and 1 <= len(parts) <= 3 and all(p.replace("_", "").isalnum() for p in parts if p)
