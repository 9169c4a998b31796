"""Getting a SparkSession: the active one, a given master, a Connect remote, or embedded local[*]."""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import resources

from .compat import check_session, is_remote
from ..errors import JavaNotFoundError
from .machine import local_cores, local_driver_gib, memory_bytes

log = logging.getLogger(__name__)

JAVA_HELP = (
    "Spark needs a Java runtime (17 or 21) and none was found{detail}.\n"
    "Install one and try again, e.g.\n"
    "  Debian/Ubuntu:  sudo apt-get install -y openjdk-17-jre-headless\n"
    "  macOS:          brew install openjdk@17\n"
    "  conda:          conda install -c conda-forge openjdk=17\n"
    "or point JAVA_HOME at an existing JDK/JRE."
)


def check_java() -> str:
    """Return the Java version string, or raise :class:`JavaNotFoundError` with the fix."""
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        detail = f" (JAVA_HOME={java_home} has no bin/java)" if java_home else " on PATH"
        raise JavaNotFoundError(JAVA_HELP.format(detail=detail))
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JavaNotFoundError(JAVA_HELP.format(detail=f" ({java} failed: {exc})")) from exc
    text = out.stderr + out.stdout
    _JAVA_SEEN.update(path=os.path.realpath(java), version=text)
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if m:
        major = int(m.group(1)) if m.group(1) != "1" else int(m.group(2) or 0)
        if major < 17:
            raise JavaNotFoundError(JAVA_HELP.format(detail=f" (found Java {major} at {java}; Spark 4 needs 17+)"))
    return text.splitlines()[0] if text else "java"


_JAVA_SEEN: dict[str, str] = {}

#: env switch for the JVM class cache: "0"/"off" disables it, any other value is the cache directory
CLASS_CACHE_ENV = "SPARK_CLEORA_JVM_CACHE"


def class_cache_dir() -> str | None:
    """Where the embedded JVM's class-data-sharing archives live (None: disabled)."""
    value = os.environ.get(CLASS_CACHE_ENV, "")
    if value.lower() in ("0", "off", "false", "no"):
        return None
    if value:
        return value
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "spark_cleora", "jvm")


def _class_cache_key(conf: Mapping[str, str]) -> str:
    """The archive is only valid for one JVM build and one class path: key it by both."""
    import pyspark

    jars = os.path.join(os.path.dirname(pyspark.__file__), "jars")
    try:
        listing = sorted((f, os.path.getsize(os.path.join(jars, f))) for f in os.listdir(jars))
    except OSError:
        listing = []
    extra = {k: v for k, v in conf.items() if k in ("spark.jars", "spark.jars.packages", "spark.driver.extraClassPath")}
    # the jars' own path too: another venv's archive (same files, other place) is never shared
    blob = repr((_JAVA_SEEN.get("path"), _JAVA_SEEN.get("version"), pyspark.__version__, os.environ.get("SPARK_HOME"),
                 os.path.realpath(jars), listing, sorted(extra.items())))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def class_cache_options(conf: Mapping[str, str]) -> tuple[str, str | None]:
    """JVM options that use (or, on the first run, create) a class-data-sharing archive.

    A cold Spark driver spends seconds loading and verifying ~20k classes before the first job; a
    dynamic CDS archive of them (JDK 13+) roughly halves that (measured here: session 9.8 -> 6.7 s,
    first query 9.0 -> 5.3 s). Returns (options, archive to promote after this JVM exits, or None).
    """
    directory = class_cache_dir()
    if directory is None or "path" not in _JAVA_SEEN:
        return "", None
    final = os.path.join(directory, f"classes-{_class_cache_key(conf)}.jsa")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError:
        return "", None
    if not _safe_to_trust(directory):
        log.info("JVM class cache %s is not owned by you or is writable by others: not used", directory)
        return "", None
    if os.path.lexists(final):
        if _safe_to_trust(final) and os.path.isfile(final) and os.path.getsize(final) > 0:
            return f"-XX:SharedArchiveFile={final} -Xlog:cds=off -Xlog:cds+dynamic=off", None
        try:  # unusable (not ours, writable by others, empty): made anew instead of ignored forever
            os.remove(final)
        except OSError:
            return "", None
    pending = f"{final}.{os.getpid()}.tmp"
    return f"-XX:ArchiveClassesAtExit={pending} -Xlog:cds=off -Xlog:cds+dynamic=off", pending


def _safe_to_trust(path: str) -> bool:
    """The JVM maps an archive's code: only one owned by this user and writable by nobody else."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    import stat

    if stat.S_ISLNK(st.st_mode):
        return False
    own = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    return own and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _promote_class_archive(pending: str) -> None:
    """At interpreter exit: let the JVM exit (it writes the archive then), then publish it atomically."""
    from pyspark import SparkContext

    gateway = getattr(SparkContext, "_gateway", None)
    proc = getattr(gateway, "proc", None)
    if proc is None:
        return
    log.info("writing the JVM class cache for faster Spark starts (first run only; %s=0 disables it)",
             CLASS_CACHE_ENV)
    try:
        if SparkContext._active_spark_context is not None:
            SparkContext._active_spark_context.stop()
        gateway.shutdown()
        if proc.stdin:
            proc.stdin.close()  # the gateway JVM exits when its stdin closes
        code = proc.wait(timeout=300)
    except Exception:  # never fail a finished job over a cache
        code = -1
    final = pending.rsplit(".", 2)[0]
    if code == 0 and os.path.exists(pending) and os.path.getsize(pending) > 0:
        os.replace(pending, final)
        log.info("JVM class cache written: %s", final)
    elif os.path.exists(pending):
        os.remove(pending)


#: garbage collector of an embedded local driver (unless spark.driver.extraJavaOptions names one): on
#: 2 cores the throughput collector beats the default G1, whose concurrent threads compete with the
#: tasks (1M-event embed, 4 runs each: median 16.7 s vs 18.0 s)
LOCAL_GC = "-XX:+UseParallelGC"


def driver_java_options(user: str, master: str, class_cache: str) -> str:
    """The driver JVM's options: the user's, then the class cache's, and for a local master the
    ``LOCAL_GC`` collector unless the user's options name a collector."""
    ours = [class_cache] if class_cache else []
    if master.startswith("local") and not re.search(r"-XX:\+Use\w*GC\b", user):
        ours.insert(0, LOCAL_GC)
    return " ".join([user.strip(), *ours]).strip()


#: Spark's logging for an embedded local driver: only errors while Spark starts (see the file)
LOG_CONFIG = "log4j2.properties"
_LOG_CONFIG_NAMES = ("log4j2.properties", "log4j2.xml", "log4j2.yaml", "log4j2.yml", "log4j2.json")


def quiet_start_options(java_options: str) -> str:
    """``-Dlog4j2.configurationFile`` naming the package's logging configuration (no banner, no WARN
    lines while a local Spark starts), unless the driver's options or ``SPARK_CONF_DIR`` bring one.

    ``SPARK_CLEORA_SPARK_LOG_LEVEL`` (e.g. ``WARN`` or ``INFO``) sets the level during the start too.
    """
    if "log4j" in java_options:
        return ""
    conf_dir = os.environ.get("SPARK_CONF_DIR")
    if conf_dir and any(os.path.isfile(os.path.join(conf_dir, n)) for n in _LOG_CONFIG_NAMES):
        return ""
    path = str(resources.files("spark_cleora").joinpath("data", LOG_CONFIG))
    options = [f'-Dlog4j2.configurationFile="{path}"' if " " in path else f"-Dlog4j2.configurationFile={path}"]
    level = os.environ.get("SPARK_CLEORA_SPARK_LOG_LEVEL")
    if level:
        options.append(f"-Dspark_cleora.spark.log.level={level.strip().lower()}")
    return " ".join(options)


def _cores(master: str) -> int:
    """Cores of a local master, at least 2: local[4] -> 4, local[*] / local -> all."""
    return max(2, local_cores(master))


def _local_defaults(master: str) -> dict[str, str]:
    """Settings for an embedded local Spark: use the machine, keep shuffles small, stay quiet."""
    conf = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Local jobs drown in 200 shuffle partitions; one per core keeps every core busy, and AQE
        # keeps at least that many (parallelismFirst) when it coalesces.
        "spark.sql.shuffle.partitions": str(_cores(master)),
        "spark.ui.showConsoleProgress": "false",
        # Spark deletes a finished shuffle's files once a driver GC lets its cleaner see them unused, by
        # default at least every 30 min: the shuffle engine's iterations then pile up on one disk (100M
        # events: 45 GB by the second iteration; with 1 min, at most 37.5 GB and the run completes).
        "spark.cleaner.periodicGC.interval": "1min",
    }
    total = memory_bytes()  # RAM, or a container's cgroup limit below it
    if total:
        # The driver is the only JVM in local mode: give it about half the memory (2..32 GiB).
        conf["spark.driver.memory"] = f"{local_driver_gib(total)}g"
    return conf


#: set on a session whose JVM this process started for a ``local`` master (nothing else configures it)
EMBEDDED_LOCAL_CONF = "spark.cleora.embeddedLocal"
#: the embedded local Spark's Python daemon (see the module)
WORKER_DAEMON = "spark_cleora.runtime.worker_daemon"


def conf_value(spark, key: str) -> str | None:
    """A Spark conf value, or None when it is not set (or cannot be read)."""
    try:
        return spark.conf.get(key, None)
    except Exception:  # noqa: BLE001 - a conf that cannot be read is a conf not set
        return None


def is_embedded_local(spark) -> bool:
    """Whether ``spark`` is a session whose JVM this process started for a ``local`` master
    (``EMBEDDED_LOCAL_CONF``): its workers are processes of this machine. Not Connect, not a notebook's or
    ``spark-submit``'s session."""
    return not is_remote(spark) and conf_value(spark, EMBEDDED_LOCAL_CONF) == "true"


def embedded_local_conf() -> dict[str, str]:
    """Settings of a ``local`` session whose JVM this process starts: the marker
    (``EMBEDDED_LOCAL_CONF``), and, when the workers run this interpreter (``PYSPARK_PYTHON``, by default
    ``sys.executable``), the daemon that imports PySpark from the installed package (``WORKER_DAEMON``):
    another interpreter may not have spark_cleora, and its workers would not start."""
    conf = {EMBEDDED_LOCAL_CONF: "true"}
    workers = os.environ.get("PYSPARK_PYTHON", sys.executable)
    if shutil.which(workers) and os.path.realpath(shutil.which(workers)) == os.path.realpath(sys.executable):
        conf["spark.python.daemon.module"] = WORKER_DAEMON
    return conf


def get_spark(
    *,
    master: str | None = None,
    remote: str | None = None,
    conf: Mapping[str, str] | None = None,
    app_name: str = "spark_cleora",
):
    """Return a SparkSession.

    Order: an explicit ``remote`` (Spark Connect URL, or ``SPARK_REMOTE``); else the active session when
    no ``master`` is given (notebooks, ``spark-submit``); else a new session on ``master`` (default: an
    embedded ``local[*]``). ``conf`` entries are applied in every case (static ones only at creation).
    """
    from pyspark.sql import SparkSession

    conf = dict(conf or {})
    remote = remote or os.environ.get("SPARK_REMOTE")
    if not remote and master is None:
        active = SparkSession.getActiveSession()
        if active is not None:
            check_session(active)
            for k, v in conf.items():
                active.conf.set(k, v)
            return active
    builder = SparkSession.builder.appName(app_name)
    pending_archive = None
    if remote:
        if remote.startswith("local"):
            check_java()
        builder = builder.remote(remote)
    else:
        # spark-submit starts the Python driver with a gateway to its JVM and the master it was given.
        under_submit = "PYSPARK_GATEWAY_PORT" in os.environ
        if not under_submit:
            check_java()
            master = master or "local[*]"
            # Workers must run the interpreter that has numpy/pyarrow/spark_cleora installed.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        if master:
            builder = builder.master(master)
        if (master or "").startswith("local"):
            for k, v in _local_defaults(master or "").items():
                if k not in conf:
                    builder = builder.config(k, v)
        from pyspark import SparkContext

        if not under_submit and SparkContext._gateway is None:  # we are about to start the driver JVM
            if (master or "").startswith("local"):
                for k, v in embedded_local_conf().items():
                    conf.setdefault(k, v)
            options, pending_archive = class_cache_options(conf)
            java_options = driver_java_options(conf.get("spark.driver.extraJavaOptions", ""), master or "", options)
            if (master or "").startswith("local"):
                java_options = " ".join(filter(None, [java_options, quiet_start_options(java_options)]))
            if java_options:
                conf["spark.driver.extraJavaOptions"] = java_options
    for k, v in conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    check_session(spark)  # a Connect server's Spark can be older than this client
    if pending_archive:
        atexit.register(_promote_class_archive, pending_archive)
    if not remote:
        _quiet_spark(spark)
        if pending_archive is not None or (master or "").startswith("local"):
            # one worker now (a small input runs in one task, whose start then overlaps the driver's
            # planning instead of competing with two workers' imports); the graph build asks for the rest
            _WARM_LATER["cores"] = _cores(master or "local[*]")
            warm_python_workers(spark, 1)
    return spark


#: modules a warmed Python worker imports (see :func:`warm_python_workers`): the engine names what its tasks
#: import (:func:`import_in_workers`), the session itself imports no part of it
WORKER_IMPORTS: list[str] = []


def import_in_workers(*modules: str) -> None:
    """Have :func:`warm_python_workers` import ``modules`` in every Python worker it starts."""
    WORKER_IMPORTS.extend(m for m in modules if m not in WORKER_IMPORTS)


def _importer(modules: tuple[str, ...]):
    """``mapInArrow`` body that only imports ``modules`` (numpy, pyarrow, scipy: what the tasks will need)."""

    def run(batches):
        import importlib

        for name in modules:
            importlib.import_module(name)
        yield from batches

    return run


#: cores of the embedded local session whose Python workers :func:`warm_remaining_workers` may still start
_WARM_LATER: dict[str, int] = {}


def warm_remaining_workers(spark) -> None:
    """Start the rest of an embedded local session's Python workers (one per core) in the background, once:
    the caller is about to run Python tasks on every core. Does nothing for any other session."""
    cores = _WARM_LATER.pop("cores", 0)
    if cores > 1:
        warm_python_workers(spark, cores)


def warm_python_workers(spark, cores: int) -> threading.Thread | None:
    """Start the embedded Spark's Python workers in the background, with the engine imported.

    A local Spark starts one Python worker per core at its first Python task, and each imports numpy,
    pyarrow and scipy: ~2 s that would fall on the graph build. A tiny job with one task per core, run
    on a daemon thread while the driver reads the input's schema and counts it, pays that up front
    (the workers are reused afterwards). ``SPARK_CLEORA_WARM_WORKERS=0`` turns it off.
    """
    if os.environ.get("SPARK_CLEORA_WARM_WORKERS", "1") == "0" or cores < 1:
        return None

    def warm() -> None:
        try:
            spark.sparkContext.setJobDescription("spark_cleora: start Python workers")
            (spark.range(0, cores, 1, cores).mapInArrow(_importer(tuple(WORKER_IMPORTS)), "id long")
             .write.format("noop").mode("overwrite").save())
        except Exception as exc:  # best effort: the session may be stopping, the job was only a head start
            thread.failure = exc
            log.debug("warming the Python workers failed", exc_info=True)

    thread = threading.Thread(target=warm, name="spark_cleora-warm-workers", daemon=True)
    thread.failure = None  # the warm-up's exception, if it failed
    thread.start()

    def quiet_if_warming() -> None:
        # A command that fails early (say, a missing column) exits while the warm-up job runs; the JVM,
        # shutting down when Python exits, cancels it and logs the noop write's abort as ERROR lines
        # under the command's own one-line message. Python's atexit runs before that.
        if thread.is_alive():
            try:
                spark.sparkContext.setLogLevel("OFF")
            except Exception:
                pass

    atexit.register(quiet_if_warming)
    return thread


def _quiet_spark(spark) -> None:
    try:
        spark.sparkContext.setLogLevel(os.environ.get("SPARK_CLEORA_SPARK_LOG_LEVEL", "WARN"))
    except Exception:  # Connect sessions have no SparkContext
        pass


@contextmanager
def step(spark, text: str, logger: logging.Logger | None = None) -> Iterator[None]:
    """:func:`job_description` that also logs the step's start and its time (INFO): a long command's
    progress on the console, as ``embed`` logs its iterations."""
    logger = logger or log
    name = text.removeprefix("spark_cleora ")
    logger.info("%s ...", name)
    t0 = time.perf_counter()
    with job_description(spark, text):
        yield
    logger.info("%s: done in %.1fs", name, time.perf_counter() - t0)


@contextmanager
def job_description(spark, text: str) -> Iterator[None]:
    """Label the Spark jobs started inside the block (Spark UI), where the session supports it."""
    sc = None
    if not is_remote(spark):
        try:
            sc = spark.sparkContext
            sc.setJobDescription(text)
        except Exception:
            sc = None
    try:
        yield
    finally:
        if sc is not None:
            sc.setJobDescription(None)


#: Spark 4 cuts the rows it sends a Python task into Arrow batches of at most
#: ``spark.sql.execution.arrow.maxRecordsPerBatch`` rows and, unless the next conf is ``Int.MaxValue``, at
#: most ``maxBytesPerBatch`` bytes, which it checks by sizing every column's buffers after *each* row
#: (``BatchedPythonArrowInput``). On narrow rows that check costs more than the conversion: 10M membership
#: rows (a key, a name, two hashes) reach the graph build's Python tasks in 11-14 s on 2 cores with it and
#: in 7.2-7.5 s without (2026-11-30, ``local[2]``, Spark 4.3). Spark 3.5 has no such check.
UNCHECKED_BATCH_BYTES = {"spark.sql.execution.arrow.maxBytesPerBatch": str(2**31 - 1)}


@contextmanager
def narrow_row_batches(spark) -> Iterator[None]:
    """Jobs started inside cut their rows to Python by row count only (``UNCHECKED_BATCH_BYTES``), then
    the session's settings are put back. For jobs that send many narrow rows (the graph build's
    memberships: a batch of ``maxRecordsPerBatch`` rows, 10,000 by default, is a few hundred KB); a conf
    the session refuses to change is left as it is."""
    previous: dict[str, str | None] = {}
    for key, value in UNCHECKED_BATCH_BYTES.items():
        try:
            previous[key] = spark.conf.get(key, None)
            spark.conf.set(key, value)
        except Exception:  # noqa: BLE001 - only a speed-up: a session that refuses it runs as configured
            previous.pop(key, None)
    try:
        yield
    finally:
        for key, value in previous.items():
            try:
                if value is None:
                    spark.conf.unset(key)
                else:
                    spark.conf.set(key, value)
            except Exception:  # noqa: BLE001 - the session is stopping
                pass
