"""Validated, frozen configuration of an embedding run, loadable from TOML."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runtime.compat import tomllib
from .errors import ConfigError

MARKOV_KINDS = ("left", "symmetric")
INIT_METHODS = ("siphash", "fx")  # start-vector hashes (spark_cleora.engine.start_vectors)
INPUT_FORMATS = ("parquet", "csv", "tsv", "table", "cleora-tsv", "dataframe")  # dataframe: library calls
OUTPUT_FORMATS = ("parquet", "delta", "npy", "cleora-text")
TABLE_FORMATS = ("parquet", "delta")  # formats a catalog table (--output-table) can have
PARTITION_COLUMNS = ("column",)  # low-cardinality output columns worth partitioning by
BAD_ROW_POLICIES = ("fail", "skip", "quarantine")
CHECKPOINT_MODES = ("parquet", "local")
WHITEN_MODES = ("none", "every", "final")
ENGINES = ("auto", "one-task", "shuffle")
_MODIFIERS = ("complex", "reflexive", "transient")


@dataclass(frozen=True)
class Column:
    """One column of a Cleora column spec such as ``complex::reflexive::product``."""

    name: str
    complex: bool = False
    reflexive: bool = False
    transient: bool = False

    @property
    def spec(self) -> str:
        mods = [m for m in _MODIFIERS if getattr(self, m)]
        return "::".join([*mods, self.name])


def parse_columns(spec: str) -> tuple[Column, ...]:
    """Parse a Cleora column spec into the single relation pycleora accepts, plus ``transient::``.

    Valid forms: ``complex::reflexive::X`` (one column: each line is one hyperedge, clique over its
    entities), or two columns ``X Y`` with ``complex::`` and/or ``transient::`` on either (each line links
    the entities of X with those of Y). A ``transient`` column joins the graph but is not written out.
    """
    cols = []
    for tok in spec.split():
        parts = tok.split("::")
        name, mods = parts[-1], [p.lower() for p in parts[:-1]]
        unknown = [m for m in mods if m not in _MODIFIERS]
        if unknown or not name:
            raise ConfigError(
                f"column spec {tok!r}: unknown modifier(s) {unknown} (allowed: {', '.join(_MODIFIERS)})"
                if unknown
                else f"column spec {tok!r} has no column name"
            )
        col = Column(name, complex="complex" in mods, reflexive="reflexive" in mods, transient="transient" in mods)
        if col.reflexive and not col.complex:
            raise ConfigError(f"column {tok!r}: 'reflexive' needs 'complex' (write complex::reflexive::{name})")
        if col.reflexive and col.transient:
            raise ConfigError(f"column {tok!r}: 'reflexive' cannot be combined with 'transient'")
        cols.append(col)
    if len({c.name for c in cols}) != len(cols):
        raise ConfigError(f"column spec {spec!r} repeats a column name")
    if len(cols) == 1 and cols[0].reflexive:
        return tuple(cols)
    if len(cols) == 2 and not any(c.reflexive for c in cols):
        if all(c.transient for c in cols):
            raise ConfigError(f"column spec {spec!r}: at least one column must not be transient")
        return tuple(cols)
    raise ConfigError(
        f"column spec {spec!r} does not describe one relation: use 'complex::reflexive::X' (one column, "
        "clique over each line) or two columns 'X Y' with optional complex::/transient:: modifiers"
    )


@dataclass(frozen=True)
class EmbedConfig:
    """Everything that defines a Cleora embedding run.

    Parameters
    ----------
    inputs
        Paths (or one catalog table name with ``input_format="table"``) to read.
    input_format
        ``parquet``, ``csv``, ``tsv`` (event tables with a header) or ``table`` for events;
        ``cleora-tsv`` for Cleora's one-hyperedge-per-line text.
    hyperedge, entity
        Event-table columns: events are grouped by ``hyperedge`` (a user or session) and the
        ``entity`` values of a group form one hyperedge (a clique, as ``complex::reflexive::entity``).
    timestamp, session_gap
        With both, a hyperedge's events split into sessions wherever consecutive events are more than
        ``session_gap`` seconds apart.
    dedupe
        Drop repeated (hyperedge, entity) events; by default multiplicity counts, as in Cleora.
        With ``weight``, the repeat with the largest weight is kept.
    weight
        Event column with a real, positive weight per event: an event of weight w counts as w
        occurrences, i.e. it generalises Cleora's multiplicity (weight 2 is exactly the event given
        twice). Null, NaN, infinite, zero or negative weights, and weights outside [1e-18, 1e18] (where the
        graph's sums could overflow), are bad rows (``bad_weight``).
    columns
        Column spec for ``cleora-tsv`` input (see :func:`parse_columns`).
    dim, iterations, markov, init, seed
        Embedding size, propagation steps, ``left`` (W/D) or ``symmetric`` (W/sqrt(D D)) Markov
        matrix, start-vector hash (``siphash`` = pycleora 2.0.0, ``fx`` = pycleora 3.x) and its seed.
    whiten
        PCA whitening as pycleora 3.x: ``every`` iteration (3.2.1 ``embed()``), once at the ``final``
        one (3.0/3.2.0), or ``none``. Whitened rows are centred and decorrelated, not unit length.
    residual
        pycleora 3.x residual mixing: each iteration is ``rownorm((1 - α)·M·X + α·X)``; 0 (default) is
        plain Cleora. ``0 <= α < 1``.
    multiscale
        Iterations whose embeddings are concatenated into the output (e.g. ``(1, 2, 4)``), as pycleora's
        ``embed_multiscale``: each part as that iteration left it (unit length unless whitened), so the
        output has ``dim * len(multiscale)`` values. Empty (default): the last iteration only.
    init_vectors
        Parquet of ``entity`` -> ``vector`` (or ``embedding``) array of length ``dim``: these start
        vectors replace the hash init for the entities they name; other entities keep the hash init.
    output, output_format
        Where and how to write: ``parquet`` (default), ``delta`` (Spark's Delta writer; needs Delta
        on the classpath, built into Databricks), ``npy`` or ``cleora-text``.
    output_table, partition_by
        Write a catalog table instead of ``output`` (``parquet`` or ``delta``; overwritten
        atomically), and partition the output by these columns (only ``column``, the input column).
    work_dir, checkpoint, keep_work
        Where each finished iteration is written (lineage cut + resume), ``parquet`` (restartable,
        the CLI default) or ``local`` (``localCheckpoint``, nothing on disk), and whether to keep it
        (with ``keep_work`` every finished iteration stays; otherwise only the last one is kept).
    num_blocks, block_memberships
        Engine: the hyperedges are split into blocks, each built by one task; by default a block holds
        as many memberships as fit ``block_memory_gb`` in the worst case (its tasks work on 64
        dimensions at a time: at most 25 bytes per membership x dim at dim 256, 56 up to dim 64, see
        :func:`spark_cleora.engine.propagate.block_bytes_per_row_dim`; e.g. ~670k memberships at dim 256
        and 4 GiB). The shuffle engine's iterations then multiply groups of neighbouring blocks, as few
        as fit ``block_memory_gb`` by the blocks' measured sizes, and at least as many as the task slots
        or shuffle partitions, whichever is fewer (:func:`spark_cleora.engine.propagate.group_blocks`).
    block_memory_gb
        Memory one Python worker may use (for one block or group of blocks; with the one-task engine, for
        the whole graph).
        A hyperedge always lives in one block, so a hyperedge whose members x dim x that same bound
        exceed it is refused with a clear error up front. Default (None): 4, or when Spark runs in local
        mode (``local[N]``) what the driver's heap (half the machine's memory: its RAM, or a container's
        cgroup limit below it) and a 1 GiB reserve leave, split over the N workers, at most a quarter
        of the memory and at least 0.5; for the one-task engine, whose task runs alone, all of what
        they leave.
    engine
        How the iterations run. ``shuffle``: each iteration is a distributed multiply (by block) and sum
        (by entity), memory bounded per block, no limit on the graph. ``one-task``: all iterations in one
        Python task (threads over the dimensions), no per-iteration shuffles or writes; the whole iteration
        state must fit ``block_memory_gb`` (by default in local mode: the workers' memory together).
        ``auto`` (default): ``one-task`` when its estimated memory fits, else ``shuffle``. Both give
        the same numbers.
    on_bad_rows, rejects
        ``fail`` (default) stops with the rule, count and first offending row; ``skip`` drops
        bad rows and reports the counts per rule; ``quarantine`` also writes them (with the rule) as
        Parquet to ``rejects``.
    max_line_length
        Cleora text lines longer than this many characters are bad rows (``line_too_long``).
    """

    inputs: tuple[str, ...] = ()
    input_format: str = "parquet"
    hyperedge: str | None = None
    entity: str | None = None
    timestamp: str | None = None
    session_gap: float | None = None
    dedupe: bool = False
    weight: str | None = None
    columns: str | None = None
    dim: int = 256
    iterations: int = 4
    markov: str = "left"
    init: str = "siphash"
    seed: int = 0
    whiten: str = "none"
    residual: float = 0.0
    multiscale: tuple[int, ...] = ()
    init_vectors: str | None = None
    output: str | None = None
    output_format: str = "parquet"
    output_table: str | None = None
    partition_by: tuple[str, ...] = ()
    work_dir: str | None = None
    checkpoint: str = "parquet"
    keep_work: bool = False
    num_blocks: int | None = None
    block_memberships: int | None = None
    block_memory_gb: float | None = None
    engine: str = "auto"
    on_bad_rows: str = "fail"
    rejects: str | None = None
    max_line_length: int = 10_000_000
    csv_delimiter: str | None = None

    def __post_init__(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            val = getattr(self, name)
            if val not in allowed:
                raise ConfigError(f"{name.replace('_', '-')} must be one of {', '.join(allowed)}; got {val!r}")

        if isinstance(self.inputs, (str, Path)):
            object.__setattr__(self, "inputs", (str(self.inputs),))
        else:
            object.__setattr__(self, "inputs", tuple(str(p) for p in self.inputs))
        choice("input_format", INPUT_FORMATS)
        choice("output_format", OUTPUT_FORMATS)
        choice("markov", MARKOV_KINDS)
        choice("init", INIT_METHODS)
        choice("on_bad_rows", BAD_ROW_POLICIES)
        choice("checkpoint", CHECKPOINT_MODES)
        choice("whiten", WHITEN_MODES)
        choice("engine", ENGINES)
        self._check_output()
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ConfigError(f"dim must be a positive integer; got {self.dim!r}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ConfigError(f"iterations must be an integer >= 1 (0 would return the raw start vectors, not "
                              f"unit-length embeddings); got {self.iterations!r}")
        _check_propagation_options(self)
        check_seed(self.seed)
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ConfigError(f"num-blocks must be >= 1; got {self.num_blocks}")
        if self.block_memberships is not None and self.block_memberships < 1:
            raise ConfigError(f"block-memberships must be >= 1; got {self.block_memberships}")
        if self.input_format == "cleora-tsv":
            if not self.columns:
                raise ConfigError("cleora-tsv input needs --columns, e.g. 'complex::reflexive::product'")
            parse_columns(self.columns)
            if self.hyperedge or self.entity or self.timestamp or self.weight:
                raise ConfigError("--hyperedge/--entity/--timestamp/--weight apply to event tables, not cleora-tsv")
            if self.dedupe or self.session_gap is not None or self.csv_delimiter is not None:
                raise ConfigError("--dedupe/--session-gap/--csv-delimiter apply to event tables, not cleora-tsv")
        else:
            if self.columns:
                raise ConfigError("--columns applies to --input-format cleora-tsv only")
            if not self.hyperedge or not self.entity:
                raise ConfigError(
                    f"{self.input_format} event input needs --hyperedge COL and --entity COL "
                    "(the user/session column and the item column)"
                )
            if self.hyperedge == self.entity:
                raise ConfigError("--hyperedge and --entity must be different columns")
            if self.weight is not None and self.weight in (self.hyperedge, self.entity):
                raise ConfigError("--weight must name its own column (not the hyperedge or entity column)")
        if (self.session_gap is None) != (self.timestamp is None) and self.session_gap is not None:
            raise ConfigError("--session-gap needs --timestamp COL")
        if self.session_gap is not None and not self.session_gap > 0:
            raise ConfigError(f"session-gap must be > 0 seconds; got {self.session_gap}")
        if self.on_bad_rows == "quarantine" and not self.rejects:
            raise ConfigError("--on-bad-rows quarantine needs --rejects DIR (where rejected rows are written)")
        if self.rejects and self.on_bad_rows != "quarantine":
            raise ConfigError(f"--rejects is written only with --on-bad-rows quarantine (got --on-bad-rows "
                              f"{self.on_bad_rows}); add --on-bad-rows quarantine or drop --rejects")
        if self.csv_delimiter is not None and self.input_format not in ("csv", "tsv"):
            raise ConfigError(f"--csv-delimiter applies to csv/tsv input, not {self.input_format}")
        if self.block_memory_gb is not None and not self.block_memory_gb > 0:
            raise ConfigError(f"block-memory-gb must be > 0; got {self.block_memory_gb}")
        if self.max_line_length < 1:
            raise ConfigError(f"max-line-length must be >= 1; got {self.max_line_length}")
        if self.input_format == "table" and len(self.inputs) != 1:
            raise ConfigError("input-format table takes exactly one table name")

    @property
    def output_dim(self) -> int:
        """Length of an output embedding: ``dim``, times the number of parts with ``multiscale``."""
        return self.dim * max(1, len(self.multiscale))

    def _check_output(self) -> None:
        if isinstance(self.partition_by, str):
            object.__setattr__(self, "partition_by", (self.partition_by,))
        object.__setattr__(self, "partition_by", tuple(self.partition_by))
        bad = [c for c in self.partition_by if c not in PARTITION_COLUMNS]
        if bad:
            raise ConfigError(f"partition-by {bad} is not allowed: only {', '.join(PARTITION_COLUMNS)} "
                              "(one directory per value; entity or degree would make millions)")
        if self.output_table is not None:
            if self.output:
                raise ConfigError("give --output DIR or --output-table NAME, not both")
            if self.output_format not in TABLE_FORMATS:
                raise ConfigError(f"--output-table writes {' or '.join(TABLE_FORMATS)}; "
                                  f"got --output-format {self.output_format}")
            parts = self.output_table.split(".")
            if not 1 <= len(parts) <= 3 or not all(parts):
                raise ConfigError(f"--output-table expects [catalog.]db.table or table; got {self.output_table!r}")
        if self.partition_by and self.output_format not in TABLE_FORMATS:
            raise ConfigError(f"partition-by applies to parquet/delta output, not {self.output_format}")

    @property
    def column_spec(self) -> tuple[Column, ...]:
        """The relation's columns; event tables are ``complex::reflexive::<entity>``."""
        if self.input_format == "cleora-tsv":
            return parse_columns(self.columns or "")
        return (Column(self.entity or "entity", complex=True, reflexive=True),)

    def replace(self, **changes: Any) -> EmbedConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"] = list(self.inputs)
        d["multiscale"] = list(self.multiscale)
        return d

    def fingerprint_fields(self) -> dict[str, Any]:
        """The fields that change the numbers (used to refuse resuming a different run); see
        :data:`FINGERPRINTED` and :data:`NOT_FINGERPRINTED` for each field's reason."""
        d = self.to_dict()
        fp = {k: d[k] for k in FINGERPRINTED}
        if self.whiten != "final":  # see FINGERPRINTED["iterations"]
            fp["iterations"] = None
        if fp["on_bad_rows"] != "quarantine":  # see FINGERPRINTED["on_bad_rows"]
            fp["on_bad_rows"] = "fail-or-skip"
        return fp


#: Fields that change the prepared graph or the stored iterations: a work directory holding another value
#: of any of them is not resumed from. Every field of :class:`EmbedConfig` is in exactly one of the two
#: tables (a test checks it), so a new option needs a decision here.
FINGERPRINTED: dict[str, str] = {
    "inputs": "the rows read (with a checksum of local files, see spark_cleora.engine.embed.fingerprint)",
    "input_format": "how the rows are parsed",
    "hyperedge": "groups the events into hyperedges",
    "entity": "the entities",
    "timestamp": "orders events and splits sessions; unreadable ones are rejected",
    "session_gap": "splits hyperedges",
    "dedupe": "drops repeated events",
    "weight": "each event's multiplicity",
    "columns": "the relation read from cleora-tsv",
    "csv_delimiter": "how CSV lines split into columns",
    "max_line_length": "which cleora-tsv lines are rejected",
    "on_bad_rows": "quarantine only: rejected rows are written while the graph is built, so a resumed graph "
                   "would not write them; fail and skip build the same graph (a rerun with skip after a "
                   "failed or killed fail run resumes)",
    "rejects": "where rejected rows are written, which happens only while the graph is built",
    "dim": "the vector length",
    "iterations": "with whiten = final only: the last iteration is stored whitened, so a longer run cannot "
                  "continue from it (otherwise a longer run continues from the last finished iteration)",
    "markov": "the transition matrix",
    "init": "the start vectors",
    "seed": "the start vectors",
    "whiten": "the stored iterations",
    "residual": "the stored iterations",
    "multiscale": "which iterations are kept",
    "init_vectors": "the start vectors (the file's checksum is fingerprinted too)",
}
NOT_FINGERPRINTED: dict[str, str] = {
    "output": "where the result is written, not what it is",
    "output_format": "how the result is written",
    "output_table": "where the result is written",
    "partition_by": "the output's directory layout",
    "work_dir": "the work directory itself",
    "keep_work": "what is deleted after success",
    "checkpoint": "local keeps nothing to resume from",
    "num_blocks": "the prepared graph records its block count and a resumed run uses it",
    "block_memberships": "as num_blocks",
    "block_memory_gb": "memory budget only; the engines and block counts give the same numbers",
    "engine": "both engines give the same numbers and resume each other's iterations",
}


def _check_propagation_options(cfg: EmbedConfig) -> None:
    """Validate (and normalise) ``residual``, ``multiscale`` and ``init_vectors``."""
    alpha = cfg.residual
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 1:
        raise ConfigError(f"residual must be a number with 0 <= residual < 1 (pycleora's residual_weight); "
                          f"got {alpha!r}")
    object.__setattr__(cfg, "residual", float(alpha))
    scales = cfg.multiscale
    if isinstance(scales, str):  # the CLI's "1,2,4"
        try:
            scales = tuple(int(s) for s in scales.replace(" ", "").split(",") if s)
        except ValueError:
            raise ConfigError(f"multiscale must be comma-separated iterations like 1,2,4; got {cfg.multiscale!r}")
    scales = tuple(scales or ())
    if any(isinstance(s, bool) or not isinstance(s, int) for s in scales):
        raise ConfigError(f"multiscale must list whole iteration numbers; got {cfg.multiscale!r}")
    if scales and (list(scales) != sorted(set(scales)) or scales[0] < 1 or scales[-1] != cfg.iterations):
        raise ConfigError(
            f"multiscale {','.join(map(str, scales))}: iterations must be increasing, >= 1, and the last must "
            f"equal --iterations ({cfg.iterations}), e.g. --iterations 4 --multiscale 1,2,4"
        )
    object.__setattr__(cfg, "multiscale", scales)
    if cfg.init_vectors is not None and not str(cfg.init_vectors):
        raise ConfigError("init-vectors must be a path to a Parquet of entity -> vector")


#: seeds are Spark/numpy 64-bit integers: a larger one would wrap silently (2**64 + 5 would act as 5)
SEED_RANGE = (-(2**63), 2**63 - 1)


def check_seed(seed: Any, name: str = "seed") -> None:
    """Refuse a seed that is not an integer in the signed 64-bit range."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{name} must be an integer; got {seed!r}")
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ConfigError(f"{name} must fit a signed 64-bit integer ({SEED_RANGE[0]} .. {SEED_RANGE[1]}); got {seed}")


def field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(EmbedConfig)}


def load_toml(path: str | Path, section: str = "embed") -> dict[str, Any]:
    """Read ``[section]`` of a TOML file (or the top level if the section is absent), typed as
    :class:`EmbedConfig`'s fields (see :func:`load_options`)."""
    return load_options(path, (section,), EmbedConfig, fallback_to_top=True)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing file or a syntax error is a :class:`ConfigError` naming the file."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_options(path: str | Path, section: tuple[str, ...], cls: type, *,
                 fallback_to_top: bool = False) -> dict[str, Any]:
    """The table ``[a.b]`` (``section=("a", "b")``) of a TOML file as keyword arguments of the dataclass
    ``cls``, every value checked against its field's type.

    TOML is typed, so a value must already have its option's type: ``true``/``false`` for a flag (the
    string ``"false"`` is refused, not read as true), a whole number for an integer option (``true`` is
    not 1, ``4.0`` is not 4), a number for a real option, a string for a text option and a list for a
    list option (a single string is accepted for a list of strings). Unknown keys, wrong types and syntax
    errors are :class:`ConfigError` naming the file, the key and the expected type. Keys may be written
    with ``-`` or ``_``.
    """
    data = read_toml(path)
    body: Any = data
    for part in section:
        if not isinstance(body, dict) or part not in body:
            body = data if fallback_to_top else {}
            break
        body = body[part]
    where = "[" + ".".join(section) + "]"
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: {where} must be a table")
    types = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, val in body.items():
        name = key.replace("-", "_")
        if name not in known:
            if fallback_to_top and body is data and isinstance(val, dict):
                continue  # another tool's table in a shared file (e.g. [emde.fit] beside top-level keys)
            raise ConfigError(f"{path}: unknown option {key!r} in {where} (known: {', '.join(sorted(known))})")
        out[name] = _typed(val, types[name], f"{path}: {where} {key}")
    return out


def _typed(val: Any, hint: Any, where: str) -> Any:
    """``val`` if it has the type ``hint`` (tuples from lists, ints widened to float), else ConfigError."""
    ok, got = _match(val, hint)
    if not ok:
        raise ConfigError(f"{where} must be {_describe(hint)}; got {type(val).__name__} {val!r}")
    return got


def _match(val: Any, hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            ok, got = _match(val, arg)
            if ok:
                return True, got
        return False, None
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(val, str) and item is str:
            return True, (val,)
        if not isinstance(val, list):
            return False, None
        items = [_match(v, item) for v in val]
        return (True, tuple(g for _, g in items)) if all(ok for ok, _ in items) else (False, None)
    if hint is type(None):
        return val is None, val
    if hint is bool:
        return isinstance(val, bool), val
    if hint is int:
        return isinstance(val, int) and not isinstance(val, bool), val
    if hint is float:
        ok = isinstance(val, (int, float)) and not isinstance(val, bool)
        return ok, float(val) if ok else None
    if hint is str:
        return isinstance(val, str), val
    raise TypeError(f"no TOML rule for the field type {hint!r}")  # a new field type: add its rule here


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    return {bool: "a boolean (true or false, unquoted)", int: "an integer", float: "a number",
            str: "a string"}.get(hint, str(hint))
