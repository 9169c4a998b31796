"""Customer sketches: the decayed sum of their events' one-hot item codes (``emde sketch``).

A sketch is stored sparse -- ascending bucket ids ``idx`` and raw (un-normalised) sums ``val`` -- so it
stays additive: the sketch of A u B is the sum of both, and a sketch at a later ``as_of`` is the
earlier one times ``0.5 ** (dt / half_life)`` plus the newer events (``--previous``). Normalisation
happens when scoring.

Events are validated and every rejected row is counted by rule (null customer/item, unreadable
timestamp, after ``as_of``, already in ``--previous``, item without codes). Null, NaN, infinite,
negative or too large (> 1e18, :data:`spark_cleora.engine.hyperedges.MAX_WEIGHT`) weights stop the job with a
clear error instead: a sketch must be a non-negative, finite float32 sum.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..runtime.compat import try_double
from ..errors import BadInputError, ConfigError
from ..runtime.session import job_description, step
from ..engine.hyperedges import MAX_WEIGHT, epoch_seconds
from .coder import read_codes
from .config import SketchConfig
from .store import join, read_meta, write_output
from ..storage.readers import read_table, require_columns

log = logging.getLogger(__name__)

ITEMS = "_items"  # per-item event counts and weights of the sketched events (the item popularity)
REASONS = ("null_customer", "null_item", "bad_timestamp", "after_as_of", "before_previous", "unknown_item",
           "bad_weight")


@dataclass
class SketchResult:
    """Lazy sketch and item-popularity tables, and the validation counts."""

    sketches: DataFrame
    items: DataFrame
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class Previous:
    """An earlier sketch table to refresh (``--previous``)."""

    sketches: DataFrame
    items: DataFrame
    meta: dict[str, Any]


def parse_as_of(spark: SparkSession, value: str | float | int | None) -> float | None:
    """``--as-of`` as epoch seconds: a number, or a timestamp string read in the session time zone."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        out = float(value)
    else:
        try:
            out = float(value)
        except ValueError:
            row = spark.range(1).select((F.unix_micros(F.try_to_timestamp(F.lit(str(value)))) / 1e6).alias("t")).collect()
            if row[0]["t"] is None:
                raise ConfigError(f"--as-of {value!r} is neither epoch seconds nor a timestamp") from None
            out = float(row[0]["t"])
    if not math.isfinite(out):
        raise ConfigError(f"--as-of must be finite; got {value!r}")
    return out


def _finite(c: Column) -> Column:
    return c.isNotNull() & ~F.isnan(c) & (F.abs(c) != float("inf"))


def decay_factor(anchor: Column, t: Column, half_life: float | None) -> Column:
    """``0.5 ** ((anchor - t) / half_life)``, or 1 without a half-life."""
    return F.lit(1.0) if half_life is None else F.pow(F.lit(0.5), (anchor - t) / F.lit(half_life))


def build_sketches(
    events: DataFrame,
    codes: DataFrame,
    *,
    customer: str,
    item: str,
    timestamp: str | None = None,
    weight: str | None = None,
    half_life: float | None = None,
    as_of: float | None = None,
    decay_anchor: str = "as-of",
    previous: Previous | None = None,
) -> SketchResult:
    """Sketch every customer of ``events`` with the item ``codes`` (``item``, ``codes`` columns).

    Parameters
    ----------
    events
        One row per event; ``customer`` and ``item`` columns (cast to string), optional
        ``timestamp`` (epoch seconds, timestamp, or a string of either) and ``weight``.
    codes
        The coder's item codes (:func:`spark_cleora.emde.coder.read_codes`).
    half_life, as_of, decay_anchor
        See :class:`spark_cleora.emde.config.SketchConfig`; ``as_of`` in epoch seconds.
    previous
        Earlier sketches to decay to ``as_of`` and extend with the newer events only.

    Returns
    -------
    SketchResult
        ``sketches``: customer, idx (ascending), val (float), as_of (epoch seconds of the decay
        anchor), n_events; ``items``: item, n_events, weight (undecayed); ``report``: counts.
    """
    require_columns(events, [customer, item, timestamp, weight], "events")
    if (half_life is not None or as_of is not None or previous is not None) and not timestamp:
        raise ConfigError("decay, --as-of and --previous need a timestamp column")
    spark = events.sparkSession
    t_col = epoch_seconds(events, timestamp) if timestamp else F.lit(None).cast("double")
    if weight is None:
        w_col = F.lit(1.0)
    elif isinstance(events.schema[weight].dataType, T.StringType):
        w_col = try_double(weight)
    else:
        w_col = F.col(weight).cast("double")
    ev = events.select(F.col(customer).cast("string").alias("c"), F.col(item).cast("string").alias("i"),
                       t_col.alias("t"), w_col.alias("w"))

    prev_cutoff = previous.meta.get("cutoff") if previous is not None else None
    report: dict[str, Any] = {}
    if timestamp and as_of is None:
        with job_description(spark, "spark_cleora emde sketch: newest event"):
            newest = ev.filter(F.col("c").isNotNull() & F.col("i").isNotNull() & _finite(F.col("t"))) \
                .agg(F.max("t")).collect()[0][0]
        known = [x for x in (newest, prev_cutoff) if x is not None]
        if not known:
            raise BadInputError(f"no event has a readable timestamp in column {timestamp!r}")
        as_of = max(known)
    if prev_cutoff is not None and as_of is not None and as_of < prev_cutoff:
        raise ConfigError(f"--as-of {as_of} is before the previous sketches' as-of {prev_cutoff}")

    reason = F.when(F.col("c").isNull(), "null_customer").when(F.col("i").isNull(), "null_item")
    if timestamp:
        reason = reason.when(~_finite(F.col("t")), "bad_timestamp")
    if as_of is not None:
        reason = reason.when(F.col("t") > F.lit(as_of), "after_as_of")
    if prev_cutoff is not None:
        reason = reason.when(F.col("t") <= F.lit(prev_cutoff), "before_previous")
    # Weights matter only for events that are sketched, so they are checked last.
    reason = reason.when(F.col("codes").isNull(), "unknown_item") \
        .when(~_finite(F.col("w")) | (F.col("w") < 0) | (F.col("w") > MAX_WEIGHT), "bad_weight")
    classified = ev.join(codes.select(F.col("item").alias("i"), "codes"), "i", "left") \
        .withColumn("reason", reason).drop("codes")

    with step(spark, "spark_cleora emde sketch: validate events", log):
        counts = {r["reason"]: int(r["n"]) for r in classified.groupBy("reason").agg(F.count(F.lit(1)).alias("n")).collect()}
    accepted_n = counts.pop(None, 0)
    report.update(input_rows=accepted_n + sum(counts.values()), accepted=accepted_n,
                  rejected={k: counts[k] for k in REASONS if counts.get(k)}, as_of=as_of)
    if counts.get("bad_weight"):
        first = classified.filter(F.col("reason") == "bad_weight").select("c", "i", "w").limit(1).collect()[0]
        raise BadInputError(
            f"{counts['bad_weight']} events have a null, NaN, infinite or negative weight, or one above {MAX_WEIGHT:g}, "
            f"in column {weight!r} "
            f"(first: customer {first['c']!r}, item {first['i']!r}, weight {first['w']!r}); sketches are "
            "non-negative sums -- fix or filter the weights")
    if accepted_n == 0 and previous is None:
        raise BadInputError(f"no events left to sketch after validation (rejected: {report['rejected']})")
    for k, v in report["rejected"].items():
        log.warning("emde sketch: %d events rejected (%s)", v, k)
    accepted = classified.filter(F.col("reason").isNull()).select("c", "i", "t", "w")

    # The decay anchor per customer: as_of for everyone, or each customer's newest event.
    anchors = None
    if decay_anchor == "last-event":
        anchors = accepted.groupBy("c").agg(F.max("t").alias("anchor"))
        if previous is not None:
            anchors = anchors.unionByName(previous.sketches.select(F.col("customer").alias("c"), F.col("as_of").alias("anchor"))) \
                .groupBy("c").agg(F.max("anchor").alias("anchor"))
        accepted = accepted.join(anchors, "c")
        anchor = F.col("anchor")
    else:
        anchor = F.lit(as_of).cast("double")

    per_pair = accepted.groupBy("c", "i").agg(
        F.count(F.lit(1)).alias("n"), F.sum(F.col("w") * decay_factor(anchor, F.col("t"), half_life)).alias("s"))
    new_parts = per_pair.join(codes.select(F.col("item").alias("i"), "codes"), "i") \
        .select("c", F.posexplode("codes").alias("pos", "idx"), F.col("s").alias("v"),
                F.when(F.col("pos") == 0, F.col("n")).otherwise(F.lit(0)).alias("n"))
    parts = new_parts.select("c", "idx", "v", "n")
    items = accepted.groupBy(F.col("i").alias("item")).agg(F.count(F.lit(1)).alias("n_events"), F.sum("w").alias("weight"))
    if previous is not None:
        prev = previous.sketches.select(F.col("customer").alias("c"), "as_of", "n_events",
                                        F.posexplode(F.arrays_zip("idx", "val")).alias("pos", "e"))
        if anchors is not None:
            prev = prev.join(anchors, "c")
        prev_anchor = F.col("anchor") if anchors is not None else F.lit(as_of).cast("double")
        prev_parts = prev.select(
            "c", F.col("e.idx").alias("idx"),
            (F.col("e.val").cast("double") * decay_factor(prev_anchor, F.col("as_of"), half_life)).alias("v"),
            F.when(F.col("pos") == 0, F.col("n_events")).otherwise(F.lit(0)).alias("n"))
        parts = parts.unionByName(prev_parts)
        items = items.unionByName(previous.items.select("item", "n_events", "weight")) \
            .groupBy("item").agg(F.sum("n_events").alias("n_events"), F.sum("weight").alias("weight"))

    per_bucket = parts.groupBy("c", "idx").agg(F.sum("v").alias("v"), F.sum("n").alias("n"))
    sk = per_bucket.groupBy("c").agg(F.sort_array(F.collect_list(F.struct("idx", "v"))).alias("e"),
                                     F.sum("n").alias("n_events"))
    if anchors is not None:
        sk = sk.join(anchors, "c")
        as_of_col = F.col("anchor")
    else:
        as_of_col = F.lit(as_of).cast("double")
    sketches = sk.select(
        F.col("c").alias("customer"),
        F.transform("e", lambda x: x["idx"]).alias("idx"),
        F.transform("e", lambda x: x["v"].cast("float")).alias("val"),
        as_of_col.alias("as_of"),
        F.col("n_events").cast("long").alias("n_events"),
    )
    return SketchResult(sketches=sketches, items=items, report=report)


def read_sketches(spark: SparkSession, path: str) -> tuple[DataFrame, dict[str, Any]]:
    """A sketch table and its manifest."""
    meta = read_meta(spark, path, "sketches")
    return spark.read.parquet(path), meta


def read_items(spark: SparkSession, path: str) -> DataFrame:
    """The item popularity (``item``, ``n_events``, ``weight``) stored with a sketch table."""
    return spark.read.parquet(join(path, ITEMS))


def run_sketch(spark: SparkSession, cfg: SketchConfig) -> dict[str, Any]:
    """The ``emde sketch`` job; returns the manifest written with the sketches."""
    t0 = time.perf_counter()
    if not cfg.coder or not cfg.output:
        raise ConfigError("--coder CODER and --output DIR are required")
    coder_meta = read_meta(spark, cfg.coder, "coder")
    previous = None
    if cfg.previous:
        prev_sk, prev_meta = read_sketches(spark, cfg.previous)
        _check_previous(prev_meta, coder_meta, cfg)
        previous = Previous(prev_sk, read_items(spark, cfg.previous), prev_meta)
    events = read_table(spark, cfg.events, cfg.events_format)
    res = build_sketches(events, read_codes(spark, cfg.coder), customer=cfg.customer or "", item=cfg.item or "",
                         timestamp=cfg.timestamp, weight=cfg.weight, half_life=cfg.half_life,
                         as_of=parse_as_of(spark, cfg.as_of), decay_anchor=cfg.decay_anchor, previous=previous)

    def write(staging: str) -> dict[str, Any]:
        with step(spark, "spark_cleora emde sketch: write sketches", log):
            res.sketches.write.parquet(staging)
            res.items.write.parquet(join(staging, ITEMS))
            written = spark.read.parquet(staging).agg(
                F.count(F.lit(1)).alias("customers"),
                F.sum(F.when(F.array_max("val") <= 0, 1).otherwise(0)).alias("zero"),
                F.sum("n_events").alias("n_events"), F.avg(F.size("idx")).alias("nnz")).collect()[0]
        return {
            "kind": "sketches", "coder_id": coder_meta["coder_id"], "coder": cfg.coder,
            "width": coder_meta["width"], "n_codes": coder_meta["n_codes"], "length": coder_meta["length"],
            "half_life": cfg.half_life, "decay_anchor": cfg.decay_anchor, "cutoff": res.report["as_of"],
            "columns": {"customer": cfg.customer, "item": cfg.item, "timestamp": cfg.timestamp, "weight": cfg.weight},
            "events": list(cfg.events), "previous": cfg.previous, **res.report,
            "customers": int(written["customers"]), "customers_all_zero": int(written["zero"] or 0),
            "sketched_events": int(written["n_events"] or 0), "mean_nonzeros": float(written["nnz"] or 0.0),
        }

    manifest = write_output(spark, cfg.output, write)
    manifest["seconds_total"] = round(time.perf_counter() - t0, 3)
    if manifest["customers_all_zero"]:
        log.warning("%d customers have an all-zero sketch (their events decayed below float32 range); "
                    "use a longer --half-life or --decay-anchor last-event", manifest["customers_all_zero"])
    return manifest


def _check_previous(prev: dict[str, Any], coder_meta: dict[str, Any], cfg: SketchConfig) -> None:
    """Refuse to extend sketches that were made differently (coder, decay, columns)."""
    if prev["coder_id"] != coder_meta["coder_id"]:
        raise ConfigError(f"--previous sketches were built with coder {prev['coder_id']}, not {coder_meta['coder_id']}"
                          " (codes differ; rebuild from all events)")
    if prev.get("half_life") != cfg.half_life or prev.get("decay_anchor") != cfg.decay_anchor:
        raise ConfigError(f"--previous sketches use half-life {prev.get('half_life')} / anchor "
                          f"{prev.get('decay_anchor')}; this run asks for {cfg.half_life} / {cfg.decay_anchor}")
    if prev.get("cutoff") is None:
        raise ConfigError("--previous sketches have no as-of (they were built without timestamps)")
    if prev.get("columns", {}).get("weight") != cfg.weight:
        raise ConfigError(f"--previous sketches used weight column {prev['columns'].get('weight')!r}, not {cfg.weight!r}")
