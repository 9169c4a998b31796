"""Recommendations from a trained EMDE model, on Spark (``emde recommend --model``).

1. Each customer's prediction input is built by the function that built the training examples
   (:func:`spark_cleora.emde.examples.build_examples` with ``predict=True``): every event up to
   ``as_of``, decayed to the model's anchor (the customer's newest event, or ``as_of``).
2. The network runs inside executor tasks (``mapInArrow``), in batches; the weights travel in the
   task closure and the network is built once per Python worker (cached by model id).
3. Each candidate item i scores ``sum_j log q_j[b_j(i)]`` -- the log-probability of its bucket in
   every predicted block -- or, with ``scoring="popularity"``, the popularity-corrected
   ``log p(i) + (w / D) * sum_j (log q_j[b_j(i)] - log P[b_j(i)])`` (``P``: bucket popularity,
   ``D`` blocks; the paper's session decoder is ``w = D``). The D blocks describe one item, so
   their evidence is strongly correlated: ``w = 1`` counts it once (the geometric mean of the
   per-block likelihood ratios). Exact distributed top-k with exclusions and candidate lists as
   ``emde recommend`` (:func:`spark_cleora.emde.score.top_k`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..errors import ConfigError
from ..engine.hyperedges import epoch_seconds
from ..runtime.session import job_description
from .coder import read_codes
from .config import RecommendConfig
from .examples import build_examples
from .model import EmdeModel, load_model, network_from_state
from .score import Kernel, bucket_mass, top_k
from .sketch import parse_as_of
from .store import read_candidates, read_meta, write_output
from ..storage.readers import read_table, require_columns

MODEL_SCORINGS = ("log-prob", "popularity")
POPULARITY_SMOOTHING = 1.0  # pseudo-count of every coded item in the popularity scoring
_NETWORKS: dict[str, Any] = {}  # per Python worker: model id -> network


def _model_bytes(model: EmdeModel) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(model.net.state_dict(), buf)
    return buf.getvalue()


def predicted_log_probs(model: EmdeModel, inputs: DataFrame, *, batch_size: int = 1024) -> DataFrame:
    """``customer``, ``val`` (the ``L`` predicted log-probabilities) for every prediction input row."""
    manifest = model.manifest
    key = f"{manifest['coder_id']}:{manifest.get('written_at')}:{model.path}"
    weights = _model_bytes(model)
    columns = ["customer", "t", "long_idx", "long_val", "short_idx", "short_val", *model.features.columns]

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch

        net = _NETWORKS.get(key)
        if net is None:
            net = network_from_state(manifest, torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True))
            _NETWORKS.clear()
            _NETWORKS[key] = net
        local = EmdeModel(path=model.path, manifest=manifest, net=net)
        for b in batches:
            if b.num_rows == 0:
                continue
            tbl = pa.Table.from_batches([b])
            logp = local.log_probs(tbl, batch_size=batch_size)
            n, length = logp.shape
            vals = pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * length, length, dtype=np.int32)),
                                            pa.array(logp.reshape(-1)))
            yield pa.RecordBatch.from_arrays([b.column("customer"), vals], names=["customer", "val"])

    return inputs.select(*columns).mapInArrow(run, "customer string, val array<float>")


def events_until(events: DataFrame, timestamp: str, as_of: float | None) -> DataFrame:
    """``events`` up to the prediction time ``as_of`` (epoch seconds; None: all): an event after it has not
    happened yet. Unparsable times stay, to be counted where the inputs are built."""
    if as_of is None:
        return events
    t = epoch_seconds(events, timestamp)
    return events.filter((t <= F.lit(float(as_of))) | t.isNull())


def recommend_with_model(
    model: EmdeModel,
    events: DataFrame,
    codes: DataFrame,
    *,
    customer: str,
    item: str,
    timestamp: str,
    weight: str | None = None,
    as_of: float | None = None,
    k: int = 10,
    scoring: str = "popularity",
    sketch_weight: float = RecommendConfig.model_sketch_weight,
    popularity: DataFrame | None = None,
    seen: DataFrame | None = None,
    candidates: DataFrame | None = None,
    customer_features: DataFrame | None = None,
    batch_size: int = 1024,
    chunk_size: int = 20_000,
) -> tuple[DataFrame, dict[str, Any]]:
    """Top-``k`` items for every customer of ``events`` from the model's predicted sketch.

    Parameters
    ----------
    model
        :func:`spark_cleora.emde.model.load_model`; ``codes`` of the coder it was trained with.
    events, customer, item, timestamp, weight, as_of
        The events the inputs are built from (up to ``as_of``, epoch seconds).
    scoring, sketch_weight
        ``log-prob`` (sum of the item's bucket log-probabilities) or ``popularity``: the item's
        log popularity plus ``sketch_weight / D`` times the sum of its buckets' log-ratios of
        predicted to popularity mass.
    popularity
        ``item``, ``weight`` for ``popularity`` scoring (default: event counts of ``events``); every
        coded item gets one pseudo-event on top.
    seen
        ``customer``, ``item`` pairs never to recommend; ``candidates``: ``item`` -- only these.
    customer_features
        The model's customer feature columns, keyed by the ``customer`` column.

    Returns
    -------
    (DataFrame, dict)
        ``customer``, ``items`` (best first), ``scores``; and counts.
    """
    if scoring not in MODEL_SCORINGS:
        raise ConfigError(f"model scoring must be one of {', '.join(MODEL_SCORINGS)}; got {scoring!r}")
    events = events_until(events, timestamp, as_of)  # inputs and popularity ignore later events
    spec, feats = model.inputs, model.features
    ev_features = tuple(c for c in feats.columns if c in events.columns)
    inputs, report = build_examples(events, codes, spec, customer=customer, item=item, timestamp=timestamp,
                                    weight=weight, event_features=ev_features, predict=True, as_of=as_of)
    missing = [c for c in feats.columns if c not in inputs.columns]
    if missing:
        if customer_features is None:
            raise ConfigError(f"the model reads feature columns {missing}: give the events those columns or "
                              "--customer-features TABLE")
        cf = customer_features.select(F.col(customer).cast("string").alias("customer"), *missing) \
            .dropDuplicates(["customer"])
        inputs = inputs.join(cf, "customer", "left")
    length = spec.length
    queries = predicted_log_probs(model, inputs, batch_size=batch_size) \
        .select(F.col("customer").alias("id"), F.sequence(F.lit(0), F.lit(length - 1)).alias("idx"), "val")
    cands = codes.select("item", "codes")
    if candidates is not None:
        wanted = candidates.select(F.col("item").cast("string").alias("item")).dropna().distinct()
        report["candidates_without_codes"] = wanted.join(codes.select("item"), "item", "left_anti").count()
        cands = cands.join(wanted, "item")
    kernel = Kernel(length=length)
    if scoring == "popularity":
        if popularity is None:
            pop = events.groupBy(F.col(item).cast("string").alias("item")).agg(F.count(F.lit(1)).cast("double").alias("w"))
        else:
            pop = popularity.select(F.col("item").cast("string").alias("item"), F.col("weight").cast("double").alias("w")) \
                .filter(F.col("w") > 0)
        # one pseudo-event per coded item: an item without events (a new item coded from another
        # source) keeps a finite prior and can still be recommended
        pop = codes.select("item", "codes").join(pop, "item", "left") \
            .select("item", "codes", (F.coalesce("w", F.lit(0.0)) + F.lit(POPULARITY_SMOOTHING)).alias("w"))
        mass = bucket_mass(pop, length=length)
        n_blocks = length // model.width
        total = mass.sum() / n_blocks
        kernel = Kernel(length=length, shift=np.log(np.where(mass > 0, mass / total, 1.0)),
                        scale=float(sketch_weight) / n_blocks)
        cands = cands.join(pop.select("item", "w"), "item").select(
            "item", "codes", F.log(F.col("w") / F.lit(total)).alias("prior"))
    else:
        cands = cands.select("item", "codes", F.lit(0.0).alias("prior"))
    cand_rows = cands.select(F.col("item").alias("id"), F.col("codes").alias("idx"),
                             F.array_repeat(F.lit(1.0).cast("float"), F.size("codes")).alias("val"), "prior")
    n_cand = cand_rows.count()
    report["candidates"] = n_cand
    if seen is not None:
        excl = seen.select(F.col("customer").cast("string").alias("id"), F.col("item").cast("string").alias("item")) \
            .dropna().groupBy("id").agg(F.collect_set("item").alias("exclude"))
        queries = queries.join(excl, "id", "left")
    recs = top_k(queries, cand_rows, kernel=kernel, k=k, batch_size=batch_size, chunk_size=chunk_size,
                 n_queries=report["customers"], n_candidates=n_cand)
    return recs.withColumnRenamed("id", "customer"), report


def run_model_recommend(spark: SparkSession, cfg: Any) -> dict[str, Any]:
    """``emde recommend --model``: the manifest of the written recommendations."""
    t0 = time.perf_counter()
    if not cfg.output or not cfg.events or not cfg.timestamp:
        raise ConfigError("--model needs --events PATH, --timestamp COL and --output DIR")
    model = load_model(cfg.model)
    coder = cfg.coder or model.manifest["coder"]
    coder_meta = read_meta(spark, coder, "coder")
    if coder_meta["coder_id"] != model.coder_id:
        raise ConfigError(f"model {cfg.model!r} was trained with coder {model.coder_id}, but {coder!r} is coder "
                          f"{coder_meta['coder_id']}: codes differ, refusing to mix them")
    if cfg.decay_anchor is not None and cfg.decay_anchor != model.inputs.decay_anchor:
        raise ConfigError(f"the model was trained with --decay-anchor {model.inputs.decay_anchor}; "
                          "inputs must be built the same way")
    events = read_table(spark, cfg.events, cfg.events_format)
    require_columns(events, [cfg.customer, cfg.item, cfg.timestamp], "events")
    cf = None
    if cfg.customer_features:
        from .train import read_customer_features

        cf = read_customer_features(spark, cfg.customer_features, cfg.customer)
    as_of = parse_as_of(spark, cfg.as_of)
    events = events_until(events, cfg.timestamp, as_of)  # the seen items too
    recs, report = recommend_with_model(
        model, events, read_codes(spark, coder), customer=cfg.customer, item=cfg.item, timestamp=cfg.timestamp,
        weight=cfg.weight, as_of=as_of, k=cfg.k, scoring=cfg.model_scoring,
        sketch_weight=cfg.model_sketch_weight,
        seen=events.select(F.col(cfg.customer).alias("customer"), F.col(cfg.item).alias("item"))
        if cfg.exclude_seen else None, candidates=read_candidates(spark, cfg.candidates) if cfg.candidates else None,
        customer_features=cf, batch_size=cfg.batch_size, chunk_size=cfg.chunk_size)

    def write(staging: str) -> dict[str, Any]:
        with job_description(spark, "spark_cleora emde recommend --model: predict, score and write"):
            recs.write.parquet(staging)
            r = spark.read.parquet(staging).agg(F.count(F.lit(1)).alias("n"),
                                                F.sum((F.size("items") < cfg.k).cast("long")).alias("short")).collect()[0]
        return {"kind": "recommendations", "coder_id": model.coder_id, "coder": coder, "model": cfg.model,
                "config": cfg.to_dict(), **report, "customers": int(r["n"]),
                "customers_with_fewer_than_k": int(r["short"] or 0)}

    manifest = write_output(spark, cfg.output, write)
    manifest["seconds_total"] = round(time.perf_counter() - t0, 3)
    return manifest
