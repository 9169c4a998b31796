"""Inputs -> hyperedge memberships, with every rejected row counted by rule.

Both input kinds end in the same *raw memberships* frame, one row per entity occurrence::

    h: long       hyperedge id (a user, a session, or a line of Cleora text)
    side: int     0 = column A, 1 = column B (a reflexive relation has side 0 only)
    col: int      index of the input column in the column spec
    entity: str   the entity name
    weight: double  1.0 per occurrence (repeats add up: multiplicity counts, as in Cleora)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pyspark.sql import Column as SparkColumn
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..runtime.compat import is_valid_utf8, try_double
from ..config import EmbedConfig, parse_columns
from ..errors import BadInputError, ConfigError
from ..storage.readers import require_columns

log = logging.getLogger(__name__)

#: the first rule a row breaks (null: a good row)
REJECT = _REJECT = "_reject"
#: input rows a raw row stands for (1, or the duplicates merged by ``dedupe``)
ROWS = "_rows"
#: Event weights outside [MIN_WEIGHT, MAX_WEIGHT] are bad rows (``bad_weight``): every sum and product the
#: graph forms stays finite then -- 2**63 weights of 1e18 sum to < 1e37, below float32's 3.4e38, and a
#: hyperedge's factor 1 / (|A| |B|) stays below 1e36 -- so no weight turns an embedding or degree into inf/NaN.
MIN_WEIGHT, MAX_WEIGHT = 1e-18, 1e18


@dataclass
class Rejections:
    """Counts of rejected input rows per rule (rows dropped under ``on_bad_rows='skip'``)."""

    counts: dict[str, int] = field(default_factory=dict)
    input_rows: int = 0
    #: entity occurrences in the accepted rows (an upper bound of the memberships; sizes the blocks)
    accepted_units: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _first_failed(rules: list[tuple[str, SparkColumn]]) -> SparkColumn:
    """Name of the first rule a row breaks, or null."""
    expr = F.lit(None).cast("string")
    for name, bad in reversed(rules):
        expr = F.when(bad, F.lit(name)).otherwise(expr)
    return expr


@dataclass
class Validation:
    """Rules flagged on the input rows (``_reject`` = the first rule a row breaks), to be counted where the
    rows are consumed and then settled by the policy: the events path counts them inside the graph
    build, so checking the input costs no pass of its own."""

    flagged: DataFrame
    rules: list[str]
    policy: str
    what: str
    show_cols: list[str]
    rejects: str | None = None

    @classmethod
    def flag(cls, df: DataFrame, rules: list[tuple[str, SparkColumn]], policy: str, what: str,
             show_cols: list[str], rejects: str | None = None) -> Validation:
        """``df`` with the first rule each row breaks in ``_reject`` (null for a good row)."""
        return cls(df.withColumn(_REJECT, _first_failed(rules)), [n for n, _ in rules], policy, what, show_cols,
                   rejects)

    def settle(self, counts: dict[str | None, int], units: int = 0) -> Rejections:
        """Apply the policy to ``counts`` (rows per rule; ``None`` = accepted rows).

        Fails with the first offending row, or writes the rejected rows (quarantine), or logs and drops.
        """
        rej = Rejections(
            counts={r: int(n) for r, n in counts.items() if r is not None and n},
            input_rows=sum(int(n) for n in counts.values()),
            accepted_units=units,
        )
        if rej.input_rows == 0:
            raise BadInputError(f"{self.what}: the input is empty (no rows were read)")
        for rule, n in sorted(rej.counts.items()):
            log.warning("%s: %d row(s) rejected by rule %s", self.what, n, rule)
        if rej.counts and self.policy == "fail":
            rule = min(rej.counts, key=lambda r: (-rej.counts[r], self.rules.index(r)))  # the most frequent rule
            first = self.flagged.filter(F.col(_REJECT) == rule).select(*self.show_cols).limit(1).collect()
            sample = first[0].asDict() if first else {}
            summary = ", ".join(f"{r}={n}" for r, n in sorted(rej.counts.items()))
            raise BadInputError(
                f"{self.what}: {rej.counts[rule]} row(s) break rule '{rule}' (all rejections: {summary}); "
                f"first offending row: {sample!r}. Fix the input or rerun with --on-bad-rows skip to drop and "
                "count them."
            )
        if rej.counts and self.policy == "quarantine":
            if not self.rejects:
                raise ConfigError("--on-bad-rows quarantine needs --rejects DIR")
            from ..storage.outputs import write_rejects  # replaces only a previous rejects output, atomically

            write_rejects(self.flagged.filter(F.col(_REJECT).isNotNull())
                          .select(*self.show_cols, F.col(_REJECT).alias("rule")), self.rejects)
            log.warning("%s: wrote %d rejected rows to %s", self.what, rej.total, self.rejects)
        if rej.counts:
            log.warning("%s: dropped %d of %d rows (--on-bad-rows %s)", self.what, rej.total, rej.input_rows,
                        self.policy)
        return rej


def apply_policy(df: DataFrame, rules: list[tuple[str, SparkColumn]], policy: str, what: str,
                 show_cols: list[str], units: SparkColumn | None = None,
                 rejects: str | None = None) -> tuple[DataFrame, Rejections]:
    """Count rule violations in one pass now, then settle them (see :meth:`Validation.settle`).

    ``units`` (default 1 per row) is summed over accepted rows: entity occurrences, to size the blocks.
    """
    validation = Validation.flag(df, rules, policy, what, show_cols, rejects)
    flagged = validation.flagged
    unit = F.lit(1) if units is None else F.when(F.col(_REJECT).isNull(), units).otherwise(0)
    stats = (  # one row per rule: bounded by the rule list
        flagged.groupBy(_REJECT).agg(F.count(F.lit(1)).alias("count"), F.sum(unit).alias("units")).collect()
    )
    rej = validation.settle({r[_REJECT]: int(r["count"]) for r in stats},
                            units=sum(int(r["units"] or 0) for r in stats if r[_REJECT] is None))
    return flagged.filter(F.col(_REJECT).isNull()).drop(_REJECT), rej


# --------------------------------------------------------------------------------------------
# Event tables
# --------------------------------------------------------------------------------------------

def epoch_seconds(df: DataFrame, name: str) -> SparkColumn:
    """Event time as epoch seconds (double): the one time parser of embed, fold-in, EMDE and the evaluations.

    Numbers are epoch seconds as they are; timestamps their instant; a DATE is its midnight in the session
    time zone (as a timestamp cast reads it, and as the string ``"2024-05-01"`` parses); strings are
    numbers or timestamps (unparseable ones are null, which the callers count as bad timestamps). Other
    types are a :class:`ConfigError`.
    """
    dtype = df.schema[name].dataType
    c = F.col(name)
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        return F.unix_micros(c.cast("timestamp")) / 1e6
    if isinstance(dtype, T.NumericType):
        return c.cast("double")
    if isinstance(dtype, T.StringType):
        return F.coalesce(try_double(name), F.unix_micros(F.try_to_timestamp(c)) / 1e6)
    raise ConfigError(f"timestamp column {name!r} has type {dtype.simpleString()}; use epoch seconds, a timestamp, "
                      "a date or a string of one")


def events_to_memberships(events: DataFrame, cfg: EmbedConfig) -> tuple[DataFrame, Validation]:
    """Group events into hyperedges (optionally split into sessions by a time gap), lazily.

    The raw rows keep the rejected ones, flagged (``_reject``, with ``_rows`` input rows per raw row,
    >1 after ``dedupe``): the graph build counts them (:func:`spark_cleora.engine.graph.build_blocks`) and
    the caller settles the policy with the counts (:meth:`Validation.settle`).
    """
    hcol, ecol, tcol, wcol = cfg.hyperedge, cfg.entity, cfg.timestamp, cfg.weight
    assert hcol and ecol
    need = [hcol, ecol] + ([tcol] if tcol else []) + ([wcol] if wcol else [])
    require_columns(events, need, "events")
    df = events.select(
        F.col(hcol).cast("string").alias("_h"),
        F.col(ecol).cast("string").alias("entity"),
        *([epoch_seconds(events, tcol).alias("_t"), F.col(tcol).alias("_t_raw")] if tcol else []),
        *([F.col(wcol).alias("_w_raw"), try_double(wcol).alias("weight")] if wcol else []),
    )
    rules = [
        ("null_hyperedge", F.col("_h").isNull()),
        ("null_entity", F.col("entity").isNull()),
        ("empty_entity", F.col("entity") == ""),
        # text and CSV readers pass undecodable bytes through as they are
        ("invalid_utf8", ~is_valid_utf8("_h") | ~is_valid_utf8("entity")),
    ]
    if tcol:
        t = F.col("_t")
        rules.append(("bad_timestamp", t.isNull() | F.isnan(t) | (F.abs(t) == float("inf"))))
    if wcol:
        w = F.col("weight")
        rules.append(("bad_weight", w.isNull() | F.isnan(w) | (w < MIN_WEIGHT) | (w > MAX_WEIGHT)))
    shown = [c for c in df.columns if c not in ("_t", "weight")]
    validation = Validation.flag(df, rules, cfg.on_bad_rows, "events", shown, cfg.rejects)
    flagged = validation.flagged
    ok = F.col(_REJECT).isNull()
    # a rejected row travels on as its rule only (its values may be null, invalid UTF-8, unparseable), with
    # a key of its own so that rejected rows spread over the partitions
    rows = flagged.select(
        F.when(ok, F.col("_h")).alias("_h"), F.when(ok, F.col("entity")).alias("entity"),
        *([F.when(ok, F.col("_t")).alias("_t")] if tcol else []),
        (F.when(ok, F.col("weight")).otherwise(F.lit(0.0)) if wcol else F.lit(1.0)).alias("weight"),
        F.col(_REJECT),
    )
    if tcol and cfg.session_gap is not None:
        w = Window.partitionBy("_h", _REJECT).orderBy("_t", "entity")  # rejected rows stay out of sessions
        gap = F.col("_t") - F.lag("_t").over(w)
        new_session = F.when(gap.isNull() | (gap > F.lit(float(cfg.session_gap))), 1).otherwise(0)
        session = F.sum(new_session).over(w.rowsBetween(Window.unboundedPreceding, Window.currentRow))
        h = F.xxhash64("_h", session)
    else:
        h = F.xxhash64("_h")
    rows = rows.withColumn("h", F.when(ok, h).otherwise(F.xxhash64(F.col(_REJECT), F.monotonically_increasing_id())))
    if cfg.dedupe:  # one event per (hyperedge, entity); with weights, the heaviest (deterministic)
        rows = rows.groupBy("h", "entity", _REJECT).agg(F.max("weight").alias("weight"),
                                                        F.count(F.lit(1)).alias(ROWS))
    else:
        rows = rows.withColumn(ROWS, F.lit(1).cast("long"))
    raw = rows.select("h", F.lit(0).alias("side"), F.lit(0).alias("col"), "entity", "weight", _REJECT, ROWS)
    return raw, validation


def constant_columns(cfg: EmbedConfig) -> tuple[str, ...]:
    """The columns of :func:`events_to_memberships`' rows that hold the same value on every row (see
    :data:`spark_cleora.engine.graph.RAW_DEFAULTS`): side and column (one of each), the weight without a
    weight column, the input rows per row without ``dedupe``."""
    return ("side", "col", *(() if cfg.weight else ("weight",)), *(() if cfg.dedupe else (ROWS,)))


# --------------------------------------------------------------------------------------------
# Cleora text: one hyperedge per line
# --------------------------------------------------------------------------------------------

def cleora_text_to_memberships(lines: DataFrame, cfg: EmbedConfig) -> tuple[DataFrame, Rejections]:
    """Parse Cleora TSV lines (``value`` column): tab between columns, one space between entities.

    Unlike pycleora we never drop or alter data silently: a line with the wrong number of cells, an
    empty entity (two spaces, an empty cell), several entities in a non-``complex`` column, or an empty
    line is a bad row under the ``on_bad_rows`` policy.
    """
    cols = parse_columns(cfg.columns or "")
    ncols = len(cols)
    line = F.regexp_replace(F.col("value"), r"^\s+|\s+$", "")
    df = lines.select(F.col("value").alias("line"), line.alias("_l"))
    df = df.withColumn("_cells", F.split("_l", "\t", -1))
    tokens = [F.split(F.col("_cells").getItem(i), " ", -1) for i in range(ncols)]
    rules: list[tuple[str, SparkColumn]] = [
        ("line_too_long", F.length("line") > F.lit(cfg.max_line_length)),
        ("invalid_utf8", ~is_valid_utf8("line")),
        ("empty_line", F.col("_l") == ""),
        ("wrong_cell_count", F.size("_cells") != ncols),
        ("empty_entity", F.exists(F.array(*tokens), lambda toks: F.exists(toks, lambda t: t == ""))),
    ]
    simple = [i for i, c in enumerate(cols) if not c.complex]
    if simple:
        rules.append(("several_entities_in_simple_column", F.greatest(*[F.size(tokens[i]) for i in simple],
                                                                      F.lit(1)) > 1))
    n_tokens = sum((F.size(t) for t in tokens), F.lit(0))
    clean, rej = apply_policy(df, rules, cfg.on_bad_rows, "cleora-tsv", ["line"], units=n_tokens,
                              rejects=cfg.rejects)
    clean = clean.withColumn("h", F.monotonically_increasing_id())
    parts = []
    for i, _ in enumerate(cols):
        side = 0 if (ncols == 1 or i == 0) else 1
        parts.append(
            clean.select(
                "h",
                F.lit(side).alias("side"),
                F.lit(i).alias("col"),
                F.explode(F.split(F.col("_cells").getItem(i), " ", -1)).alias("entity"),
                F.lit(1.0).alias("weight"),
            )
        )
    raw = parts[0]
    for p in parts[1:]:
        raw = raw.unionByName(p)
    return raw, rej
