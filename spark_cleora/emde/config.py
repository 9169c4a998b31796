"""Validated, frozen configurations of the EMDE steps, loadable from TOML ``[emde.<step>]`` tables."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import check_seed, load_options
from ..errors import ConfigError

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
    source_depths
        N per embedding source (default ``depth`` for each).
    random_source
        Add a source of one seeded random vector per item (``depth`` partitionings): item-identity
        codes that let a trained model memorise single items (the paper's random source).
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
    source_depths: tuple[int, ...] = ()
    random_source: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "embeddings", _paths(self.embeddings))
        object.__setattr__(self, "source_depths", tuple(self.source_depths or ()))
        _positive_int("depth", self.depth)
        for d in self.source_depths:
            _positive_int("source-depth", d)
        _positive_int("bits", self.bits)
        if self.bits > 16:
            raise ConfigError(f"bits must be <= 16 (2**bits buckets per partitioning); got {self.bits}")
        check_seed(self.seed)
        _choice("bias", self.bias, BIAS_MODES)
        if self.fit_sample is not None:
            _positive_int("fit-sample", self.fit_sample, minimum=2)
        _positive_int("quantile-accuracy", self.quantile_accuracy)


@dataclass(frozen=True)
class CodeConfig(_Config):
    """``emde code``: code the items of new embeddings (e.g. ``spark-cleora fold-in`` output) with a
    fitted coder, without refitting it.

    Parameters
    ----------
    coder
        The coder directory written by ``emde fit`` (or by an earlier ``emde code``).
    embeddings
        One embeddings table per coder source, in the coder's source order (``entity``, ``embedding``;
        other columns are ignored).
    output
        The new coder directory: the same parameters and ``coder_id`` (sketches built with either
        coder can be scored with the other), its codes plus the new items'.
    column, overwrite
        As for ``emde fit``.
    """

    coder: str | None = None
    embeddings: tuple[str, ...] = ()
    output: str | None = None
    column: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "embeddings", _paths(self.embeddings))


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
    model, timestamp, weight, as_of, decay_anchor, customer_features, model_scoring, model_sketch_weight
        With a trained ``model`` (``emde train``): each customer's input is built from ``events``
        (up to ``as_of``) exactly as in training (``decay_anchor`` must be the model's); candidates
        score ``sum_j log q_j(i)`` (``model_scoring="log-prob"``) or its popularity-corrected form
        ``log p(i) + (model_sketch_weight / D) * sum_j log(q_j(i) / P_j(i))`` (``"popularity"``);
        ``coder`` defaults to the model's and ``sketches`` is not used.
    """

    coder: str | None = None
    sketches: str | None = None
    model: str | None = None
    timestamp: str | None = None
    weight: str | None = None
    as_of: str | float | None = None
    decay_anchor: str | None = None
    customer_features: str | None = None
    model_scoring: str = "popularity"
    model_sketch_weight: float = 2.0
    output: str | None = None
    scoring: str = "popularity"
    sketch_weight: float = 0.5
    eps: float = 1e-6
    popularity_smoothing: float = 0.0
    exclude_seen: bool = False
    candidates: str | None = None

    def __post_init__(self) -> None:
        self._check_events(required=self.exclude_seen or self.model is not None)
        self._check_scoring()
        _choice("model-scoring", self.model_scoring, ("log-prob", "popularity"))
        if self.decay_anchor is not None:
            _choice("decay-anchor", self.decay_anchor, DECAY_ANCHORS)
        if self.model is not None and not self.timestamp:
            raise ConfigError("--model needs --timestamp COL (inputs are built from the events)")
        if self.model is None and (self.as_of is not None or self.customer_features):
            raise ConfigError("--as-of and --customer-features are options of --model")
        _choice("scoring", self.scoring, SCORINGS)
        for name in ("sketch_weight", "eps", "popularity_smoothing", "model_sketch_weight"):
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
    """The ``[emde.<step>]`` table of a TOML file, typed as ``cls``'s fields (see
    :func:`spark_cleora.config.load_options`)."""
    return load_options(path, ("emde", step), cls)


SCHEDULES = ("step", "cosine", "constant")
DISTRIBUTORS = ("torch", "none")


def _positive_float(name: str, value: Any, *, allow_none: bool = True, minimum_exclusive: float = 0.0) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not value > minimum_exclusive:
        raise ConfigError(f"{name} must be a finite number > {minimum_exclusive:g}; got {value!r}")


@dataclass(frozen=True)
class ExamplesConfig(EventsConfig):
    """``emde examples``: training examples of the EMDE model (see :mod:`spark_cleora.emde.examples`).

    Parameters
    ----------
    coder, timestamp, weight
        The coder directory; the event time and optional non-negative weight columns.
    half_life
        Decay of the inputs (seconds; none: plain sums).
    session_gap, recent
        The short-term input: the session of the newest input event (events chained by gaps of at
        most ``session_gap`` seconds) or, without it, the newest ``recent`` input events (default 1).
    target_window
        Target = the target item and the next ``target_window - 1`` items, decayed.
    decay_anchor
        ``last-event`` (default): decay to the newest input event; ``as-of``: to the target's time.
    max_examples, examples_per_customer, seed
        Seeded sampling of target events (about ``max_examples`` overall, at most
        ``examples_per_customer`` per customer).
    validation_fraction
        Targets in the newest fraction of event time form the validation split.
    event_features, customer_features
        Columns of the newest input event; a table with a ``customer`` column whose other columns
        are joined by customer. Numeric columns are standardised, others embedded.
    """

    coder: str | None = None
    timestamp: str | None = None
    weight: str | None = None
    half_life: float | None = None
    session_gap: float | None = None
    recent: int = 1
    target_window: int = 1
    decay_anchor: str = "last-event"
    max_examples: int | None = None
    examples_per_customer: int | None = None
    validation_fraction: float = 0.1
    seed: int = 0
    event_features: tuple[str, ...] = ()
    customer_features: str | None = None
    output: str | None = None

    def __post_init__(self) -> None:
        self._check_examples()

    def _check_examples(self) -> None:
        self._check_events(required=True)
        object.__setattr__(self, "event_features", _paths(self.event_features))
        if not self.timestamp:
            raise ConfigError("--timestamp COL is required")
        _choice("decay-anchor", self.decay_anchor, DECAY_ANCHORS)
        _positive_float("half-life", self.half_life)
        _positive_float("session-gap", self.session_gap)
        _positive_int("recent", self.recent)
        _positive_int("target-window", self.target_window)
        for name in ("max_examples", "examples_per_customer"):
            if getattr(self, name) is not None:
                _positive_int(name.replace("_", "-"), getattr(self, name))
        v = self.validation_fraction
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ConfigError(f"validation-fraction must be in [0, 1); got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer; got {self.seed!r}")
        clash = {self.customer, self.item, self.timestamp, self.weight} & set(self.event_features)
        if clash:
            raise ConfigError(f"--event-features cannot include the event columns {sorted(c for c in clash if c)}")


@dataclass(frozen=True)
class TrainConfig(ExamplesConfig):
    """``emde train``: examples, then the residual feed-forward network trained with TorchDistributor.

    Parameters
    ----------
    examples
        Use examples written by ``emde examples`` instead of building them from ``events``.
    hidden, layers, embedding_dim
        Width and number of the hidden layers; size of each categorical feature's embedding.
    epochs, batch_size, lr, weight_decay, schedule, gamma, patience
        AdamW; ``step`` (lr x gamma after every epoch), ``cosine`` or ``constant`` schedule; early
        stopping after ``patience`` epochs without a lower validation loss (the best epoch is kept).
    recall_k
        Validation Recall@k logged per epoch.
    processes, distributor
        ``torch``: ``pyspark.ml.torch.distributor.TorchDistributor`` with this many processes
        (local processes in local mode); ``none``: train in this process.
    threads
        Torch threads per process (default: cores / processes).
    work_dir, keep_work
        Examples and per-epoch checkpoints (default ``OUTPUT.work``); a rerun of a killed training
        resumes from the last checkpoint. Removed after success unless ``keep_work``.
    context
        Hour-of-day and day-of-week features of the prediction time.
    max_vocabulary
        Most frequent values kept per categorical feature.
    overwrite
        Replace an existing model directory.
    """

    examples: str | None = None
    hidden: int = 1024
    layers: int = 3
    embedding_dim: int = 8
    epochs: int = 5
    batch_size: int = 256
    lr: float = 0.004
    weight_decay: float = 0.01
    schedule: str = "step"
    gamma: float = 0.5
    patience: int = 2
    recall_k: int = 20
    processes: int = 1
    distributor: str = "torch"
    threads: int | None = None
    work_dir: str | None = None
    keep_work: bool = False
    context: bool = True
    max_vocabulary: int = 1000
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.examples is None:
            self._check_examples()
        for name in ("hidden", "layers", "embedding_dim", "epochs", "batch_size", "patience", "recall_k",
                     "processes", "max_vocabulary"):
            _positive_int(name.replace("_", "-"), getattr(self, name))
        if self.batch_size < 2:
            raise ConfigError("batch-size must be >= 2 (batch normalisation)")
        if self.threads is not None:
            _positive_int("threads", self.threads)
        _positive_float("lr", self.lr, allow_none=False)
        _positive_float("gamma", self.gamma, allow_none=False)
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) \
                or not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight-decay must be a finite number >= 0; got {self.weight_decay!r}")
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("distributor", self.distributor, DISTRIBUTORS)
