"""Paths as Spark resolves them: a path without a scheme is on the session's default filesystem.

Spark reads ``/lake/events`` from ``fs.defaultFS`` (HDFS on a Hadoop cluster, ``dbfs:`` on some
platforms, ``file:`` on a laptop), and a relative path from that filesystem's working directory. The
tool learns both **through Spark itself**: it asks Spark to read a probe path that does not exist and
takes the qualified path from Spark's ``PATH_NOT_FOUND`` error (:func:`default_fs`). This needs no JVM
handle (it works on Spark Connect), and it sees every way the default can be set: ``core-site.xml``,
``spark.hadoop.fs.defaultFS``, or ``fs.defaultFS`` set on the session at runtime. Where none of these
can be (:func:`_hadoop_defaults_only`: a ``local`` session that spark_cleora started, with no Hadoop
configuration in reach) the default is Hadoop's own, ``file:``, and the probe is skipped.

* On a local default filesystem (``file:``) paths stay as given and the rules of
  :mod:`spark_cleora.storage.outputs` check them on the driver's disk.
* Otherwise :func:`qualify` turns a scheme-less path into the full URI Spark would use
  (``/lake/out`` -> ``viewfs://lake/lake/out``), and the tool treats it like any other non-local URI
  (``s3a://`` ...): existence, emptiness and markers are found with Spark reads (:func:`path_state`),
  markers are written as one-line Spark tables (:func:`write_marker`).

Spark skips files whose names start with ``_`` or ``.`` when it lists a directory, and also when such a
file is named directly, so markers on non-local stores are directories (``_spark_cleora_output/``,
``_emde/``) whose data files Spark reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlparse

from ..runtime.session import conf_value
from .paths import local_path

#: name of the (non-existent) path whose qualified form reveals the default filesystem
_PROBE = "spark_cleora_default_fs_probe_"
_NOT_FOUND = re.compile(r"Path does not exist: (\S+)")
_cache: dict[tuple[int, str | None, str | None], tuple[str, str]] = {}


def has_scheme(path: str) -> bool:
    """True for a URI (``hdfs://x/y``, ``file:/y``, ``s3a://b``); a Windows drive letter is no scheme."""
    return len(urlparse(path).scheme) > 1


def is_not_found(exc: BaseException) -> bool:
    """Spark's "path does not exist" (``PATH_NOT_FOUND`` from 3.4 on, classic and Connect)."""
    text = str(exc)
    return "PATH_NOT_FOUND" in text or "Path does not exist" in text


def _not_found_path(exc: BaseException) -> str | None:
    params = getattr(exc, "getMessageParameters", lambda: None)() or {}
    path = params.get("path") if isinstance(params, dict) else None
    if not path:
        m = _NOT_FOUND.search(str(exc))
        path = m.group(1) if m else None
    return path.rstrip(".") if path else None  # the message ends the sentence with a period


def default_fs(spark: Any) -> tuple[str, str]:
    """The session's default filesystem and working directory, as Spark qualifies paths.

    Returns ``(root, working_dir)``, e.g. ``("viewfs://lake", "viewfs://lake/user/me")`` or
    ``("file:", "file:/home/me")``. Cached per session and value of the ``fs.defaultFS`` settings.
    """
    key = (id(spark), conf_value(spark, "fs.defaultFS"), conf_value(spark, "spark.hadoop.fs.defaultFS"))
    if key not in _cache and key[1:] == (None, None) and _hadoop_defaults_only(spark):
        _cache[key] = ("file:", "file:" + os.getcwd())
    if key not in _cache:
        probe = _PROBE + uuid.uuid4().hex
        qualified = None
        try:
            # analysis qualifies the path; nothing is read (two paths: Spark then skips its streaming-metadata
            # lookup, which logs a WARN with a stack trace for a path that does not exist)
            spark.read.text([probe, probe]).schema
        except Exception as exc:
            if not is_not_found(exc):
                raise
            qualified = _not_found_path(exc)
        if not qualified or not qualified.endswith("/" + probe):
            qualified = "file:" + os.path.join(os.getcwd(), probe)  # (the probe exists?!) as Spark's default
        cwd = qualified[: -len(probe) - 1]
        parsed = urlparse(cwd)
        root = f"{parsed.scheme}://{parsed.netloc}" if parsed.netloc else f"{parsed.scheme}:"
        _cache[key] = (root, cwd)
    return _cache[key]


def _hadoop_defaults_only(spark: Any) -> bool:
    """True when nothing can set the default filesystem, so it is Hadoop's own, ``file:`` (and the probe's
    query, ~0.5 s of a small run, is skipped): a session whose JVM this process started for a ``local``
    master (:data:`~spark_cleora.runtime.session.EMBEDDED_LOCAL_CONF`; not a notebook's, not under
    ``spark-submit``, not Connect) with no Hadoop configuration where the driver would find one
    (:func:`_no_hadoop_configuration`) and no extra class path or jars that could bring a
    ``core-site.xml``. The caller has checked that neither ``fs.defaultFS`` setting is set."""
    from ..runtime.session import is_embedded_local

    if not is_embedded_local(spark):
        return False
    if any(conf_value(spark, k) for k in ("spark.driver.extraClassPath", "spark.jars", "spark.jars.packages",
                                     "fs.default.name", "spark.hadoop.fs.default.name")):
        return False
    return _no_hadoop_configuration()


def _no_hadoop_configuration() -> bool:
    """No Hadoop configuration directory in the environment, and no ``core-site.xml`` or ``fs.defaultFS``
    setting in Spark's configuration directory (``SPARK_CONF_DIR``, else ``$SPARK_HOME/conf``, else the
    installed PySpark's ``conf``)."""
    if os.environ.get("HADOOP_CONF_DIR") or os.environ.get("YARN_CONF_DIR"):
        return False
    spark_home = os.environ.get("SPARK_HOME")
    if not spark_home:
        import pyspark

        spark_home = os.path.dirname(pyspark.__file__)
    conf_dir = os.environ.get("SPARK_CONF_DIR") or os.path.join(spark_home, "conf")
    if os.path.exists(os.path.join(conf_dir, "core-site.xml")):
        return False
    try:
        with open(os.path.join(conf_dir, "spark-defaults.conf"), encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return True
    return "fs.defaultFS" not in text and "fs.default.name" not in text


def qualify(spark: Any, path: str | None) -> str | None:
    """``path`` as Spark resolves it: unchanged when it has a scheme or the default filesystem is local;
    else the full URI on the default filesystem (relative paths below its working directory)."""
    if not path or has_scheme(path):
        return path
    root, cwd = default_fs(spark)
    if root.startswith("file:"):
        return path
    if path.startswith("/"):
        return root.rstrip("/") + path
    return cwd.rstrip("/") + "/" + path.removeprefix("./")


def qualify_fields(spark: Any, cfg: Any, fields: Iterable[str], *, skip: Iterable[str] = ()) -> Any:
    """A copy of the frozen config ``cfg`` with its path ``fields`` (a string or a tuple of strings)
    qualified by :func:`qualify`; ``skip`` names fields that hold table names, not paths."""
    skipped = set(skip)
    changes: dict[str, Any] = {}
    for name in fields:
        value = getattr(cfg, name, None)
        if name in skipped or not value:
            continue
        new = qualify(spark, value) if isinstance(value, str) else tuple(qualify(spark, v) for v in value)
        if new != value:
            changes[name] = new
    return dataclasses.replace(cfg, **changes) if changes else cfg


def local_without_spark(conf: Mapping[str, str], *, remote: str | None = None) -> bool:
    """True when a session started by this process would certainly use the local default filesystem,
    so paths can be checked before Spark starts (a refused command then costs no JVM start).

    Certain means: a new embedded session (no Spark Connect, no running session, not under
    ``spark-submit``), no ``fs.defaultFS`` among the ``--conf`` settings, no Hadoop configuration
    directory in the environment and no ``core-site.xml`` or ``fs.defaultFS`` setting in Spark's
    configuration directory. Anything else is decided by :func:`default_fs` once the session runs.
    """
    if any(k.endswith("fs.defaultFS") for k in conf) or remote or os.environ.get("SPARK_REMOTE"):
        return bool(not remote and not os.environ.get("SPARK_REMOTE")
                    and all(v.startswith("file:") for k, v in conf.items() if k.endswith("fs.defaultFS")))
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        return False
    from pyspark.sql import SparkSession

    if SparkSession.getActiveSession() is not None:
        return False
    return _no_hadoop_configuration()


def needs_session(conf: Mapping[str, str], paths: Iterable[str | None], *, remote: str | None = None) -> bool:
    """True when checking ``paths`` needs a running session: the default filesystem is not known to be
    local, or a path is a non-local URI (its checks read through Spark)."""
    return not local_without_spark(conf, remote=remote) or any(p and local_path(p) is None for p in paths)


# --------------------------------------------------------------------------------------------
# a non-local path, seen through Spark reads (no JVM handle: the same on classic and Connect)
# --------------------------------------------------------------------------------------------

def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def path_state(spark: Any, uri: str) -> str:
    """``"missing"``, ``"file"``, ``"empty"`` (a directory without any entry, hidden ones included) or
    ``"dir"`` (a directory with entries) for a path Spark can read.

    Spark lists ``uri`` (its data files, skipping ``_``/``.`` names); a directory that shows none is
    globbed (``uri/*``), which matches hidden entries too: no match at all means empty.
    """
    try:
        rows = spark.read.format("binaryFile").load(uri).select("path").limit(2).collect()
    except Exception as exc:
        if is_not_found(exc):
            return "missing"
        raise
    if len(rows) == 1 and _same_leaf(rows[0]["path"], uri):  # a directory lists the files below it
        return "file"
    if rows:
        return "dir"
    try:
        spark.read.format("binaryFile").load(join(uri, "*")).schema
    except Exception as exc:
        if is_not_found(exc):
            return "empty"
        raise
    return "dir"


def _same_leaf(listed: str, uri: str) -> bool:
    return urlparse(listed).path.rstrip("/") == urlparse(uri).path.rstrip("/")


def exists(spark: Any, uri: str) -> bool:
    return path_state(spark, uri) != "missing"


def write_marker(spark: Any, directory: str, name: str, data: Mapping[str, Any]) -> None:
    """``directory/name`` as a one-line Spark text table holding ``data`` as JSON."""
    spark.createDataFrame([(json.dumps(dict(data), sort_keys=True, default=str),)], "value string") \
        .coalesce(1).write.mode("overwrite").text(join(directory, name))


def read_marker(spark: Any, directory: str, name: str) -> dict[str, Any] | None:
    """The JSON of a marker written by :func:`write_marker`, or None when there is none (or it is empty)."""
    if not exists(spark, join(directory, name)):
        return None
    rows = spark.read.text(join(directory, name)).limit(1).collect()
    try:
        data = json.loads(rows[0][0]) if rows else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def empty_directory(spark: Any, uri: str) -> None:
    """Replace everything in ``uri`` by an empty table: Spark's overwrite deletes the old contents
    (the only delete reachable without a JVM handle); ``_SUCCESS`` and empty files remain."""
    spark.createDataFrame([], "value string").coalesce(1).write.mode("overwrite").text(uri)


def active_session() -> Any:
    """The active session (classic or Connect), or None."""
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession()
