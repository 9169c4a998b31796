"""What is in an embeddings output: counts, dimensions, norms, and a 2-D projection plot of a sample.

The statistics are Spark aggregates (one pass, a handful of numbers reach the driver); only the plot
sample (``sample`` rows at most) is collected. The plot is a PCA projection of that sample drawn with
matplotlib (the optional ``plot`` extra).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .runtime.compat import vector_norm
from .errors import BadInputError, ConfigError, MissingExtraError
from .storage.outputs import FILE_MARK
from .runtime.session import job_description

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

UNIT_TOLERANCE = 1e-3  # |norm - 1| above this counts as "not unit length"
# Tableau-10 colours, one per input column; viridis steps for the degree deciles of a single column
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
PLOT_DPI = 120  # 10 x 7.5 inches: a 1200 x 900 PNG
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
        (colours for the groups), ``colour_by`` (what the groups are) and ``explained_variance``
        (share of the sample's variance on each axis).
    """
    if sample < 1:
        raise ConfigError(f"sample must be >= 1; got {sample}")
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
        raise BadInputError(f"need at least 2 finite vectors to project, found {len(keep)}")
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
        colour_by = "input column"
    elif "degree" in cols:
        deg = np.log1p(np.asarray([float(r["degree"] or 0) for r in keep]))
        edges = np.quantile(deg, np.linspace(0, 1, 11)[1:-1])
        dec = np.searchsorted(edges, deg, side="right")
        groups = [f"degree decile {i + 1}" for i in range(10)]
        group = [groups[i] for i in dec]
        palette, colour_by = SEQUENTIAL, "degree decile (1 = lowest)"
    else:
        groups, group, colour_by = ["all"], ["all"] * len(keep), "rows"
    return {"xy": xy, "entity": [r["entity"] for r in keep], "group": group, "groups": groups,
            "palette": palette, "colour_by": colour_by, "explained_variance": explained}


PLOT_INSTALL = "pip install 'spark-cleora[plot]'"


def require_matplotlib() -> None:
    """Stop with the install command (exit code 2) when matplotlib, the ``plot`` extra, is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtraError(f"--plot draws with matplotlib, which is not installed: {PLOT_INSTALL}") from None


def draw_projection(projection: dict[str, Any], *, source: str | None = None) -> Figure:
    """:func:`sample_projection`'s points as a matplotlib figure (no file written, no pyplot state).

    Title (the number of points and, when given, the ``source``), axes labelled with the share of the
    sample's variance each principal axis explains, one colour per group with its legend, equal
    scales on both axes, and fonts large enough for a slide.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    groups, palette = projection["groups"], projection.get("palette", PALETTE)
    xy, group = np.asarray(projection["xy"]), np.asarray(projection["group"], dtype=object)
    ev = projection["explained_variance"]
    fig = Figure(figsize=(10, 7.5), dpi=PLOT_DPI, layout="constrained")
    ax = fig.add_subplot()
    for i, g in enumerate(groups):
        pts = xy[group == g]
        ax.scatter(pts[:, 0], pts[:, 1], s=14, alpha=0.75, linewidths=0, color=palette[i % len(palette)],
                   label=f"{g} ({len(pts)})")
    title = f"PCA of {len(xy):,} sampled embeddings"
    ax.set_title(title + (f"\n{source}" if source else ""), fontsize=16)
    ax.set_xlabel(f"PC 1 ({ev[0]:.1%} of the variance)", fontsize=14)
    ax.set_ylabel(f"PC 2 ({ev[1]:.1%} of the variance)", fontsize=14)
    ax.tick_params(labelsize=12)
    ax.axhline(0, color="0.85", linewidth=0.8, zorder=0)
    ax.axvline(0, color="0.85", linewidth=0.8, zorder=0)
    ax.set_aspect("equal", adjustable="datalim")  # both axes on one scale: distances read true
    ax.legend(title=projection.get("colour_by"), fontsize=12, title_fontsize=12, markerscale=2, frameon=False,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def legend_colours(projection: dict[str, Any]) -> dict[str, str]:
    """``{group: colour}`` of :func:`draw_projection`."""
    palette = projection.get("palette", PALETTE)
    return {g: palette[i % len(palette)] for i, g in enumerate(projection["groups"])}


def plot_projection(projection: dict[str, Any], path: str, *, source: str | None = None) -> Figure:
    """Draw :func:`sample_projection`'s points to the PNG ``path`` (replaced atomically); returns the figure."""
    fig = draw_projection(projection, source=source)
    tmp = f"{path}.tmp-{os.getpid()}"
    # the mark that lets a rerun replace this file (spark_cleora.storage.outputs.is_tool_file): a tEXt chunk
    fig.savefig(tmp, format="png", metadata={"Software": FILE_MARK})
    os.replace(tmp, path)
    return fig
