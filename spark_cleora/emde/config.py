"""Validated, frozen configurations of the EMDE steps, loadable from TOML ``[emde.<step>]`` tables."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compat import tomllib
from ..config import ConfigError

BIAS_MODES = ("median", "random-quantile")
DECAY_ANCHORS = ("as-of", "last-event")
SCORINGS = ("popularity", "geometric")
TABLE_FORMATS = ("parquet", "csv", "tsv", "table")


def _paths(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, Path)):
        return (str(value),)
    return tuple(str(p) for p in value)


def _positive_int(name: str, value: Any, *, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}; got {value!r}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


class _Config:
    """Shared helpers of the EMDE step configs (all frozen dataclasses)."""

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class FitConfig(_Config):
    """``emde fit``: a density-dependent LSH coder over one or more item-embedding sources.

    Parameters
    ----------
    embeddings
        Embedding sources (Parquet with ``entity`` string and ``embedding`` array<float>, e.g. the
        output of ``spark-cleora embed``); each source gets its own partitionings, concatenated with
        offsets.
    output
        The coder directory: ``params`` and ``codes`` (Parquet), ``manifest.json``.
    depth, bits
        N independent partitionings per source, each from K hyperplanes -> 2**K buckets.
    seed
        Seeds the Gaussian directions (and the random quantile levels).
    bias
        ``median`` (every hyperplane splits the fitted items 50/50; later Synerise code) or
        ``random-quantile`` (the paper's submission code: a uniformly random quantile level).
    standardize
        Standardise each embedding dimension (mean 0, std 1 over the fitted items) before projecting.
    fit_sample
        Fit on a seeded Bernoulli sample of about this many items per source (huge tables).
    column
        Keep only embedding rows whose ``column`` equals this (two-column embed outputs).
    quantile_accuracy
        ``percentile_approx`` accuracy; biases are exact when a source has at most this many items.
    overwrite
        Replace an existing coder (its codes change; sketches made with it can no longer be scored).
    """

    embeddings: tuple[str, ...] = ()
    output: str | None = None
    depth: int = 10
    bits: int = 7
    seed: int = 0
    bias: str = "median"
    standardize: bool = True
    fit_sample: int | None = None
    column: str | None = None
    quantile_accuracy: int = 10_000
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "embeddings", _paths(self.embeddings))
        _positive_int("depth", self.depth)
        _positive_int("bits", self.bits)
        if self.bits > 16:
            raise ConfigError(f"bits must be <= 16 (2**bits buckets per partitioning); got {self.bits}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer; got {self.seed!r}")
        _choice("bias", self.bias, BIAS_MODES)
        if self.fit_sample is not None:
            _positive_int("fit-sample", self.fit_sample, minimum=2)
        _positive_int("quantile-accuracy", self.quantile_accuracy)


@dataclass(frozen=True)
class EventsConfig(_Config):
    """Where events are and which columns they use (shared by sketch, recommend, evaluate)."""

    events: tuple[str, ...] = ()
    events_format: str = "parquet"
    customer: str | None = None
    item: str | None = None

    def _check_events(self, *, required: bool) -> None:
        object.__setattr__(self, "events", _paths(self.events))
        _choice("events-format", self.events_format, TABLE_FORMATS)
        if not self.events:
            if required:
                raise ConfigError("--events PATH is required")
            return
        if not self.customer or not self.item:
            raise ConfigError("events need --customer COL and --item COL")
        if self.customer == self.item:
            raise ConfigError("--customer and --item must be different columns")


@dataclass(frozen=True)
class SketchConfig(EventsConfig):
    """``emde sketch``: decayed, additive customer sketches from events.

    Parameters
    ----------
    coder
        The coder directory written by ``emde fit``.
    timestamp, half_life, as_of, decay_anchor
        With ``half_life`` (seconds) an event at time t weighs ``0.5 ** ((anchor - t) / half_life)``;
        the anchor is ``as_of`` (``decay_anchor="as-of"``, default) or each customer's newest event
        (``"last-event"``, the paper's session decay, immune to float underflow for idle customers).
        ``as_of`` (epoch seconds or a timestamp string; default: the newest event) also excludes later
        events.
    weight
        Optional non-negative event weight column (default 1 per event).
    previous
        An earlier sketch table to refresh: it is decayed to the new ``as_of`` and only newer events
        are added (equal to a full recompute).
    """

    coder: str | None = None
    timestamp: str | None = None
    weight: str | None = None
    half_life: float | None = None
    as_of: str | float | None = None
    decay_anchor: str = "as-of"
    previous: str | None = None
    output: str | None = None

    def __post_init__(self) -> None:
        self._check_events(required=True)
        _choice("decay-anchor", self.decay_anchor, DECAY_ANCHORS)
        if self.half_life is not None:
            if isinstance(self.half_life, bool) or not isinstance(self.half_life, (int, float)) \
                    or not (math.isfinite(self.half_life) and self.half_life > 0):
                raise ConfigError(f"half-life must be a positive number of seconds; got {self.half_life!r}")
            object.__setattr__(self, "half_life", float(self.half_life))
        for name in ("half_life", "as_of", "previous"):
            if getattr(self, name) is not None and not self.timestamp:
                raise ConfigError(f"--{name.replace('_', '-')} needs --timestamp COL")
        if self.decay_anchor == "last-event" and self.half_life is None:
            raise ConfigError("--decay-anchor last-event needs --half-life")
        if self.timestamp and self.timestamp in (self.customer, self.item):
            raise ConfigError("--timestamp must differ from --customer and --item")


@dataclass(frozen=True)
class ScoringConfig(_Config):
    """Options shared by the top-k steps (recommend, similar-customers)."""

    k: int = 10
    batch_size: int = 1024
    chunk_size: int = 20_000

    def _check_scoring(self) -> None:
        _positive_int("k", self.k)
        _positive_int("batch-size", self.batch_size)
        _positive_int("chunk-size", self.chunk_size)


@dataclass(frozen=True)
class RecommendConfig(ScoringConfig, EventsConfig):
    """``emde recommend``: top-k items per customer from its sketch.

    Parameters
    ----------
    scoring
        ``popularity`` (default): ``log p(i) + sketch_weight * mean_j[log(eps + q_j(i)) - log P(b_j(i))]``,
        the paper's popularity-corrected decoder with the per-partitioning evidence averaged and weighted
        (``sketch_weight = N`` is the paper's plain sum); ``geometric``: ``exp(mean_j log(eps + q_j(i)))``,
        the official ``multi_query`` decoder. ``q`` is the customer sketch L1-normalised per partitioning.
    sketch_weight, eps, popularity_smoothing
        Decoder constants; item popularity ``p(i)`` (plus the smoothing pseudo-count) comes from the
        events the sketches were built from.
    exclude_seen
        Never recommend an item the customer has an event with in ``events``.
    candidates
        Parquet (or csv/tsv with a header) with an ``item`` column: score only these items.
    """

    coder: str | None = None
    sketches: str | None = None
    output: str | None = None
    scoring: str = "popularity"
    sketch_weight: float = 0.5
    eps: float = 1e-6
    popularity_smoothing: float = 0.0
    exclude_seen: bool = False
    candidates: str | None = None

    def __post_init__(self) -> None:
        self._check_events(required=self.exclude_seen)
        self._check_scoring()
        _choice("scoring", self.scoring, SCORINGS)
        for name in ("sketch_weight", "eps", "popularity_smoothing"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be a finite number >= 0; got {v!r}")
        if not self.eps > 0:
            raise ConfigError("eps must be > 0")


@dataclass(frozen=True)
class SimilarCustomersConfig(ScoringConfig):
    """``emde similar-customers``: the k customers whose sketches are most similar (cosine of the
    sketches L2-normalised per partitioning), for every customer or for the given ones."""

    sketches: str | None = None
    output: str | None = None
    coder: str | None = None
    customers: tuple[str, ...] = ()
    queries: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "customers", _paths(self.customers))
        self._check_scoring()
        if self.customers and self.queries:
            raise ConfigError("give --customer IDs or --queries PATH, not both")


def load_emde_toml(path: str | Path, step: str, cls: type) -> dict[str, Any]:
    """The ``[emde.<step>]`` table of a TOML file, checked against ``cls``'s fields."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    body = data.get("emde", {}).get(step, {}) if isinstance(data.get("emde"), dict) else {}
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: [emde.{step}] must be a table")
    known = cls.field_names()
    out: dict[str, Any] = {}
    for key, val in body.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{path}: unknown option {key!r} in [emde.{step}] (known: {', '.join(sorted(known))})")
        out[name] = val
    return out
