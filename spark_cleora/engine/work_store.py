"""The run's work directory: the prepared graph and every finished iteration, for lineage cuts and resume.

Layout::

    WORK/manifest.json          fingerprint of the config and inputs, engine settings
    WORK/graph/{blocks,entities}/     Parquet, each complete when its _SUCCESS exists
    WORK/iter=0001/ ...         one directory per finished iteration (the start vectors are columns of
                                graph/entities, or iter=0000 with --init-vectors)

A directory counts as finished only when Spark's ``_SUCCESS`` marker is there, so a run killed in the
middle of writing iteration k resumes from k-1.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from ..errors import ResumeMismatchError
from ..storage.filesystem import qualify
from ..storage.paths import local_path

log = logging.getLogger(__name__)


class WorkStore:
    """A work directory on a local or remote filesystem reachable by every executor."""

    def __init__(self, spark: SparkSession, uri: str) -> None:
        self.spark = spark
        self.uri = (qualify(spark, uri) or uri).rstrip("/")  # scheme-less: the default filesystem's
        self.local = local_path(self.uri)

    # -- paths ---------------------------------------------------------------------------------
    def path(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def iteration_name(self, k: int) -> str:
        return f"iter={k:04d}"

    # -- completion markers --------------------------------------------------------------------
    def is_complete(self, name: str) -> bool:
        if self.local is not None:
            return os.path.exists(os.path.join(self.local, name, "_SUCCESS"))
        try:  # remote store: a readable Parquet dataset counts as complete (Spark commits atomically)
            self.spark.read.parquet(self.path(name)).schema
            return True
        except Exception:
            return False

    def write(self, df: DataFrame, name: str) -> DataFrame:
        # no Parquet dictionaries: packed vectors and plan blobs never repeat, trying costs time
        df.write.mode("overwrite").option("parquet.enable.dictionary", "false").parquet(self.path(name))
        return self.read(name)

    def read(self, name: str) -> DataFrame:
        return self.spark.read.parquet(self.path(name))

    # -- written by tasks (local stores) ------------------------------------------------------------
    def task_directory(self, name: str) -> str:
        """An empty local directory for ``name`` whose files tasks write themselves (what was there, an
        unfinished earlier attempt, is removed, as Spark's overwrite would); :meth:`mark_complete` once
        the job that wrote them succeeded."""
        path = self._local_path(name)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path

    def mark_complete(self, name: str) -> None:
        """Spark's ``_SUCCESS`` marker for a directory written by tasks (:meth:`task_directory`)."""
        with open(os.path.join(self._local_path(name), "_SUCCESS"), "w", encoding="utf-8"):
            pass

    def _local_path(self, name: str) -> str:
        if self.local is None:
            raise ValueError("tasks write only into a local work directory")
        return os.path.join(self.local, name)

    def last_iteration(self, upto: int) -> int | None:
        """Highest finished iteration <= ``upto``, or None."""
        for k in range(upto, -1, -1):
            if self.is_complete(self.iteration_name(k)):
                return k
        return None

    def drop_iteration(self, k: int) -> None:
        """Free the disk of an iteration nobody needs any more (local stores only)."""
        if self.local is not None:
            shutil.rmtree(os.path.join(self.local, self.iteration_name(k)), ignore_errors=True)

    # -- manifest ------------------------------------------------------------------------------
    def check_or_write_manifest(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Return the stored manifest if it matches ``manifest['fingerprint']``; write it if absent."""
        from ..storage.outputs import claim_work_dir

        claim_work_dir(self.uri)  # refuses someone's non-empty directory; marks ours for deletion later
        if self.local is None:
            return manifest  # remote stores: no resume check (documented), iterations still cut lineage
        path = os.path.join(self.local, "manifest.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                old = json.load(fh)
            if old.get("fingerprint") == manifest["fingerprint"]:
                return old
            if self.has_artifacts():
                changed = sorted(
                    k for k in set(old.get("fingerprint", {})) | set(manifest["fingerprint"])
                    if old.get("fingerprint", {}).get(k) != manifest["fingerprint"].get(k)
                )
                raise ResumeMismatchError(
                    f"work directory {self.uri} holds a different run (changed: {', '.join(changed)}); "
                    "refusing to resume from it. Delete it or pass another --work-dir."
                )
            log.info("work directory %s holds nothing finished from another run; starting afresh", self.uri)
            self.remove(keep_dir=True)
        self.save_manifest(manifest)
        return manifest

    def save_manifest(self, manifest: dict[str, Any]) -> None:
        if self.local is None:
            return
        os.makedirs(self.local, exist_ok=True)
        path = os.path.join(self.local, "manifest.json")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)

    def has_artifacts(self) -> bool:
        """True when any stage of a run finished here (so switching runs would discard work)."""
        return any(self.is_complete(n) for n in ("graph/blocks", "graph/entities", self.iteration_name(0)))

    def remove(self, *, keep_dir: bool = False) -> None:
        """Delete what this tool wrote here (only in a directory carrying its work marker)."""
        from ..storage.outputs import clear_work_dir

        clear_work_dir(self.uri, remove_dir=not keep_dir)  # (a non-local store: emptied, see there)
