"""Deterministic start vectors, bit-exact with pycleora.

Every value is a pure function of ``(entity, dimension, seed)``::

    h   = XXH64(utf8(entity), seed=0)                   # u64
    u   = wrap_i64(i64(h) + dim + seed)
    H   = SipHash-1-3(k0=0, k1=0, le_bytes(u))           # init="siphash"  (pycleora 2.0.0)
        = u * 0x517cc1b727220a95 mod 2**64                # init="fx"       (pycleora 3.x)
    x   = f32(trunc_rem(i64(H), 2**23)) / 2**23           # uniform on (-1, 1)

so the init parallelises over entities with no coordination. SipHash runs as compiled loops where
numba is installed (the ``fast`` extra, :mod:`spark_cleora.engine.siphash`: ~20x faster), else, like
FxHash, for a whole batch at once with numpy ``uint64`` arithmetic (which wraps, like Rust's release
build): the same bits either way. Only the one XXH64 per entity name is a Python call.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from types import ModuleType

import numpy as np
import pyarrow as pa
import xxhash
from pyspark.sql import DataFrame

from ..errors import ConfigError, InitVectorsError
from ..config import INIT_METHODS
from .compiled import load_compiled
from .vectors import pack

_MAX_HASH = 1 << 23
_FX_K = np.uint64(0x517CC1B727220A95)
_MASK64 = (1 << 64) - 1


def entity_hashes(names: Sequence[str]) -> np.ndarray:
    """XXH64 (seed 0) of each name's UTF-8 bytes, as ``uint64``."""
    out = np.empty(len(names), dtype=np.uint64)
    digest = xxhash.xxh64_intdigest
    for i, name in enumerate(names):
        out[i] = digest(name.encode("utf-8"))
    return out


_CHUNK = 1 << 15  # elements per pass: keeps the state and temporaries in cache


def _rotl_inplace(x: np.ndarray, b: int, tmp: np.ndarray) -> None:
    np.right_shift(x, np.uint64(64 - b), out=tmp)
    np.left_shift(x, np.uint64(b), out=x)
    np.bitwise_or(x, tmp, out=x)


def _rotl32(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``x`` rotated by 32 bits into ``out`` (returned): its two 32-bit halves swapped, two half-width
    copies instead of three full passes."""
    x32, out32 = x.view(np.uint32), out.view(np.uint32)
    out32[0::2] = x32[1::2]
    out32[1::2] = x32[0::2]
    return out


def _sipround(v0, v1, v2, v3, tmp, spare):
    """One SipRound (``tmp`` and ``spare``: scratch arrays); returns the new (v0, v1, v2, v3, tmp, spare),
    since the rotations by 32 write into a spare buffer instead of in place."""
    v0 += v1
    _rotl_inplace(v1, 13, tmp)
    v1 ^= v0
    v0, spare = _rotl32(v0, spare), v0
    v2 += v3
    _rotl_inplace(v3, 16, tmp)
    v3 ^= v2
    v0 += v3
    _rotl_inplace(v3, 21, tmp)
    v3 ^= v0
    v2 += v1
    _rotl_inplace(v1, 17, tmp)
    v1 ^= v2
    v2, spare = _rotl32(v2, spare), v2
    return v0, v1, v2, v3, tmp, spare


def _rotl_int(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK64


_K0, _K1, _K2, _K3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573
# the first SipRound's steps that do not depend on the message (v0, v1, v2 start as constants)
_R1_A = (_K0 + _K1) & _MASK64                       # v0 += v1
_R1_C = _rotl_int(_K1, 13) ^ _R1_A                  # v1 = rotl(v1, 13) ^ v0
_R1_D = _rotl_int(_R1_A, 32)                        # v0 = rotl(v0, 32)
_R1_E = _rotl_int(_R1_C, 17)                        # v1 = rotl(v1, 17), before v1 ^= v2


@functools.cache
def compiled_siphash() -> ModuleType | None:
    """:mod:`spark_cleora.engine.siphash` (numba's compiled loops), its start-vector loop loaded (or
    compiled) here; None without numba, or with one that cannot compile on this machine (the numpy
    rounds below then give the same numbers)."""
    def warm(siphash: ModuleType) -> None:
        word = np.zeros(1, dtype=np.uint64)
        siphash.siphash_rows_into(word, word, np.empty((1, 1), dtype=np.float32))

    return load_compiled("siphash", warm, "the SipHash start vectors")


def preload(method: str, values: int) -> None:
    """Import numba and load (or compile) the loops :func:`init_vectors` will run for ``values`` start
    values of ``method``, if it will: a task calls this on a thread of its own while it reads its
    input (numba's import alone is ~0.4 s)."""
    use_compiled(method, values)


def siphash13_u64(m: np.ndarray) -> np.ndarray:
    """SipHash-1-3 with a zero key of one little-endian u64 word (Rust's ``DefaultHasher.write_i64``)."""
    m = np.ascontiguousarray(m, dtype=np.uint64)
    flat = m.reshape(-1)
    out = np.empty_like(flat)
    compiled = compiled_siphash()
    if compiled is not None:
        compiled.siphash13_into(flat, out)
        return out.reshape(m.shape)
    b = np.uint64(8 << 56)  # message length 8 in the top byte, no tail bytes
    for lo in range(0, len(flat), _CHUNK):
        w = flat[lo:lo + _CHUNK]
        tmp, spare = np.empty_like(w), np.empty_like(w)
        # compression of the word: the first SipRound with its constant steps folded (_R1_*)
        v3 = w ^ np.uint64(_K3)
        v2 = v3 + np.uint64(_K2)
        _rotl_inplace(v3, 16, tmp)
        v3 ^= v2
        v0 = v3 + np.uint64(_R1_D)
        _rotl_inplace(v3, 21, tmp)
        v3 ^= v0
        v2 += np.uint64(_R1_C)
        v1 = v2 ^ np.uint64(_R1_E)
        v2, spare = _rotl32(v2, spare), v2
        v0 ^= w
        # the length block, then finalisation
        v3 ^= b
        v0, v1, v2, v3, tmp, spare = _sipround(v0, v1, v2, v3, tmp, spare)
        v0 ^= b
        v2 ^= np.uint64(0xFF)
        for _ in range(3):
            v0, v1, v2, v3, tmp, spare = _sipround(v0, v1, v2, v3, tmp, spare)
        v0 ^= v1
        v2 ^= v3
        np.bitwise_xor(v0, v2, out=out[lo:lo + _CHUNK])
    return out.reshape(m.shape)


#: start values (entities x dimensions) from which SipHash runs as numba's compiled loops: importing
#: numba and loading them takes ~0.5 s, what numpy's rounds take for ~10M values on 2 threads
COMPILED_MIN_VALUES = 1 << 24


def use_compiled(method: str, values: int) -> bool:
    """Whether ``values`` start values of ``method`` are computed by numba's loops (installed, SipHash,
    enough of them to repay the import): the same numbers either way."""
    return method == "siphash" and values >= COMPILED_MIN_VALUES and compiled_siphash() is not None


def init_vectors(hashes: np.ndarray, dim: int, *, seed: int = 0, method: str = "siphash",
                 out: np.ndarray | None = None, compiled: bool | None = None) -> np.ndarray:
    """Start vectors ``float32[n, dim]`` for entities with XXH64 ``hashes`` (``uint64[n]``), into ``out``
    (returned) if given; ``compiled``: numba's loops or numpy's rounds (default: :func:`use_compiled`).

    Works through the entities in chunks of rows, so the uint64 temporaries stay in cache (at 386k
    entities x 256 the whole-matrix temporaries were 0.8 GB each and the init took 4 s; chunked, a
    fraction of that)."""
    if method not in INIT_METHODS:
        raise ConfigError(f"init must be one of {INIT_METHODS}, got {method!r}")
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    offsets = np.arange(dim, dtype=np.uint64) + np.uint64(seed & _MASK64)
    out = np.empty((len(hashes), dim), dtype=np.float32) if out is None else out
    if compiled is None:
        compiled = use_compiled(method, len(hashes) * dim)
    if compiled and method == "siphash":
        compiled_siphash().siphash_rows_into(hashes, offsets, out)
        return out
    rows = max(1, _CHUNK // max(dim, 1))
    with np.errstate(over="ignore"):
        for lo in range(0, len(hashes), rows):
            u = hashes[lo:lo + rows, None] + offsets[None, :]  # wrapping add == two's-complement i64 add
            h = u * _FX_K if method == "fx" else siphash13_u64(u)
            out[lo:lo + rows] = _rust_rem(h.view(np.int64)).astype(np.float32) / np.float32(_MAX_HASH)
    return out


def _rust_rem(x: np.ndarray) -> np.ndarray:
    """``x % 2**23`` as Rust computes it for i64 (truncated: the sign of ``x``), with bit operations
    instead of an integer division: the low 23 bits, less 2**23 when ``x`` is negative and they are
    not zero (i64::MIN included: its low bits are zero, and so is its remainder)."""
    low = x & np.int64(_MAX_HASH - 1)
    low -= ((x < 0) & (low != 0)).astype(np.int64) << np.int64(23)
    return low


def init_for_names(names: Sequence[str], dim: int, *, seed: int = 0, method: str = "siphash",
                   threads: int = 1) -> np.ndarray:
    """Start vectors for entity names (what ``pycleora``'s ``initialize_deterministically`` returns).

    ``threads`` > 1 splits the entities over a thread pool (the vectorised hash rounds release the GIL;
    the one XXH64 per name stays a quick Python loop): the same numbers, on more cores."""
    hashes = entity_hashes(names)
    compiled = use_compiled(method, len(hashes) * dim)
    if threads <= 1 or len(hashes) < 2:
        return init_vectors(hashes, dim, seed=seed, method=method, compiled=compiled)
    from concurrent.futures import ThreadPoolExecutor

    x = np.empty((len(hashes), dim), dtype=np.float32)

    def part(bounds: tuple[int, int]) -> None:
        lo, hi = bounds
        init_vectors(hashes[lo:hi], dim, seed=seed, method=method, out=x[lo:hi], compiled=compiled)

    edges = np.linspace(0, len(hashes), threads + 1).astype(int)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(part, zip(edges[:-1], edges[1:])))
    return x


# --------------------------------------------------------------------------------------------
# Given start vectors (--init-vectors): node features that replace the hash init where present
# --------------------------------------------------------------------------------------------

_VECTOR_COLUMNS = ("vector", "embedding")  # "embedding": a previous spark-cleora output works as is


def read_start_vectors(vectors: DataFrame, *, dim: int) -> tuple[DataFrame, int]:
    """Validate ``vectors`` (``entity``, ``vector`` or ``embedding``): ``(entity, given array<double>)`` and rows.

    Every row must have a non-null entity and a vector of exactly ``dim`` finite numbers, and no entity
    may appear twice: anything else raises with the count and an example (one aggregation, so a bad
    table fails before the graph is built).
    """
    from pyspark.sql import functions as F

    vcol = next((c for c in _VECTOR_COLUMNS if c in vectors.columns), None)
    if "entity" not in vectors.columns or vcol is None:
        raise InitVectorsError(f"init-vectors needs columns 'entity' and one of {list(_VECTOR_COLUMNS)}; "
                               f"it has {vectors.columns}")
    v = vectors.select(F.col("entity").cast("string").alias("entity"),
                       F.col(vcol).cast("array<double>").alias("given"))
    bad = (F.col("entity").isNull() | F.col("given").isNull() | (F.size("given") != dim)
           | F.exists("given", lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == float("inf"))))
    stats = v.agg(F.count(F.lit(1)).alias("rows"), F.count_distinct("entity").alias("distinct"),
                  F.sum(bad.cast("long")).alias("bad")).collect()[0]
    rows, bad_rows = int(stats["rows"]), int(stats["bad"] or 0)
    if bad_rows:
        ex = v.filter(bad).select("entity", F.size("given").alias("length")).limit(1).collect()[0]
        raise InitVectorsError(
            f"init-vectors: {bad_rows} of {rows} row(s) lack an entity or a vector of exactly {dim} finite "
            f"numbers (--dim {dim}); first: entity {ex['entity']!r} with length {ex['length']}")
    if int(stats["distinct"]) != rows:
        dup = v.groupBy("entity").count().filter("count > 1").limit(1).collect()[0]
        raise InitVectorsError(f"init-vectors: {rows - int(stats['distinct'])} duplicate row(s); e.g. entity "
                               f"{dup['entity']!r} appears {dup['count']} times")
    return v, rows


def given_start_vectors(vectors: DataFrame, rows: int, entities: DataFrame, *,
                        dim: int) -> tuple[DataFrame, dict[str, int]]:
    """Validated ``vectors`` (from :func:`read_start_vectors`) keyed by the graph's entity ids.

    Returns ``(id, given)`` packed float32 rows, and counts: ``rows`` in the table, ``used`` (entities
    of the graph that get a given vector) and ``unknown`` (rows naming no entity of the graph; ignored).
    """
    keyed = entities.select("id", "entity").join(vectors, "entity").select("id", "given")
    used = keyed.count()

    def packed(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from .vectors import from_list_array

        for b in batches:
            yield pa.RecordBatch.from_arrays([b.column("id"), pack(from_list_array(b.column("given"), dim))],
                                             names=["id", "given"])

    return keyed.mapInArrow(packed, "id long, given binary"), {"rows": rows, "used": used, "unknown": rows - used}


def override_start_vectors(hashed: DataFrame, given: DataFrame) -> DataFrame:
    """(id, ..., vec) hash start vectors with each entity's given vector (id, given) in its place."""
    from pyspark.sql import functions as F

    others = [c for c in hashed.columns if c != "vec"]
    return hashed.join(given, "id", "left").select(*others, F.coalesce("given", "vec").alias("vec"))
