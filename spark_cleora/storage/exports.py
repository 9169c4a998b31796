"""Exports for Cleora's tools: single files (npy, Cleora text), streamed through the driver without holding
the data."""

from __future__ import annotations

import json
import os

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..config import ConfigError
from .paths import local_path


def _require_local(target: str, fmt: str) -> str:
    lp = local_path(target)
    if lp is None:
        raise ConfigError(f"--output-format {fmt} writes single files through the driver; use a local "
                          f"--output path (got {target!r}) or parquet")
    os.makedirs(lp, exist_ok=True)
    return lp


def export_npy(emb: DataFrame, target: str, *, dim: int, n_rows: int) -> None:
    """``embeddings.npy`` (float32 [n, dim]) + ``entities.json`` (row names) + ``degrees.npy``.

    Rows are streamed with ``toLocalIterator`` into a memory-mapped file, so the driver never holds the
    matrix.
    """
    lp = _require_local(target, "npy")
    mat = np.lib.format.open_memmap(os.path.join(lp, "embeddings.npy"), mode="w+", dtype=np.float32,
                                    shape=(n_rows, dim))
    deg = np.lib.format.open_memmap(os.path.join(lp, "degrees.npy"), mode="w+", dtype=np.float32,
                                    shape=(n_rows,))
    with open(os.path.join(lp, "entities.json"), "w", encoding="utf-8") as names, \
         open(os.path.join(lp, "columns.json"), "w", encoding="utf-8") as cols:
        names.write("[")
        cols.write("[")
        i = 0
        for row in emb.orderBy("entity").select("entity", "column", "degree", "embedding").toLocalIterator():
            sep = "," if i else ""
            names.write(sep + json.dumps(row["entity"], ensure_ascii=False))
            cols.write(sep + json.dumps(row["column"], ensure_ascii=False))
            mat[i] = row["embedding"]
            deg[i] = row["degree"]
            i += 1
        names.write("]\n")
        cols.write("]\n")
    if i != n_rows:
        raise RuntimeError(f"npy export wrote {i} rows, expected {n_rows}")
    mat.flush()
    deg.flush()


#: characters that end a name in Cleora's text format (Unicode White_Space, as Rust's split_whitespace)
NAME_BREAKS = r"\p{IsWhite_Space}"


def export_cleora_text(emb: DataFrame, target: str, *, dim: int, n_rows: int, file_name: str) -> None:
    """Cleora 1 text layout: a header ``N D``, then ``name occurrences v_1 … v_D`` per line.

    The format has no quoting, so a name containing whitespace (:data:`NAME_BREAKS`) is refused with a
    :class:`ConfigError` (the staging directory is discarded; nothing is replaced).

    Lines are formatted on the executors (shortest round-trip float32, like Cleora's ryu) and streamed
    to one file on the driver.
    """
    lp = _require_local(target, "cleora-text")
    fmt = F.udf(lambda v: " ".join(str(np.float32(x)) for x in v), "string")
    lines = emb.orderBy("entity").select(
        F.concat_ws(" ", "entity", F.col("occurrences").cast("long").cast("string"), fmt("embedding")).alias("l"),
        F.col("entity").rlike(NAME_BREAKS).alias("bad"), "entity",
    )
    with open(os.path.join(lp, file_name), "w", encoding="utf-8") as fh:
        fh.write(f"{n_rows} {dim}\n")
        for row in lines.toLocalIterator():
            if row["bad"]:  # the format has no escape: such a name would read back as other fields or lines
                raise ConfigError(f"entity {row['entity']!r} contains whitespace, which the cleora-text format "
                                  "cannot hold (names and values are separated by spaces, rows by newlines); "
                                  "use --output-format parquet or npy")
            fh.write(row["l"] + "\n")
