"""Next-item methods for ``evaluate session``: the plug-in interface and the built-in methods.

Interface
---------
A method is a function registered under a name with :func:`register_method`::

    @register_method("NAME", params={"param": "meaning and default"})
    def my_method(ctx: MethodContext) -> DataFrame: ...

It receives a :class:`MethodContext` and returns a DataFrame ``prefix_id`` (string), ``item``
(string), ``score`` (double, higher is better): at least its ``k`` best items per prefix (more rows are
allowed; a prefix may get fewer or none -- the missing places are misses). The evaluator ranks each
prefix's rows by ``score`` descending, ties by ``item`` ascending (string order), and keeps ``k``.

What a method sees (:class:`MethodContext`):

* ``train``: the training events, ``session``, ``item`` (strings), ``t`` (epoch seconds, double),
  ``pos`` (1-based position in its session, ordered by time, then file order);
* ``prefixes``: one row per prediction, ``prefix_id``, ``items`` (array<string>, the prefix's events
  in order, the last one is the newest), ``times`` (array<double>, their timestamps). The event to
  predict is *not* in this table, nor any later event of the test session;
* ``k``, ``spark``, ``work_dir`` (a scratch directory of its own), ``options`` (the run's
  ``--option NAME=VALUE`` pairs, strings) and ``embedding()``: Cleora embeddings of the training
  sessions (hyperedge = session, entity = item; computed once per run and shared; ``entity``,
  ``embedding`` unit-norm); ``embedding(iterations=n)`` the same with another iteration count
  (computed once per count).

A module with more methods is listed in :data:`spark_cleora.evaluate.session.METHOD_MODULES`.
Methods run on Spark: tables that grow with the data stay DataFrames (nothing item x item on the driver).

Built-in methods (parameters as in session-rec, Ludewig & Jannach, unless said)
-------------------------------------------------------------------------------
* ``POP``: the ``k`` items with the most training events, the same list for every prefix.
* ``AR``: association rules. Every ordered pair of distinct positions ``(p, q)`` of one training
  session adds 1 to ``rule(x_p -> x_q)`` (so an item seen twice in a session also recommends
  itself); a prefix is scored by the rules of its last item. No pruning (session-rec keeps the 10
  best rules per item, which would cut lists to 10 items).
* ``SR``: sequential rules. Pairs ``(p, q)`` of one training session with ``1 <= q - p <= 10``
  add ``1 / (q - p)`` to ``rule(x_p -> x_q)``; scored from the last item. No pruning (session-rec's
  20 best rules per item change nothing in a top-20 list).
* ``V-SKNN``: session kNN. The prefix's distinct items get linear position weights
  ``w(i) = pos(i) / t`` (``pos``: the item's last position in the prefix of length ``t``).
  Candidate neighbours are the training sessions sharing an item with the prefix; the 500 most
  recent of them (by their last event; ties by session id) are the sample; similarity is the cosine
  between the weighted prefix vector and the neighbour's binary item set,
  ``sum_{i in s & n} w(i) / (||w|| * sqrt(|n|))``; the 100 most similar (ties by session id) are the
  neighbours and ``score(i) = sum of the similarities of the neighbours containing i``.
* ``CLEORA-KNN``: Cleora item-kNN from the last item: cosine between the item embeddings (the last
  item itself included: it is its own nearest neighbour, and repeats count in this protocol).
* ``EMDE``: the EMDE chain of :mod:`spark_cleora.emde`: a coder fitted on the Cleora embeddings
  (``emde_depth`` 10, ``emde_bits`` 7, ``emde_seed`` 0), each prefix sketched with decay to its last
  event (``emde_half_life`` seconds, default 600), decoded with the ``popularity`` decoder
  (``emde_sketch_weight`` 0.5) against the training popularity.

No method removes the prefix's own items (repeat clicks are targets like any other).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from ..errors import ConfigError


def _no_embedding(iterations: int | None = None) -> DataFrame:
    raise ConfigError("this run has no embedding")


@dataclass
class MethodContext:
    """Everything a method may use (see the module docstring)."""

    spark: SparkSession
    train: DataFrame
    prefixes: DataFrame
    k: int
    work_dir: str
    options: dict[str, str] = field(default_factory=dict)
    embedding: Callable[..., DataFrame] = _no_embedding

    def option(self, name: str, default: Any, kind: type = str) -> Any:
        """``--option name=value`` converted to ``kind``, else ``default``."""
        if name not in self.options:
            return default
        try:
            return kind(self.options[name])
        except ValueError as e:
            raise ConfigError(f"--option {name}={self.options[name]!r}: not a {kind.__name__}") from e


MethodFn = Callable[[MethodContext], DataFrame]


@dataclass(frozen=True)
class Method:
    name: str
    fn: MethodFn
    params: dict[str, str]
    needs_embedding: bool = False


METHODS: dict[str, Method] = {}


def register_method(name: str, *, params: dict[str, str] | None = None,
                    needs_embedding: bool = False) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn`` as the method ``name`` (``params``: its parameters and defaults, for the report)."""
    def deco(fn: MethodFn) -> MethodFn:
        METHODS[name] = Method(name, fn, dict(params or {}), needs_embedding)
        return fn
    return deco


def keep_top(scores: DataFrame, k: int) -> DataFrame:
    """The ``k`` best rows per ``prefix_id`` by ``score`` desc, ``item`` asc, with their ``rank`` (1-based)."""
    order = Window.partitionBy("prefix_id").orderBy(F.col("score").desc(), F.col("item").asc())
    return scores.withColumn("rank", F.row_number().over(order)).filter(F.col("rank") <= k)


def last_items(prefixes: DataFrame) -> DataFrame:
    """``prefix_id``, ``last`` (the prefix's newest item)."""
    return prefixes.select("prefix_id", F.element_at("items", -1).alias("last"))


def _from_last_item(ctx: MethodContext, rules: DataFrame) -> DataFrame:
    """Score each prefix by the rules ``a -> b`` (weight ``w``) of its last item."""
    top = Window.partitionBy("a").orderBy(F.col("w").desc(), F.col("b").asc())
    best = rules.withColumn("_r", F.row_number().over(top)).filter(F.col("_r") <= ctx.k)
    return last_items(ctx.prefixes).join(best.withColumnRenamed("a", "last"), "last") \
        .select("prefix_id", F.col("b").alias("item"), F.col("w").cast("double").alias("score"))


def _pairs(train: DataFrame) -> DataFrame:
    """Ordered position pairs of one training session: ``a``, ``b`` (items), ``d = pos_b - pos_a`` (!= 0)."""
    x = train.select("session", F.col("item").alias("a"), F.col("pos").alias("pa"))
    y = train.select("session", F.col("item").alias("b"), F.col("pos").alias("pb"))
    return x.join(y, "session").filter(F.col("pa") != F.col("pb")) \
        .select("a", "b", (F.col("pb") - F.col("pa")).alias("d"))


@register_method("POP", params={})
def pop(ctx: MethodContext) -> DataFrame:
    counts = ctx.train.groupBy("item").agg(F.count(F.lit(1)).cast("double").alias("score"))
    best = counts.orderBy(F.col("score").desc(), F.col("item").asc()).limit(ctx.k)  # k rows
    return ctx.prefixes.select("prefix_id").crossJoin(best)


@register_method("AR", params={"pruning": "none"})
def association_rules(ctx: MethodContext) -> DataFrame:
    rules = _pairs(ctx.train).groupBy("a", "b").agg(F.count(F.lit(1)).cast("double").alias("w"))
    return _from_last_item(ctx, rules)


@register_method("SR", params={"steps": "10 (option sr_steps)", "weighting": "1/distance", "pruning": "none"})
def sequential_rules(ctx: MethodContext) -> DataFrame:
    steps = ctx.option("sr_steps", 10, int)
    rules = _pairs(ctx.train).filter((F.col("d") >= 1) & (F.col("d") <= steps)) \
        .groupBy("a", "b").agg(F.sum(1.0 / F.col("d")).alias("w"))
    return _from_last_item(ctx, rules)


@register_method("V-SKNN", params={"k": "100 neighbours (option vsknn_k)",
                                   "sample_size": "500 most recent sessions (option vsknn_sample)",
                                   "weighting": "linear pos/t", "similarity": "cosine"})
def vsknn(ctx: MethodContext) -> DataFrame:
    n_neighbours = ctx.option("vsknn_k", 100, int)
    sample = ctx.option("vsknn_sample", 500, int)
    # prefix items with their linear weight (last position of the item / prefix length)
    ev = ctx.prefixes.select("prefix_id", F.size("items").alias("n"), F.posexplode("items").alias("p", "item"))
    weights = ev.groupBy("prefix_id", "item").agg((F.max("p") + 1).alias("p"), F.first("n").alias("n")) \
        .select("prefix_id", "item", (F.col("p") / F.col("n")).alias("w"))
    norm = weights.groupBy("prefix_id").agg(F.sqrt(F.sum(F.col("w") * F.col("w"))).alias("wnorm"))
    sess_items = ctx.train.select("session", "item").distinct()
    sess = ctx.train.groupBy("session").agg(F.max("t").alias("end"), F.count_distinct("item").alias("size"))
    overlap = weights.join(sess_items, "item").groupBy("prefix_id", "session").agg(F.sum("w").alias("dot"))
    recent = Window.partitionBy("prefix_id").orderBy(F.col("end").desc(), F.col("session").asc())
    sampled = overlap.join(sess, "session").withColumn("_r", F.row_number().over(recent)) \
        .filter(F.col("_r") <= sample)
    sims = sampled.join(norm, "prefix_id") \
        .select("prefix_id", "session", (F.col("dot") / (F.col("wnorm") * F.sqrt("size"))).alias("sim"))
    nearest = Window.partitionBy("prefix_id").orderBy(F.col("sim").desc(), F.col("session").asc())
    neighbours = sims.withColumn("_r", F.row_number().over(nearest)).filter(F.col("_r") <= n_neighbours)
    scores = neighbours.join(sess_items, "session").groupBy("prefix_id", "item").agg(F.sum("sim").alias("score"))
    return keep_top(scores, ctx.k).drop("rank")
