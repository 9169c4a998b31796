"""Training examples and prediction inputs of the EMDE model, built on Spark (``emde examples``).

For a customer's events ordered by time, the example of a target event j sees only the events
strictly earlier than ``t_j`` (events at the same second as the target are not inputs):

* ``long``: every earlier event, weighted ``w * 0.5 ** ((anchor - t) / half_life)``;
* ``short``: the session of the newest earlier event (events chained by gaps <= ``session_gap``),
  or the newest ``recent`` earlier events, with the same weights -- the paper's two-sketch input;
* ``tgt``: the target item's codes (with ``target_window`` > 1 also the next items, weighted
  ``0.5 ** ((t_k - t_j) / half_life)``).

The anchor is the newest input event (``last-event``, the paper's session decay) or the target's
time (``as-of``); at prediction time it is the customer's newest event or ``--as-of``, so inputs are
built by the same function in both cases (:func:`customer_rows`). The context time of an example
(hour of day, day of week) is its anchor. Event features come from the newest input event.

Validation split by time: targets at or after the ``1 - validation_fraction`` quantile of event
times are validation examples; a training example's target (and target window) lies strictly
before that cut, so nothing of the validation period reaches training.

All of it runs per customer inside Spark tasks (``groupBy(customer).applyInArrow``, or its Spark 3.5 form): a running dense
sketch per customer, so the cost is linear in events (plus one sparse row per example written).
Sketches are stored raw and sparse (``*_idx`` ascending, ``*_val``); normalisation happens in the
network's input layer (:mod:`spark_cleora.emde.features`).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..runtime.compat import grouped_arrow, try_double
from ..errors import BadInputError, ConfigError
from ..runtime.session import job_description
from ..engine.hyperedges import epoch_seconds
from ..storage.readers import require_columns

log = logging.getLogger(__name__)

SKETCHES = ("long", "short", "tgt")
TRAIN, VALID = "train", "val"


@dataclass(frozen=True)
class InputSpec:
    """How inputs and targets are built; saved in the model so prediction builds them the same way."""

    length: int
    half_life: float | None = None
    session_gap: float | None = None
    recent: int = 1
    target_window: int = 1
    decay_anchor: str = "last-event"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _decay(dt: np.ndarray | float, half_life: float | None) -> np.ndarray | float:
    return 1.0 if half_life is None else np.power(0.5, np.asarray(dt, dtype=np.float64) / half_life)


def _sparse(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nz = np.flatnonzero(dense)
    return nz.astype(np.int32), dense[nz].astype(np.float32)


def _sum_codes(codes: np.ndarray, weights: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros(length)
    np.add.at(out, codes.ravel(), np.repeat(weights, codes.shape[1]))
    return out


def customer_rows(t: np.ndarray, w: np.ndarray, codes: np.ndarray, spec: InputSpec, *,
                  targets: np.ndarray | None, cutoff: float | None = None,
                  as_of: float | None = None) -> list[dict[str, Any]]:
    """The examples of one customer (events sorted by time), or its prediction input.

    Parameters
    ----------
    t, w, codes
        Event times (ascending), weights and ``(n, D)`` absolute codes.
    targets
        Positions of the target events to build (each needs an earlier event); ``None``: one
        prediction row from all events.
    cutoff
        Validation cut: a target at ``t >= cutoff`` is a validation example; the target window of
        a training example stops before the cut.
    as_of
        Prediction time for ``decay_anchor="as-of"`` (default: the newest event).
    """
    n = len(t)
    hl = spec.half_life
    # session start of every event: chained gaps <= session_gap
    starts = np.zeros(n, dtype=np.int64)
    if spec.session_gap is not None and n:
        new = np.r_[True, np.diff(t) > spec.session_gap]
        starts = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    jobs = [(int(j), int(np.searchsorted(t, t[j], "left"))) for j in targets] if targets is not None else [(-1, n)]
    out = []
    running = np.zeros(spec.length)  # decayed sum of events [0, added), anchored at t[added - 1]
    added = 0
    for j, p in jobs:
        if p == 0:
            continue
        while added < p:
            if added:
                running *= _decay(t[added] - t[added - 1], hl)
            running[codes[added]] += w[added]
            added += 1
        if spec.decay_anchor == "last-event":
            anchor = t[p - 1]
        else:
            anchor = t[j] if j >= 0 else (t[n - 1] if as_of is None else as_of)
        long = running * _decay(anchor - t[p - 1], hl)
        lo = int(starts[p - 1]) if spec.session_gap is not None else max(0, p - spec.recent)
        short = _sum_codes(codes[lo:p], w[lo:p] * _decay(anchor - t[lo:p], hl), spec.length)
        row: dict[str, Any] = {"last": p - 1, "t": float(anchor), "n_input": p}
        row["long_idx"], row["long_val"] = _sparse(long)
        row["short_idx"], row["short_val"] = _sparse(short)
        if j >= 0:
            split = VALID if cutoff is not None and t[j] >= cutoff else TRAIN
            end = min(n, j + spec.target_window)
            ks = np.arange(j, end)
            if split == TRAIN and cutoff is not None:
                ks = ks[t[ks] < cutoff]
            tgt = _sum_codes(codes[ks], w[ks] * _decay(t[ks] - t[j], hl), spec.length)
            row["tgt_idx"], row["tgt_val"] = _sparse(tgt)
            row.update(target_pos=j, t_target=float(t[j]), split=split)
        out.append(row)
    return out


def choose_targets(n_eligible_positions: np.ndarray, *, customer: str, seed: int, per_customer: int | None,
                   fraction: float) -> np.ndarray:
    """A seeded sample of target positions (reproducible per customer, independent of partitioning)."""
    pos = n_eligible_positions
    rng = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(customer.encode())])
    if fraction < 1.0:
        pos = pos[rng.random(len(pos)) < fraction]
    if per_customer is not None and len(pos) > per_customer:
        pos = np.sort(rng.choice(pos, per_customer, replace=False))
    return pos


def _schema(feature_types: dict[str, T.DataType], *, predict: bool) -> T.StructType:
    f = [T.StructField("customer", T.StringType()), T.StructField("t", T.DoubleType()),
         T.StructField("n_input", T.IntegerType())]
    if not predict:
        f += [T.StructField("target", T.StringType()), T.StructField("t_target", T.DoubleType()),
              T.StructField("split", T.StringType())]
    for s in SKETCHES if not predict else SKETCHES[:2]:
        f += [T.StructField(f"{s}_idx", T.ArrayType(T.IntegerType())), T.StructField(f"{s}_val", T.ArrayType(T.FloatType()))]
    f += [T.StructField(name, dtype) for name, dtype in feature_types.items()]
    return T.StructType(f)


def _arrow_list(arrs: list[np.ndarray], dtype: pa.DataType) -> pa.ListArray:
    offsets = np.zeros(len(arrs) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(a) for a in arrs])
    flat = np.concatenate(arrs) if arrs else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.astype(dtype.to_pandas_dtype()), type=dtype))


def build_examples(
    events: DataFrame,
    codes: DataFrame,
    spec: InputSpec,
    *,
    customer: str,
    item: str,
    timestamp: str,
    weight: str | None = None,
    event_features: tuple[str, ...] = (),
    predict: bool = False,
    as_of: float | None = None,
    validation_fraction: float = 0.0,
    max_examples: int | None = None,
    examples_per_customer: int | None = None,
    seed: int = 0,
) -> tuple[DataFrame, dict[str, Any]]:
    """Training examples (or, with ``predict``, one input row per customer) from an event table.

    Returns
    -------
    (DataFrame, dict)
        ``customer``, ``t`` (context time), ``n_input``, [``target``, ``t_target``, ``split``],
        ``long_idx/val``, ``short_idx/val``, [``tgt_idx/val``], the event features of the newest
        input event; and counts (events without codes, the validation cut, the sampling fraction).
    """
    require_columns(events, [customer, item, timestamp, weight, *event_features], "events")
    if not timestamp:
        raise ConfigError("examples need --timestamp COL")
    spark = events.sparkSession
    w_col = F.lit(1.0) if weight is None else try_double(weight)
    feat_cols = [F.col(c).alias(f"f{k}") for k, c in enumerate(event_features)]
    ev = events.select(F.col(customer).cast("string").alias("c"), F.col(item).cast("string").alias("i"),
                       epoch_seconds(events, timestamp).alias("t"), w_col.alias("w"), *feat_cols) \
        .filter(F.col("c").isNotNull() & F.col("i").isNotNull() & F.col("t").isNotNull() & ~F.isnan("t"))
    if as_of is not None:
        ev = ev.filter(F.col("t") <= F.lit(float(as_of)))
    # an unparsable, missing, infinite or negative weight drops the event; counted, never silent
    bad = ~(F.col("w").isNotNull() & ~F.isnan("w") & (F.col("w") >= 0) & (F.col("w") < float("inf"))) \
        if weight is not None else F.lit(False)
    coded = ev.withColumn("_bad", bad).join(codes.select(F.col("item").alias("i"), "codes"), "i", "left")
    good = ~F.col("_bad")
    with job_description(spark, "spark_cleora emde examples: count events"):
        r = coded.agg(F.count(F.lit(1)).alias("all"), F.count(F.when(good, F.lit(1))).alias("n"),
                      F.count(F.when(good, F.col("codes"))).alias("coded"),
                      F.count_distinct(F.when(good, F.col("c"))).alias("customers"),
                      F.percentile_approx(F.when(good, F.col("t")), 1.0 - validation_fraction, 100_000)
                      .alias("cut")).collect()[0]
    report: dict[str, Any] = {"events": int(r["n"]), "events_without_codes": int(r["n"]) - int(r["coded"]),
                              "events_rejected_weight": int(r["all"]) - int(r["n"]),
                              "customers": int(r["customers"])}
    if report["events_rejected_weight"]:
        log.warning("emde examples: %d events rejected (weight missing, unparsable, infinite or negative)",
                    report["events_rejected_weight"])
    coded = coded.filter(good).drop("_bad")
    if int(r["coded"]) == 0:
        raise BadInputError("no event has an item with codes (wrong --item column or another coder?)")
    cutoff = float(r["cut"]) if validation_fraction > 0 and not predict else None
    fraction = 1.0
    if max_examples is not None and not predict:
        eligible = max(1, int(r["coded"]) - int(r["customers"]))
        fraction = min(1.0, max_examples / eligible)
    report.update(validation_cutoff=cutoff, sample_fraction=fraction)
    coded = coded.filter(F.col("codes").isNotNull())
    ftypes = {name: events.schema[name].dataType for name in event_features}
    out_types = {name: (T.DoubleType() if isinstance(dt, T.NumericType) else T.StringType()) for name, dt in ftypes.items()}
    schema = _schema(out_types, predict=predict)
    per_customer = examples_per_customer

    def group(tbl: pa.Table) -> pa.Table:
        order = np.lexsort((np.asarray(tbl.column("i").to_pylist(), dtype=object).astype(str),
                            tbl.column("t").to_numpy()))
        tbl = tbl.take(pa.array(order))
        t = tbl.column("t").to_numpy().astype(np.float64)
        w = tbl.column("w").to_numpy().astype(np.float64)
        cust = tbl.column("c")[0].as_py()
        cflat = tbl.column("codes").combine_chunks()
        cm = cflat.flatten().to_numpy(zero_copy_only=False).reshape(len(t), -1).astype(np.int64)
        if predict:
            targets = None
        else:
            first = np.searchsorted(t, t, "left")
            targets = choose_targets(np.flatnonzero(first > 0), customer=cust, seed=seed,
                                     per_customer=per_customer, fraction=fraction)
        rows = customer_rows(t, w, cm, spec, targets=targets, cutoff=cutoff, as_of=as_of)
        cols: dict[str, Any] = {"customer": pa.array([cust] * len(rows), pa.string()),
                                "t": pa.array([r["t"] for r in rows], pa.float64()),
                                "n_input": pa.array([r["n_input"] for r in rows], pa.int32())}
        if not predict:
            items = tbl.column("i").to_pylist()
            cols["target"] = pa.array([items[r["target_pos"]] for r in rows], pa.string())
            cols["t_target"] = pa.array([r["t_target"] for r in rows], pa.float64())
            cols["split"] = pa.array([r["split"] for r in rows], pa.string())
        for s in SKETCHES if not predict else SKETCHES[:2]:
            cols[f"{s}_idx"] = _arrow_list([r[f"{s}_idx"] for r in rows], pa.int32())
            cols[f"{s}_val"] = _arrow_list([r[f"{s}_val"] for r in rows], pa.float32())
        last = pa.array([r["last"] for r in rows], pa.int64())
        for k, name in enumerate(event_features):
            col = tbl.column(f"f{k}").take(last)
            cols[name] = col.cast(pa.float64() if isinstance(out_types[name], T.DoubleType) else pa.string())
        return pa.table(cols)

    out = grouped_arrow(coded.select("c", "i", "t", "w", "codes", *[f"f{k}" for k in range(len(event_features))]),
                        ["c"], group, schema)
    return out, report
