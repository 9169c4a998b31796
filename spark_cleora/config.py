"""Validated, frozen configuration of an embedding run, loadable from TOML."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .init import INIT_METHODS

MARKOV_KINDS = ("left", "symmetric")
INPUT_FORMATS = ("parquet", "csv", "tsv", "table", "cleora-tsv", "dataframe")  # dataframe: library calls
OUTPUT_FORMATS = ("parquet", "npy", "cleora-text")
BAD_ROW_POLICIES = ("fail", "skip", "quarantine")
CHECKPOINT_MODES = ("parquet", "local")
WHITEN_MODES = ("none", "every", "final")
_MODIFIERS = ("complex", "reflexive", "transient")


class ConfigError(ValueError):
    """An invalid option or combination of options; the message says which and how to fix it."""


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
    columns
        Column spec for ``cleora-tsv`` input (see :func:`parse_columns`).
    dim, iterations, markov, init, seed
        Embedding size, propagation steps, ``left`` (W/D) or ``symmetric`` (W/sqrt(D D)) Markov
        matrix, start-vector hash (``siphash`` = pycleora 2.0.0, ``fx`` = pycleora 3.x) and its seed.
    whiten
        PCA whitening as pycleora 3.x: ``every`` iteration (3.2.1 ``embed()``), once at the ``final``
        one (3.0/3.2.0), or ``none``. Whitened rows are centred and decorrelated, not unit length.
    output, output_format
        Where and how to write: ``parquet`` (default), ``npy`` or ``cleora-text``.
    work_dir, checkpoint, keep_work
        Where each finished iteration is written (lineage cut + resume), ``parquet`` (restartable,
        the CLI default) or ``local`` (``localCheckpoint``, nothing on disk), and whether to keep it
        (with ``keep_work`` every finished iteration stays; otherwise only the last one is kept).
    num_blocks, block_memberships
        Engine: the hyperedges are split into blocks that each Python worker multiplies in one go;
        by default a block holds about 2**26 / dim memberships (its float64 working set ~512 MiB).
    block_memory_gb
        Memory one Python worker may use for one block. A hyperedge always lives in one block, so a
        hyperedge whose members x dim x 24 bytes exceed it is refused with a clear error up front.
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
    columns: str | None = None
    dim: int = 256
    iterations: int = 4
    markov: str = "left"
    init: str = "siphash"
    seed: int = 0
    whiten: str = "none"
    output: str | None = None
    output_format: str = "parquet"
    work_dir: str | None = None
    checkpoint: str = "parquet"
    keep_work: bool = False
    num_blocks: int | None = None
    block_memberships: int | None = None
    block_memory_gb: float = 4.0
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
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ConfigError(f"dim must be a positive integer; got {self.dim!r}")
        if not isinstance(self.iterations, int) or self.iterations < 0:
            raise ConfigError(f"iterations must be a non-negative integer; got {self.iterations!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer; got {self.seed!r}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ConfigError(f"num-blocks must be >= 1; got {self.num_blocks}")
        if self.block_memberships is not None and self.block_memberships < 1:
            raise ConfigError(f"block-memberships must be >= 1; got {self.block_memberships}")
        if self.input_format == "cleora-tsv":
            if not self.columns:
                raise ConfigError("cleora-tsv input needs --columns, e.g. 'complex::reflexive::product'")
            parse_columns(self.columns)
            if self.hyperedge or self.entity or self.timestamp:
                raise ConfigError("--hyperedge/--entity/--timestamp apply to event tables, not cleora-tsv")
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
        if (self.session_gap is None) != (self.timestamp is None) and self.session_gap is not None:
            raise ConfigError("--session-gap needs --timestamp COL")
        if self.session_gap is not None and not self.session_gap > 0:
            raise ConfigError(f"session-gap must be > 0 seconds; got {self.session_gap}")
        if self.on_bad_rows == "quarantine" and not self.rejects:
            raise ConfigError("--on-bad-rows quarantine needs --rejects DIR (where rejected rows are written)")
        if not self.block_memory_gb > 0:
            raise ConfigError(f"block-memory-gb must be > 0; got {self.block_memory_gb}")
        if self.max_line_length < 1:
            raise ConfigError(f"max-line-length must be >= 1; got {self.max_line_length}")
        if self.input_format == "table" and len(self.inputs) != 1:
            raise ConfigError("input-format table takes exactly one table name")

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
        return d

    def fingerprint_fields(self) -> dict[str, Any]:
        """The fields that change the numbers (used to refuse resuming a different run)."""
        keys = ("inputs", "input_format", "hyperedge", "entity", "timestamp", "session_gap", "dedupe",
                "columns", "dim", "markov", "init", "seed", "whiten", "on_bad_rows", "csv_delimiter", "max_line_length")
        d = self.to_dict()
        return {k: d[k] for k in keys}


def field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(EmbedConfig)}


def load_toml(path: str | Path, section: str = "embed") -> dict[str, Any]:
    """Read ``[section]`` of a TOML file (or the top level if the section is absent)."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    body = data.get(section, data)
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: [{section}] must be a table")
    out: dict[str, Any] = {}
    known = field_names()
    for key, val in body.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{path}: unknown option {key!r} in [{section}] (known: {', '.join(sorted(known))})")
        out[name] = tuple(val) if name == "inputs" and isinstance(val, list) else val
    return out
