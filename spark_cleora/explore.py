"""What is in an embeddings output: counts, dimensions, norms, and a 2-D projection plot of a sample.

The statistics are Spark aggregates (one pass, a handful of numbers reach the driver); only the plot
sample (``sample`` rows at most) is collected. The plot is a PCA projection of that sample drawn as a
PNG by a tiny built-in writer (numpy + zlib), so no plotting library is needed.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .runtime.compat import vector_norm
from .storage.outputs import FILE_MARK
from .runtime.session import job_description

log = logging.getLogger(__name__)

UNIT_TOLERANCE = 1e-3  # |norm - 1| above this counts as "not unit length"
# Tableau-10 colours, one per input column; viridis steps for the degree deciles of a single column
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
SEQUENTIAL = ("#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58",
              "#b5de2b", "#fde725")


def summarize(emb: DataFrame) -> dict[str, Any]:
    """Counts, dimensions, norms and degrees of an embeddings table, in one Spark aggregation.

    Returns
    -------
    dict
        ``rows``, ``distinct_entities``, ``per_column`` (rows per input column), ``dim``
        (``{"min", "max"}`` of the vector lengths: equal in a healthy output), ``null_vectors``,
        ``non_finite_vectors`` (a NaN or infinity inside), ``zero_vectors``, ``norm``
        (``min``/``mean``/``max``/``stddev``), ``not_unit_length`` (rows with ``|norm - 1| > 1e-3``:
        0 unless the output is whitened) and ``degree``/``occurrences`` ranges when present.
    """
    v = F.col("embedding")
    finite = F.forall(v, lambda x: ~F.isnan(x) & (F.abs(x) < F.lit(float("inf"))))
    norm = F.when(F.size(v) > 0, vector_norm(v)).cast("double")
    good = v.isNotNull() & finite
    aggs = [
        F.count(F.lit(1)).alias("rows"),
        F.count_distinct("entity").alias("distinct_entities"),
        F.min(F.when(v.isNotNull(), F.size(v))).alias("dim_min"),
        F.max(F.when(v.isNotNull(), F.size(v))).alias("dim_max"),
        F.sum(v.isNull().cast("long")).alias("null_vectors"),
        F.sum((v.isNotNull() & ~finite).cast("long")).alias("non_finite_vectors"),
        F.sum((good & (norm == 0)).cast("long")).alias("zero_vectors"),
        F.min(F.when(good, norm)).alias("norm_min"), F.avg(F.when(good, norm)).alias("norm_mean"),
        F.max(F.when(good, norm)).alias("norm_max"), F.stddev(F.when(good, norm)).alias("norm_stddev"),
        F.sum((good & (F.abs(norm - 1) > UNIT_TOLERANCE)).cast("long")).alias("not_unit_length"),
    ]
    extra = [c for c in ("degree", "occurrences") if c in emb.columns]
    for c in extra:
        aggs += [F.min(c).alias(f"{c}_min"), F.avg(c).alias(f"{c}_mean"), F.max(c).alias(f"{c}_max")]
    with job_description(emb.sparkSession, "spark_cleora: inspect statistics"):
        row = emb.agg(*aggs).collect()[0].asDict()
        per_column: dict[str, int] = {}
        if "column" in emb.columns:
            # one row per input column (a handful), not per entity
            per_column = {str(r["column"]): int(r["count"]) for r in emb.groupBy("column").count().collect()}
    out: dict[str, Any] = {
        "rows": int(row["rows"]),
        "distinct_entities": int(row["distinct_entities"]),
        "per_column": dict(sorted(per_column.items())),
        "dim": {"min": row["dim_min"], "max": row["dim_max"]},
        "null_vectors": int(row["null_vectors"] or 0),
        "non_finite_vectors": int(row["non_finite_vectors"] or 0),
        "zero_vectors": int(row["zero_vectors"] or 0),
        "norm": {k: _num(row[f"norm_{k}"]) for k in ("min", "mean", "max", "stddev")},
        "not_unit_length": int(row["not_unit_length"] or 0),
    }
    for c in extra:
        out[c] = {k: _num(row[f"{c}_{k}"]) for k in ("min", "mean", "max")}
    return out


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


def problems(summary: dict[str, Any]) -> list[str]:
    """Human-readable findings that mean the output is not a healthy embedding table."""
    out = []
    if summary["rows"] != summary["distinct_entities"]:
        out.append(f"{summary['rows'] - summary['distinct_entities']} duplicate entity rows")
    if summary["dim"]["min"] != summary["dim"]["max"]:
        out.append(f"vector lengths differ: {summary['dim']['min']}..{summary['dim']['max']}")
    for key, what in (("null_vectors", "null vectors"), ("non_finite_vectors", "vectors with NaN/inf"),
                      ("zero_vectors", "zero vectors")):
        if summary[key]:
            out.append(f"{summary[key]} {what}")
    return out


# --------------------------------------------------------------------------------------------
# 2-D projection of a sample
# --------------------------------------------------------------------------------------------

def sample_projection(emb: DataFrame, *, sample: int = 2000, seed: int = 0, rows: int | None = None
                      ) -> dict[str, Any]:
    """PCA of (at most) ``sample`` rows onto their first two principal axes.

    Returns
    -------
    dict
        ``xy`` float64[n, 2], ``entity`` and ``group`` (the input column, or the degree decile when
        there is one column) per point, ``groups`` (group names in palette order), ``palette``
        (colours for the groups) and ``explained_variance`` (share of the sample's variance on each
        axis).
    """
    if sample < 1:
        raise ValueError(f"sample must be >= 1; got {sample}")
    n_rows = rows if rows is not None else emb.count()
    picked = emb.filter(F.col("embedding").isNotNull())
    if n_rows > sample:
        # oversample by 2x so the limit is (almost) always reached; seeded, so reruns plot the same rows
        picked = picked.sample(fraction=min(1.0, 2.0 * sample / n_rows), seed=seed)
    cols = ["entity", "embedding"] + [c for c in ("column", "degree") if c in emb.columns]
    with job_description(emb.sparkSession, "spark_cleora: inspect sample"):
        got = picked.select(*cols).orderBy(F.xxhash64("entity", F.lit(seed))).limit(sample).collect()
    x = np.asarray([r["embedding"] for r in got], dtype=np.float64).reshape(len(got), -1)
    ok = np.isfinite(x).all(axis=1)
    keep = [r for r, good in zip(got, ok) if good]
    x = x[ok]
    if len(keep) < 2:
        raise ValueError(f"need at least 2 finite vectors to project, found {len(keep)}")
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]
    if axes.shape[0] < 2:  # dim 1: a flat second axis
        axes = np.vstack([axes, np.zeros_like(axes[0])])
    total = float((s ** 2).sum()) or 1.0
    explained = [float(v ** 2 / total) for v in np.pad(s[:2], (0, max(0, 2 - len(s))))]
    xy = centred @ axes.T
    palette = PALETTE
    multi = "column" in cols and len({r["column"] for r in keep}) > 1
    if multi:
        groups = sorted({str(r["column"]) for r in keep})
        group = [str(r["column"]) for r in keep]
    elif "degree" in cols:
        deg = np.log1p(np.asarray([float(r["degree"] or 0) for r in keep]))
        edges = np.quantile(deg, np.linspace(0, 1, 11)[1:-1])
        dec = np.searchsorted(edges, deg, side="right")
        groups = [f"degree decile {i + 1}" for i in range(10)]
        group = [groups[i] for i in dec]
        palette = SEQUENTIAL
    else:
        groups, group = ["all"], ["all"] * len(keep)
    return {"xy": xy, "entity": [r["entity"] for r in keep], "group": group, "groups": groups,
            "palette": palette, "explained_variance": explained}


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def render_scatter(xy: np.ndarray, group_index: np.ndarray, *, palette: tuple[str, ...] = PALETTE,
                   size: int = 640, point: int = 2) -> np.ndarray:
    """An RGB ``uint8[size, size, 3]`` scatter plot: white background, grey frame and zero axes.

    Points are ``2 * point + 1`` pixels wide squares coloured ``palette[group_index % len(palette)]``;
    the data range is padded by 5% and the aspect ratio is kept (both axes share one scale).
    """
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    margin = 12
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2 * 1.05, 1e-12)
    scale = (size - 2 * margin - 1) / (2 * half)
    px = np.rint((xy[:, 0] - centre[0] + half) * scale).astype(int) + margin
    py = size - 1 - (np.rint((xy[:, 1] - centre[1] + half) * scale).astype(int) + margin)  # y up
    grey = np.array([170, 170, 170], dtype=np.uint8)
    img[margin, margin:size - margin] = grey
    img[size - margin - 1, margin:size - margin] = grey
    img[margin:size - margin, margin] = grey
    img[margin:size - margin, size - margin - 1] = grey
    zx = int(round((0 - centre[0] + half) * scale)) + margin
    zy = size - 1 - (int(round((0 - centre[1] + half) * scale)) + margin)
    light = np.array([225, 225, 225], dtype=np.uint8)
    if margin < zx < size - margin:
        img[margin:size - margin, zx] = light
    if margin < zy < size - margin:
        img[zy, margin:size - margin] = light
    colours = np.array([_rgb(c) for c in palette], dtype=np.uint8)
    for dx in range(-point, point + 1):
        for dy in range(-point, point + 1):
            xs = np.clip(px + dx, 0, size - 1)
            ys = np.clip(py + dy, 0, size - 1)
            img[ys, xs] = colours[group_index % len(palette)]
    return img


def write_png(path: str, img: np.ndarray) -> None:
    """Write an RGB ``uint8[h, w, 3]`` image as a PNG (8-bit truecolour, no interlace, filter 0)."""
    h, w, _ = img.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = np.hstack([np.zeros((h, 1), dtype=np.uint8), img.reshape(h, w * 3)]).tobytes()
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        # the mark that lets a rerun replace this file (spark_cleora.storage.outputs.is_tool_file)
        fh.write(chunk(b"tEXt", b"Software\x00" + FILE_MARK.encode()))
        fh.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        fh.write(chunk(b"IEND", b""))
    os.replace(tmp, path)


def plot_projection(projection: dict[str, Any], path: str, *, size: int = 640) -> dict[str, str]:
    """Draw :func:`sample_projection`'s points to ``path`` (PNG); returns the legend {group: colour}."""
    index = {g: i for i, g in enumerate(projection["groups"])}
    gi = np.asarray([index[g] for g in projection["group"]], dtype=int)
    palette = projection.get("palette", PALETTE)
    write_png(path, render_scatter(projection["xy"], gi, palette=palette, size=size))
    return {g: palette[i % len(palette)] for g, i in index.items()}
