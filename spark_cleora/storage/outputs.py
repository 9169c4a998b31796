"""What the tool may replace or delete: outputs, work and rejects directories, and the output lock.

The rules (docs/data-safety.md states them for users):

* An output path (``--output``, ``--rejects``, a report or plot file) is replaced only when it holds a
  previous output of spark_cleora: a directory with :data:`OUTPUT_MARKER`, or one written by an older
  version (``_SUCCESS`` with ``_run.json``, or an ``_emde`` manifest); a file output is replaced only
  when it carries the tool's mark (see :func:`is_tool_file`). An existing empty directory may be used.
  Anything else is refused before any work, with exit code 2.
* An output never equals, contains or lies inside an input (events, ``--init-vectors``, ``--previous``,
  ``--embeddings``, the coder ...); a work directory never overlaps an output or an input.
* Output paths must not contain glob characters (``* ? [ {``): Spark reads inputs as globs, so such a
  name would also match other paths.
* Work directories are deleted only when they carry :data:`WORK_MARKER` (written when the tool created
  or adopted them) and only what is inside; a directory the tool did not create is left in place.
* One writer per output: :func:`output_lock` creates ``OUTPUT.spark_cleora_lock`` exclusively
  (``O_EXCL``) with its owner (host, pid, start time) and refreshes its mtime every
  :data:`HEARTBEAT_SECONDS`. A second run refuses while the lock is live; a lock whose owner is a dead
  process on this host, or whose heartbeat is older than :data:`STALE_SECONDS`, is taken over.

The checks work on local paths (``/x``, ``file:/x``) with the driver's file system calls. On other
stores (``s3a://``, ``hdfs://``, and scheme-less paths when the session's default filesystem is not
local, see :mod:`spark_cleora.storage.filesystem`) they go through Spark reads of the active session: the
existing-content rule holds (markers are the directories :data:`REMOTE_OUTPUT_MARKER` and
:data:`REMOTE_WORK_MARKER`), the lock and the parent's permissions are not checked there.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .._version import __version__
from ..errors import ConfigError, RefusedError
from .filesystem import active_session, empty_directory, exists, join, path_state, read_marker, write_marker
from .paths import local_path

log = logging.getLogger(__name__)

OUTPUT_MARKER = "_spark_cleora_output.json"
WORK_MARKER = "_spark_cleora_work.json"
#: the markers on non-local stores: one-line Spark tables (Spark cannot read a file named ``_...``)
REMOTE_OUTPUT_MARKER = "_spark_cleora_output"
REMOTE_WORK_MARKER = "_spark_cleora_work"
LOCK_SUFFIX = ".spark_cleora_lock"
GLOB_CHARS = "*?[{"
#: a live run touches its lock this often; a lock untouched for STALE_SECONDS is taken over
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0
#: the text a file output (JSON report, PNG plot) carries so that a rerun may replace it
FILE_MARK = "spark_cleora_output"


# --------------------------------------------------------------------------------------------
# paths
# --------------------------------------------------------------------------------------------

def _norm(path: str) -> str:
    """A comparable form: the real absolute path of a local path, the URI without trailing ``/`` else."""
    lp = local_path(path)
    if lp is None:
        return path.rstrip("/")
    return os.path.realpath(os.path.abspath(os.path.expanduser(lp)))


def _within(a: str, b: str) -> bool:
    """``a`` equals ``b`` or lies inside it (normalised paths)."""
    return a == b or a.startswith(b.rstrip("/") + "/")


def _glob_prefix(path: str) -> str:
    """The directory part of an input before its first glob character (``data/ev*/x`` -> ``data``)."""
    cut = min((path.index(c) for c in GLOB_CHARS if c in path), default=len(path))
    head = path[:cut]
    return head if cut == len(path) else (head.rsplit("/", 1)[0] if "/" in head else ".")


def _matches_glob(path: str, pattern: str) -> bool:
    """True when ``path`` or one of its ancestors is matched by the glob ``pattern`` (both normalised)."""
    if "{" in pattern:  # Spark's {a,b} alternatives: be conservative, anything below the prefix
        return True
    parts, pat = path.split("/"), pattern.split("/")
    return len(parts) >= len(pat) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pat))


def overlapping_input(path: str, inputs: Iterable[str | None]) -> str | None:
    """The first input that ``path`` equals, contains or lies inside, or None."""
    out = _norm(path)
    for given in inputs:
        if not given:
            continue
        if any(c in given for c in GLOB_CHARS):
            prefix = _norm(_glob_prefix(given))
            pattern = _norm(given) if local_path(given) is not None else given.rstrip("/")
            if _within(prefix, out) or (_within(out, prefix) and _matches_glob(out, pattern)):
                return given
            continue
        inp = _norm(given)
        if _within(out, inp) or _within(inp, out):
            return given
    return None


def refuse_glob(path: str, what: str) -> None:
    bad = sorted({c for c in path if c in GLOB_CHARS})
    if bad:
        raise RefusedError(f"{what} {path!r} contains glob character(s) {' '.join(bad)}; output, work and "
                           "rejects paths must be plain names (inputs are read as Spark globs)")


def _check_parent(lp: str, what: str, path: str) -> None:
    """The nearest existing ancestor of ``lp`` must be a writable directory."""
    parent = os.path.dirname(os.path.abspath(lp))
    while parent and not os.path.exists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    if not os.path.isdir(parent):
        raise RefusedError(f"{what} {path!r}: {parent!r} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RefusedError(f"{what} {path!r}: directory {parent!r} is not writable")


# --------------------------------------------------------------------------------------------
# markers
# --------------------------------------------------------------------------------------------

def is_tool_output(lp: str) -> bool:
    """True when the local directory ``lp`` holds an output of spark_cleora (this or an older version)."""
    if os.path.isfile(os.path.join(lp, OUTPUT_MARKER)):
        return True
    # versions before the marker: embed outputs (every format) and EMDE outputs
    done = os.path.isfile(os.path.join(lp, "_SUCCESS"))
    return done and (os.path.isfile(os.path.join(lp, "_run.json")) or os.path.isdir(os.path.join(lp, "_emde")))


def mark_output(directory: str, kind: str) -> None:
    """Write the output marker into ``directory`` (on a non-local store through the active session)."""
    data = {"kind": kind, "spark_cleora_version": __version__,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    lp = local_path(directory)
    if lp is None:
        spark = active_session()
        if spark is not None:
            write_marker(spark, directory, REMOTE_OUTPUT_MARKER, data)
        return
    with open(os.path.join(lp, OUTPUT_MARKER), "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True)
        fh.write("\n")


def is_remote_tool_output(spark: Any, uri: str) -> bool:
    """:func:`is_tool_output` for a directory on a non-local store (its marker, or an EMDE manifest)."""
    return exists(spark, join(uri, REMOTE_OUTPUT_MARKER)) or exists(spark, join(uri, "_emde"))


def is_tool_file(lp: str) -> bool:
    """True when the file ``lp`` is a JSON report or PNG plot written by spark_cleora."""
    try:
        with open(lp, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    if head.startswith(b"\x89PNG"):
        return FILE_MARK.encode() in head  # the plot's tEXt chunk (see inspect.plot_projection)
    try:
        data = json.loads(head.decode("utf-8")) if len(head) < (1 << 16) else None
    except ValueError:
        return False
    return isinstance(data, dict) and FILE_MARK in data


# --------------------------------------------------------------------------------------------
# checks, before any work
# --------------------------------------------------------------------------------------------

def _plain_and_apart(path: str, inputs: Iterable[str | None], what: str) -> str | None:
    """The glob and overlap rules; returns the local path to check further (None: a remote store)."""
    refuse_glob(path, what)
    hit = overlapping_input(path, inputs)
    if hit:
        raise RefusedError(f"{what} {path!r} overlaps the input {hit!r} (equal, inside or containing it); "
                           "write it somewhere else")
    return local_path(path)


def check_output_dir(path: str, *, inputs: Iterable[str | None] = (), what: str = "--output") -> None:
    """Refuse (exit 2) an output directory the tool must not replace; see the module docstring."""
    lp = _plain_and_apart(path, inputs, what)
    if lp is None:
        _check_remote_dir(path, what)
        return
    if os.path.isfile(lp) or os.path.islink(lp) and not os.path.isdir(lp):
        raise RefusedError(f"{what} {path!r} is an existing file; refusing to replace it")
    if os.path.isdir(lp) and os.listdir(lp) and not is_tool_output(lp):
        raise RefusedError(f"{what} {path!r} exists and is not an output of spark_cleora (no {OUTPUT_MARKER}); "
                           "refusing to replace it: choose a new path or remove it yourself")
    _check_parent(lp, what, path)


def _check_remote_dir(path: str, what: str) -> None:
    """The existing-content rule of :func:`check_output_dir` on a non-local store, read through Spark
    (no active session: nothing to read with, Spark's writer is left to fail)."""
    spark = active_session()
    if spark is None:
        return
    state = path_state(spark, path)
    if state == "file":
        raise RefusedError(f"{what} {path!r} is an existing file; refusing to replace it")
    if state == "dir" and not is_remote_tool_output(spark, path):
        raise RefusedError(f"{what} {path!r} exists and is not an output of spark_cleora (no "
                           f"{REMOTE_OUTPUT_MARKER}); refusing to replace it: choose a new path or remove it yourself")


def check_output_file(path: str, *, inputs: Iterable[str | None] = (), what: str) -> None:
    """Refuse a single-file output (report, plot) that would replace something not written by the tool."""
    lp = _plain_and_apart(path, inputs, what)
    if lp is None:
        return
    if os.path.isdir(lp):
        raise RefusedError(f"{what} {path!r} is a directory; give a file name")
    if os.path.exists(lp) and not is_tool_file(lp):
        raise RefusedError(f"{what} {path!r} exists and was not written by spark_cleora; refusing to replace it")
    _check_parent(lp, what, path)


def check_work_dir(path: str, *, outputs: Iterable[str | None] = (), inputs: Iterable[str | None] = (),
                   what: str = "--work-dir") -> None:
    """Refuse a work (or scratch) directory that overlaps an output or an input, or that is someone's
    non-empty directory."""
    refuse_glob(path, what)
    for out in outputs:
        if out and overlapping_input(path, [out]):
            raise RefusedError(f"{what} {path!r} overlaps the output {out!r}; the work directory is deleted "
                               "after the run, so it must be a path of its own")
    lp = _plain_and_apart(path, inputs, what)
    if lp is None:
        spark = active_session()
        state = path_state(spark, path) if spark is not None else "missing"
        if state == "file":
            raise RefusedError(f"{what} {path!r} is an existing file")
        if state == "dir" and read_marker(spark, path, REMOTE_WORK_MARKER) is None:
            raise RefusedError(f"{what} {path!r} exists and is not a spark_cleora work directory (no "
                               f"{REMOTE_WORK_MARKER}); refusing to use it: its contents would be overwritten")
        return
    if os.path.exists(lp) and not os.path.isdir(lp):
        raise RefusedError(f"{what} {path!r} is an existing file")
    if os.path.isdir(lp) and os.listdir(lp) and not is_work_dir(lp):
        raise RefusedError(f"{what} {path!r} exists and is not a spark_cleora work directory (no {WORK_MARKER}); "
                           "refusing to use it: its contents would be overwritten and deleted")
    _check_parent(lp, what, path)


# --------------------------------------------------------------------------------------------
# work directories: created, adopted and deleted only with the marker
# --------------------------------------------------------------------------------------------

def is_work_dir(lp: str) -> bool:
    """A work directory of this tool (marker), or of an older version (``manifest.json`` with a fingerprint)."""
    if os.path.isfile(os.path.join(lp, WORK_MARKER)):
        return True
    try:
        with open(os.path.join(lp, "manifest.json"), encoding="utf-8") as fh:
            return "fingerprint" in json.load(fh)
    except (OSError, ValueError, TypeError):
        return False


def claim_work_dir(path: str, what: str = "--work-dir") -> None:
    """Create ``path`` (or adopt it when empty or already ours) and put the marker in it."""
    lp = local_path(path)
    if lp is None:
        spark = active_session()
        check_work_dir(path, what=what)
        if spark is not None and read_marker(spark, path, REMOTE_WORK_MARKER) is None:
            write_marker(spark, path, REMOTE_WORK_MARKER, {"host": socket.gethostname(), "pid": os.getpid()})
        return
    check_work_dir(path, what=what)
    marker = os.path.join(lp, WORK_MARKER)
    if os.path.isfile(marker):
        return
    created = not os.path.isdir(lp)
    if created:
        os.makedirs(lp)
    else:
        created = is_work_dir(lp)  # an older version's work dir: it created it
    with open(marker, "w", encoding="utf-8") as fh:
        json.dump({"created_dir": created, "host": socket.gethostname(), "pid": os.getpid()}, fh)


def clear_work_dir(path: str, *, remove_dir: bool = True) -> None:
    """Delete what the tool put in the work directory ``path`` (only one carrying the marker); the
    directory itself too when the tool created it and ``remove_dir``. Others are left untouched."""
    lp = local_path(path)
    if lp is None:
        _clear_remote_work_dir(path)
        return
    if not os.path.isdir(lp):
        return
    marker = os.path.join(lp, WORK_MARKER)
    if not os.path.isfile(marker):
        if is_work_dir(lp):  # an older version's: it created the whole directory
            shutil.rmtree(lp, ignore_errors=True)
        else:
            log.warning("%s is not a spark_cleora work directory; left as it is", path)
        return
    try:
        with open(marker, encoding="utf-8") as fh:
            created = bool(json.load(fh).get("created_dir"))
    except (OSError, ValueError):
        created = False
    if created and remove_dir:
        shutil.rmtree(lp, ignore_errors=True)
        return
    for name in os.listdir(lp):
        if name == WORK_MARKER:
            continue
        p = os.path.join(lp, name)
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
    if remove_dir:
        os.remove(marker)  # an adopted (pre-existing, empty) directory stays, empty again


def _clear_remote_work_dir(path: str) -> None:
    """On a non-local store nothing can be deleted without a JVM handle: the contents of a marked work
    directory are replaced by an empty table (Spark's overwrite deletes them) and the marker is put
    back, so a few bytes remain and a later run still recognises the directory."""
    spark = active_session()
    if spark is None or path_state(spark, path) != "dir":
        return
    marker = read_marker(spark, path, REMOTE_WORK_MARKER)
    if marker is None:
        log.warning("%s is not a spark_cleora work directory; left as it is", path)
        return
    empty_directory(spark, path)
    write_marker(spark, path, REMOTE_WORK_MARKER, marker)
    log.info("work directory %s emptied (a non-local store: remove the directory with your storage tools)", path)


# --------------------------------------------------------------------------------------------
# the lock: one writer per output
# --------------------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_lock(lock: str) -> tuple[dict[str, Any], float] | None:
    try:
        mtime = os.path.getmtime(lock)
        with open(lock, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        owner = {}  # being written right now, or cut short: only its age can make it stale
    return (owner if isinstance(owner, dict) else {}), mtime


def _is_stale(owner: dict[str, Any], mtime: float) -> bool:
    if time.time() - mtime > STALE_SECONDS:
        return True
    return owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) \
        and not _pid_alive(owner["pid"])


@contextlib.contextmanager
def output_lock(path: str, what: str = "--output") -> Iterator[None]:
    """Hold ``PATH.spark_cleora_lock`` while writing ``path``; refuse (exit 2) when another live run holds it.

    Local paths only (object stores have no exclusive create reachable without the JVM).
    """
    lp = local_path(path)
    if lp is None:
        yield
        return
    lp = os.path.abspath(lp).rstrip("/")
    lock = lp + LOCK_SUFFIX
    os.makedirs(os.path.dirname(lock) or ".", exist_ok=True)
    owner = {"host": socket.gethostname(), "pid": os.getpid(),
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": uuid.uuid4().hex}
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            seen = _read_lock(lock)
            if seen is None:
                continue  # released meanwhile: try again
            other, mtime = seen
            if not _is_stale(other, mtime):
                raise RefusedError(
                    f"{what} {path!r} is being written by another run (pid {other.get('pid', '?')} on "
                    f"{other.get('host', '?')} since {other.get('started', '?')}); wait for it to finish "
                    f"(lock {lock})") from None
            _take_over(lock, other)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(owner, fh)
        break
    else:
        raise RefusedError(f"{what} {path!r}: could not take the lock {lock}; another run keeps taking it")
    stop = threading.Event()

    def beat() -> None:  # the heartbeat: a live owner keeps the lock's mtime fresh
        while not stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                os.utime(lock)

    t = threading.Thread(target=beat, name="spark_cleora-lock-heartbeat", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        seen = _read_lock(lock)
        if seen is not None and seen[0].get("token") == owner["token"]:
            os.remove(lock)


@contextlib.contextmanager
def guarded_dir(path: str, *, inputs: Iterable[str | None] = (), what: str = "--output") -> Iterator[None]:
    """:func:`check_output_dir`, then :func:`output_lock` held while the body writes ``path``."""
    check_output_dir(path, inputs=inputs, what=what)
    with output_lock(path, what):
        yield


def _take_over(lock: str, stale: dict[str, Any]) -> None:
    """Move a stale lock aside, making sure it is the one judged stale (another run may have replaced it)."""
    aside = f"{lock}.stale-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    moved = _read_lock(aside)
    if moved is not None and moved[0] != stale:  # a fresh lock taken meanwhile: put it back
        with contextlib.suppress(FileExistsError):
            os.link(aside, lock)
    log.warning("took over the stale lock %s (owner %s)", lock, stale or "unknown")
    os.remove(aside)


def write_rejects(df: Any, path: str) -> None:
    """Write the rejected rows as Parquet to ``path`` atomically, marked as an output of the tool."""
    check_output_dir(path, what="--rejects")

    def write(staging: str) -> None:
        df.write.parquet(staging)
        mark_output(staging, "rejects")

    write_atomically(path, write)


def check_table_name(name: str, what: str = "--output-table") -> None:
    """``table``, ``db.table`` or ``catalog.db.table`` of plain parts (no backticks, spaces or quotes):
    checked before any work so that a bad name is not found after the whole run."""
    parts = name.split(".")
    ok = 1 <= len(parts) <= 3 and all(p and not any(c in p for c in "`'\"; \t\n/\\") for p in parts)
    if not ok:
        raise ConfigError(f"{what} expects table, db.table or catalog.db.table (letters, digits, _ and -); "
                          f"got {name!r}")


def write_report(path: str, data: dict[str, Any]) -> None:
    """Write a JSON report (or summary) atomically: a temporary file beside it, then a rename."""
    lp = local_path(path) or path
    os.makedirs(os.path.dirname(os.path.abspath(lp)), exist_ok=True)
    tmp = f"{lp}.tmp-{os.getpid()}"
    write_json(tmp, data)
    os.replace(tmp, lp)


# --------------------------------------------------------------------------------------------
# Atomic output
# --------------------------------------------------------------------------------------------

def write_atomically(target: str, write: Callable[[str], None]) -> None:
    """Write into a staging directory beside ``target`` and move it into place only when complete.

    On a local filesystem the final step is a rename, so readers see the old result or the new one,
    never a partial directory. On other stores (object stores, or HDFS as the session's default
    filesystem: no rename is reachable without a JVM handle) ``target`` is written in place: a previous
    output there is first emptied and marked as an unfinished output of the tool (so a run that dies
    leaves a directory the next run may replace), and the markers written last (``_SUCCESS``, the output
    marker, EMDE's ``_emde``) are the completion signal.

    Callers check ``target`` first (:func:`spark_cleora.storage.outputs.check_output_dir`) and hold its lock
    (:func:`spark_cleora.storage.outputs.output_lock`): what is replaced here is a previous output of the tool,
    and staging directories beside it are a dead run's.
    """
    lp = local_path(target)
    if lp is None:
        _write_in_place(target, write)
        return
    check_output_dir(target)  # again, just before replacing: the path may have changed since the start
    lp = os.path.abspath(lp)
    parent = os.path.dirname(lp) or "."
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(lp)
    for stale in glob.glob(os.path.join(parent, glob.escape(base) + ".staging-*")):
        # left by a killed run (the caller holds the output's lock: no live run writes it)
        log.info("removing stale staging directory %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    staging = os.path.join(parent, f"{base}.staging-{uuid.uuid4().hex[:8]}")
    try:
        write(staging)
        old = None
        if os.path.isdir(lp):
            old = os.path.join(parent, f"{base}.old-{uuid.uuid4().hex[:8]}")
            os.replace(lp, old)
        elif os.path.lexists(lp):
            raise RefusedError(f"output {target!r} is an existing file; refusing to replace it")
        os.replace(staging, lp)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _write_in_place(target: str, write: Callable[[str], None]) -> None:
    """:func:`write_atomically` on a store without a reachable rename (see there)."""
    check_output_dir(target)  # again, just before replacing: the path may have changed since the start
    spark = active_session()
    if spark is not None and path_state(spark, target) == "dir":  # a previous output (checked above)
        empty_directory(spark, target)
        mark_output(target, "unfinished")
    write(target)


def write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
