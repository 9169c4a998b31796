"""Fitting the DLSH coder on Spark, persisting it, and coding items (``emde fit``).

Nothing that grows with the number of items reaches the driver: the standardisation moments are
merged from per-batch partial moments, and the biases come from ``percentile_approx`` over the
projections (exact when a source has at most ``quantile_accuracy`` items; otherwise each hyperplane
splits the items within ``1/quantile_accuracy`` of its quantile, which changes bucket balance
negligibly) followed by one ``min`` pass that moves each bias midway to the next projection
(see :func:`spark_cleora.emde.dlsh.biases_between`). The coder itself is small
(``dim x N*K`` directions per source) and travels to the executors inside the ``mapInArrow`` closures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..errors import BadInputError, ConfigError
from ..runtime.session import step
from ..engine.vectors import from_list_array
from . import dlsh
from .config import CodeConfig, FitConfig
from .store import join, read_meta, refuse_existing, write_output
from ..storage.readers import read_table, require_columns

log = logging.getLogger(__name__)

CODES_SCHEMA = "item string, codes array<int>"
RANDOM_SOURCE = "<random>"  # name of the --random-source (one random vector per item)
RANDOM_DIM = 64


@dataclass(frozen=True)
class Coder:
    """A fitted EMDE coder: N partitionings of 2**K buckets for each embedding source."""

    depth: int
    bits: int
    seed: int
    bias: str
    standardize: bool
    sources: tuple[dlsh.SourceParams, ...]

    @property
    def width(self) -> int:
        """Buckets per partitioning, W = 2**K."""
        return 1 << self.bits

    @property
    def depths(self) -> list[int]:
        """Partitionings of each source (``depth`` unless set per source)."""
        return [s.directions.shape[1] // self.bits for s in self.sources]

    @property
    def n_codes(self) -> int:
        """Codes per item, D = sum of the sources' N (one per partitioning)."""
        return sum(self.depths)

    @property
    def embedding_sources(self) -> list[dlsh.SourceParams]:
        """The sources read from embedding tables (all but the random source)."""
        return [s for s in self.sources if s.name != RANDOM_SOURCE]

    @property
    def length(self) -> int:
        """Length of a dense sketch, D x W (absolute ids are in [0, length))."""
        return self.n_codes * self.width

    @cached_property
    def coder_id(self) -> str:
        header = f"{self.depth}|{self.bits}|{self.seed}|{self.bias}|{self.standardize}"
        return dlsh.params_digest(list(self.sources), header)

    def encode(self, embeddings: Sequence[np.ndarray]) -> np.ndarray:
        """``int32 (n, D)`` absolute codes from one ``(n, dim_m)`` matrix per source."""
        if len(embeddings) != len(self.sources):
            raise ValueError(f"expected {len(self.sources)} embedding matrices, got {len(embeddings)}")
        return np.concatenate([dlsh.encode(p, e, depth=d, bits=self.bits)
                               for p, e, d in zip(self.sources, embeddings, self.depths)], axis=1)

    def manifest(self) -> dict[str, Any]:
        return {
            "kind": "coder", "coder_id": self.coder_id, "depth": self.depth, "bits": self.bits,
            "width": self.width, "n_codes": self.n_codes, "length": self.length, "seed": self.seed,
            "bias": self.bias, "standardize": self.standardize,
            "sources": [{"name": s.name, "dim": s.dim, "offset": s.offset, "fitted_on": s.fitted_on, "depth": d}
                        for s, d in zip(self.sources, self.depths)],
        }


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------

def read_embeddings(spark: SparkSession, path: str, *, column: str | None = None) -> DataFrame:
    """``entity``/``embedding`` rows of an embeddings Parquet (``spark-cleora embed`` output)."""
    df = read_table(spark, [path])
    require_columns(df, ["entity", "embedding"], f"embeddings {path!r}")
    if column is not None:
        require_columns(df, ["column"], f"embeddings {path!r} (--column)")
        df = df.filter(F.col("column") == column)
    return df.select(F.col("entity").cast("string").alias("entity"), "embedding")


def _check_source(df: DataFrame, name: str) -> tuple[int, int]:
    """Rows and dimension of a source; refuses nulls, non-finite values, ragged vectors and duplicate
    entities."""
    size = F.size("embedding")
    r = df.agg(
        F.count(F.lit(1)).alias("n"),
        F.count_distinct("entity").alias("distinct"),
        F.sum(F.col("entity").isNull().cast("long")).alias("null_entity"),
        F.sum(F.col("embedding").isNull().cast("long")).alias("null_embedding"),
        F.min(F.when(F.col("embedding").isNotNull(), size)).alias("dmin"),
        F.max(size).alias("dmax"),
        F.sum(F.when(F.exists("embedding", lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == float("inf"))), 1).otherwise(0)).alias("bad_values"),
    ).collect()[0]
    n = int(r["n"])
    if n == 0:
        raise BadInputError(f"embedding source {name!r} has no rows")
    problems = []
    if r["null_entity"]:
        problems.append(f"{r['null_entity']} rows with a null entity")
    if r["null_embedding"]:
        problems.append(f"{r['null_embedding']} rows with a null embedding")
    if r["bad_values"]:
        problems.append(f"{r['bad_values']} embeddings containing null, NaN or infinite values")
    if r["dmin"] != r["dmax"]:
        problems.append(f"embeddings of different lengths ({r['dmin']}..{r['dmax']})")
    if r["distinct"] != n - (r["null_entity"] or 0):
        problems.append(f"{n - r['distinct']} duplicate entities")
    if problems:
        raise BadInputError(f"embedding source {name!r}: " + "; ".join(problems))
    if not r["dmax"]:
        raise BadInputError(f"embedding source {name!r} has empty embeddings")
    return n, int(r["dmax"])


def _moments(df: DataFrame, dim: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Exact mean and population std per dimension, merged from per-batch moments.

    (numpy per Arrow batch: one SQL aggregate per dimension is ~10x slower for a 256-d table.)
    """

    def partial(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            cnt, mu, m2 = dlsh.batch_moments(from_list_array(b.column("embedding"), dim))
            yield pa.RecordBatch.from_pydict({"n": [cnt], "mean": [mu.tobytes()], "m2": [m2.tobytes()]})

    rows = df.select("embedding").mapInArrow(partial, "n long, mean binary, m2 binary").collect()
    parts = [(int(r["n"]), np.frombuffer(r["mean"]), np.frombuffer(r["m2"])) for r in rows]
    n, mean, m2 = dlsh.merge_moments(parts)
    return n, mean, np.sqrt(m2 / n)


def _projections(df: DataFrame, *, mean: np.ndarray, scale: np.ndarray, directions: np.ndarray) -> DataFrame:
    m = directions.shape[1]
    dim = directions.shape[0]
    names = [f"p{j}" for j in range(m)]

    def proj(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            p = dlsh.project(from_list_array(b.column("embedding"), dim), mean=mean, scale=scale,
                             directions=directions)
            yield pa.RecordBatch.from_arrays([pa.array(p[:, j]) for j in range(m)], names=names)

    return df.select("embedding").mapInArrow(proj, ", ".join(f"{c} double" for c in names))


def _fit_source(df: DataFrame, *, index: int, name: str, dim: int, offset: int, depth: int,
                cfg: FitConfig) -> dlsh.SourceParams:
    n, mean, std = _moments(df, dim)
    if n < 2:
        raise BadInputError(f"embedding source {name!r}: need at least 2 items to fit on, got {n}")
    if cfg.standardize:
        scale = np.where(std > 0, std, 1.0)
    else:
        mean, scale = np.zeros(dim), np.ones(dim)
    directions = dlsh.draw_directions(dim=dim, depth=depth, bits=cfg.bits, seed=cfg.seed, source_index=index)
    levels = dlsh.quantile_levels(depth=depth, bits=cfg.bits, seed=cfg.seed, source_index=index, bias=cfg.bias)
    proj = _projections(df, mean=mean, scale=scale, directions=directions)
    m = directions.shape[1]
    at_row = proj.agg(*[F.percentile_approx(f"p{j}", float(levels[j]), cfg.quantile_accuracy).alias(f"p{j}")
                        for j in range(m)]).collect()[0]
    at = np.array([at_row[f"p{j}"] for j in range(m)], dtype=np.float64)
    above_row = proj.agg(*[F.min(F.when(F.col(f"p{j}") > F.lit(float(at[j])), F.col(f"p{j}"))).alias(f"p{j}")
                           for j in range(m)]).collect()[0]
    above = np.array([np.nan if above_row[f"p{j}"] is None else above_row[f"p{j}"] for j in range(m)])
    return dlsh.SourceParams(name=name, dim=dim, offset=offset, fitted_on=n, mean=mean, scale=scale,
                             directions=directions, biases=dlsh.biases_between(at, above))


def fit_coder(sources: Sequence[DataFrame], *, names: Sequence[str] | None = None,
              config: FitConfig | None = None, **options: Any) -> Coder:
    """Fit a DLSH coder, one set of N partitionings per embedding source.

    Parameters
    ----------
    sources
        DataFrames with ``entity`` (string) and ``embedding`` (array<float>) columns.
    names
        Names recorded for the sources (default ``source0``, ``source1``, ...).
    config, options
        A :class:`FitConfig` and/or its fields (``depth``, ``bits``, ``seed``, ``bias``, ...).
    """
    cfg = (config or FitConfig()).replace(**options) if options else (config or FitConfig())
    names = list(names or [f"source{i}" for i in range(len(sources))])
    if not sources or len(names) != len(sources):
        raise ConfigError("fit_coder needs at least one source and one name per source")
    depths = list(cfg.source_depths) or [cfg.depth] * len(sources)
    if len(depths) != len(sources):
        raise ConfigError(f"--source-depth gives {len(depths)} depths for {len(sources)} sources")
    params = []
    offset = 0
    for i, (df, name) in enumerate(zip(sources, names)):
        spark = df.sparkSession
        with step(spark, f"spark_cleora emde fit: check {name}", log):
            n, dim = _check_source(df, name)
        fit_df = df
        if cfg.fit_sample is not None and n > cfg.fit_sample:
            # Bernoulli sample, seeded: about fit_sample rows; the exact count is recorded.
            fit_df = df.sample(withReplacement=False, fraction=cfg.fit_sample / n, seed=cfg.seed + i)
        with step(spark, f"spark_cleora emde fit: {name}", log):
            p = _fit_source(fit_df, index=i, name=name, dim=dim, offset=offset, depth=depths[i], cfg=cfg)
        log.info("fitted %s: %d items, dim %d, %d partitionings x %d bits", name, p.fitted_on, dim, depths[i], cfg.bits)
        params.append(p)
        offset += depths[i] * (1 << cfg.bits)
    if cfg.random_source:
        params.append(random_source(index=len(sources), offset=offset, depth=cfg.depth, bits=cfg.bits, seed=cfg.seed))
    return Coder(depth=cfg.depth, bits=cfg.bits, seed=cfg.seed, bias=cfg.bias, standardize=cfg.standardize,
                 sources=tuple(params))


def random_source(*, index: int, offset: int, depth: int, bits: int, seed: int) -> dlsh.SourceParams:
    """The paper's random source: DLSH of i.i.d. standard normal vectors, one per item.

    Its biases are 0, the median of every projection of such vectors, so nothing is fitted.
    """
    return dlsh.SourceParams(
        name=RANDOM_SOURCE, dim=RANDOM_DIM, offset=offset, fitted_on=0, mean=np.zeros(RANDOM_DIM),
        scale=np.ones(RANDOM_DIM), biases=np.zeros(depth * bits),
        directions=dlsh.draw_directions(dim=RANDOM_DIM, depth=depth, bits=bits, seed=seed, source_index=index))


def random_vectors(items: Sequence[str], *, seed: int, source_index: int, dim: int) -> np.ndarray:
    """``(n, dim)`` standard normal vectors, a reproducible one per item id (any batch, any order)."""
    out = np.empty((len(items), dim))
    for r, item in enumerate(items):
        h = xxhash.xxh64_intdigest(item.encode())
        out[r] = dlsh.rng_for(seed, source_index, 2 + h).standard_normal(dim)
    return out


# --------------------------------------------------------------------------------------------
# Coding items
# --------------------------------------------------------------------------------------------

def codes_to_arrow(codes: np.ndarray) -> pa.ListArray:
    """``int32 (n, D)`` -> Arrow ``list<int32>`` without a per-row loop."""
    codes = np.ascontiguousarray(codes, dtype=np.int32)
    n, d = codes.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)), pa.array(codes.reshape(-1)))


def item_codes(coder: Coder, sources: Sequence[DataFrame]) -> DataFrame:
    """``item`` string, ``codes`` array<int> (length D, absolute ids) for items in any source.

    An item missing from a source gets that source's codes from a seeded random vector (standard
    normal in the source's standardised space, reproducible per item id): the paper's random
    source instead of dropping the item, so an item known only from, say, its name embedding is
    still coded and can be recommended. The random source (if any) codes every item that way.
    """
    emb_sources = coder.embedding_sources
    if len(sources) != len(emb_sources):
        raise ConfigError(f"the coder has {len(emb_sources)} embedding sources, got {len(sources)} embedding tables")
    joined = sources[0].select(F.col("entity").alias("item"), F.col("embedding").alias("e0"))
    for i, df in enumerate(sources[1:], start=1):
        joined = joined.join(df.select(F.col("entity").alias("item"), F.col("embedding").alias(f"e{i}")), "item",
                             "full_outer")
    seed = coder.seed

    def encode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            embs = []
            items = b.column("item").to_pylist()
            for i, src in enumerate(coder.sources):
                if src.name == RANDOM_SOURCE:
                    embs.append(random_vectors(items, seed=seed, source_index=i, dim=src.dim))
                    continue
                col = b.column(f"e{i}")
                present = np.asarray(col.is_valid())
                if present.all():
                    embs.append(_checked(col, i, src.dim))
                    continue
                e = np.empty((len(items), src.dim))
                if present.any():
                    e[present] = _checked(col.filter(pa.array(present)), i, src.dim)
                missing = [it for it, ok in zip(items, present) if not ok]
                e[~present] = src.mean + src.scale * random_vectors(missing, seed=seed, source_index=i, dim=src.dim)
                embs.append(e)
            yield pa.RecordBatch.from_arrays([b.column("item"), codes_to_arrow(coder.encode(embs))],
                                             names=["item", "codes"])

    return joined.mapInArrow(encode, CODES_SCHEMA)


def _checked(col: pa.Array, index: int, dim: int) -> np.ndarray:
    if col.null_count or (len(col) and not np.all(np.diff(np.asarray(col.offsets)) == dim)):
        raise BadInputError(f"embedding source {index}: vectors must be non-null and of length {dim}")
    return from_list_array(col, dim)


def missing_per_source(sources: Sequence[DataFrame]) -> dict[str, Any]:
    """Items in any source, and how many of them each source lacks (coded from random vectors)."""
    union = sources[0].select("entity")
    for df in sources[1:]:
        union = union.union(df.select("entity"))
    n = union.distinct().count()
    return {"items_in_any_source": n,
            "items_random_per_source": [n - df.select("entity").distinct().count() for df in sources]}


# --------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------

_PARAMS_SCHEMA = ("source int, name string, dim int, offset int, fitted_on long, mean array<double>, "
                  "scale array<double>, directions array<double>, biases array<double>")


def _params_frame(spark: SparkSession, coder: Coder) -> DataFrame:
    rows = [(i, s.name, s.dim, s.offset, s.fitted_on, s.mean.tolist(), s.scale.tolist(),
             s.directions.reshape(-1).tolist(), s.biases.tolist()) for i, s in enumerate(coder.sources)]
    return spark.createDataFrame(rows, _PARAMS_SCHEMA)


def load_coder(spark: SparkSession, path: str) -> Coder:
    """The coder written by :func:`save_coder`; refuses one whose parameters do not match its id."""
    meta = read_meta(spark, path, "coder")
    rows = sorted(spark.read.parquet(join(path, "params")).collect(), key=lambda r: r["source"])
    sources = tuple(
        dlsh.SourceParams(name=r["name"], dim=r["dim"], offset=r["offset"], fitted_on=r["fitted_on"],
                          mean=np.array(r["mean"]), scale=np.array(r["scale"]),
                          directions=np.array(r["directions"]).reshape(r["dim"], len(r["biases"])),
                          biases=np.array(r["biases"]))
        for r in rows
    )
    coder = Coder(depth=meta["depth"], bits=meta["bits"], seed=meta["seed"], bias=meta["bias"],
                  standardize=meta["standardize"], sources=sources)
    if coder.coder_id != meta["coder_id"]:
        raise ConfigError(f"coder {path!r} is corrupt: its parameters do not match its id {meta['coder_id']}")
    return coder


def read_codes(spark: SparkSession, path: str) -> DataFrame:
    """The ``item``/``codes`` table of a coder directory."""
    return spark.read.parquet(join(path, "codes"))


def save_coder(spark: SparkSession, coder: Coder, codes: DataFrame, output: str,
               report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``params``, ``codes`` and the manifest into ``output`` atomically; returns the manifest."""

    def write(staging: str) -> dict[str, Any]:
        _params_frame(spark, coder).coalesce(1).write.parquet(join(staging, "params"))
        with step(spark, "spark_cleora emde fit: write item codes", log):
            codes.write.parquet(join(staging, "codes"))
            n = spark.read.parquet(join(staging, "codes")).count()
        return {**coder.manifest(), **(report or {}), "items_coded": n}

    return write_output(spark, output, write, json_name="manifest.json")


def run_fit(spark: SparkSession, cfg: FitConfig) -> dict[str, Any]:
    """The ``emde fit`` job: fit, code every item, write the coder; returns its manifest."""
    t0 = time.perf_counter()
    if not cfg.embeddings:
        raise ConfigError("--embeddings DIR [DIR ...] is required")
    if not cfg.output:
        raise ConfigError("--output CODER is required")
    refuse_existing(cfg.output, overwrite=cfg.overwrite, what="coder")
    sources = [read_embeddings(spark, p, column=cfg.column) for p in cfg.embeddings]
    coder = fit_coder(sources, names=list(cfg.embeddings), config=cfg)
    codes = item_codes(coder, sources)
    report: dict[str, Any] = {"fit_sample": cfg.fit_sample, "quantile_accuracy": cfg.quantile_accuracy,
                              "column": cfg.column}
    if len(sources) > 1:
        report.update(missing_per_source(sources))
    manifest = save_coder(spark, coder, codes, cfg.output, report)
    manifest["seconds_total"] = round(time.perf_counter() - t0, 3)
    log.info("coder %s: %d items coded into %d codes each (ids < %d) in %.1fs", manifest["coder_id"],
             manifest["items_coded"], coder.n_codes, coder.length, manifest["seconds_total"])
    return manifest


def extend_codes(coder: Coder, codes: DataFrame, sources: Sequence[DataFrame]) -> tuple[DataFrame, DataFrame]:
    """``codes`` plus the codes of items of ``sources`` (one table per coder source, e.g. folded-in
    embeddings) that ``codes`` lacks, with the coder as it is (no refit: its directions, standardisation
    and biases are unchanged, so every existing code and sketch stays valid). Returns (all codes, the
    added ones); an item already coded keeps its code."""
    added = item_codes(coder, sources).join(codes.select("item"), "item", "left_anti")
    return codes.select("item", "codes").unionByName(added), added


def run_code(spark: SparkSession, cfg: CodeConfig) -> dict[str, Any]:
    """The ``emde code`` job: a copy of a coder whose codes also cover the items of new embeddings."""
    t0 = time.perf_counter()
    if not cfg.coder or not cfg.embeddings or not cfg.output:
        raise ConfigError("emde code needs --coder CODER, --embeddings DIR [DIR ...] and --output CODER")
    refuse_existing(cfg.output, overwrite=cfg.overwrite, what="coder")
    coder = load_coder(spark, cfg.coder)
    sources = [read_embeddings(spark, p, column=cfg.column) for p in cfg.embeddings]
    for df, path, params in zip(sources, cfg.embeddings, coder.sources):
        first = df.select(F.size("embedding").alias("d")).first()
        if first is not None and first["d"] != params.dim:
            raise ConfigError(f"embeddings {path!r} have dimension {first['d']}, the coder's source "
                              f"{params.name!r} was fitted on dimension {params.dim}")
    codes, added = extend_codes(coder, read_codes(spark, cfg.coder), sources)
    old = read_meta(spark, cfg.coder, "coder")
    with step(spark, "spark_cleora emde code: new items", log):
        n_added = added.count()
    keep = {k: old[k] for k in ("fit_sample", "quantile_accuracy", "column") if k in old}
    manifest = save_coder(spark, coder, codes, cfg.output,
                          {**keep, "extended_from": cfg.coder, "items_added": n_added,
                           "items_added_from": list(cfg.embeddings)})
    manifest["seconds_total"] = round(time.perf_counter() - t0, 3)
    log.info("coder %s: %d new items coded (%d in all) in %.1fs", manifest["coder_id"], n_added,
             manifest["items_coded"], manifest["seconds_total"])
    return manifest
