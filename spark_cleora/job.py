"""The batch job behind ``spark-cleora embed``: read, embed, write atomically, report."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from pyspark.sql import SparkSession

from .config import TABLE_FORMATS, EmbedConfig
from .engine.embed import default_work_dir, run_embedding
from .errors import EXIT_INPUT, EXIT_RESOURCE, EXIT_USAGE, ConfigError, ForeignWorkError, RefusedError, is_expected
from .storage.paths import check_local_inputs, check_parquet_inputs, local_path
from .storage.exports import export_cleora_text, export_npy
from .storage.readers import read_cleora_text, read_events
from .storage.outputs import (
    check_output_dir,
    check_table_name,
    check_work_dir,
    mark_output,
    output_lock,
    write_atomically,
    write_json,
)
from .runtime.session import job_description
from .storage.tables import default_table_work_dir, require_delta, write_output
from .storage.task_parquet import task_parquet_target
from .engine.work_store import WorkStore

log = logging.getLogger(__name__)


def cleora_text_file_name(cfg: EmbedConfig) -> str:
    """Cleora 1 naming: ``emb__{colA}__{colB}.out`` (a reflexive column pairs with itself)."""
    cols = cfg.column_spec
    a = cols[0].name
    b = cols[1].name if len(cols) > 1 else a
    return f"emb__{a}__{b}.out"


def path_inputs(cfg: EmbedConfig) -> list[str]:
    """The input paths of a run (events and --init-vectors), which no output may touch."""
    paths = [] if cfg.input_format == "table" else list(cfg.inputs)
    return paths + ([cfg.init_vectors] if cfg.init_vectors else [])


#: the config fields of ``embed`` that are paths (qualified on a non-local default filesystem)
PATH_FIELDS = ("inputs", "init_vectors", "output", "work_dir", "rejects")


def qualified_config(spark: SparkSession, cfg: EmbedConfig) -> EmbedConfig:
    """``cfg`` with its paths as Spark resolves them (:func:`spark_cleora.storage.filesystem.qualify`): unchanged
    on a local default filesystem; full URIs on another one, so the checks read through Spark."""
    from .storage.filesystem import qualify_fields

    return qualify_fields(spark, cfg, PATH_FIELDS, skip=("inputs",) if cfg.input_format == "table" else ())


def check_embed_paths(cfg: EmbedConfig, work_uri: str | None = None) -> None:
    """Every path rule of the run, checked before any work (see :mod:`spark_cleora.storage.outputs`): inputs
    exist, the output, work and rejects paths may be written, a table name parses. Local paths are
    checked before Spark starts; others through the active session (qualify them first,
    :func:`qualified_config`)."""
    if cfg.output and cfg.output_format not in TABLE_FORMATS and local_path(cfg.output) is None:
        raise ConfigError(f"--output-format {cfg.output_format} writes single files through the driver; use a "
                          f"local --output path (got {cfg.output!r}) or parquet")
    check_local_inputs(cfg.inputs, cfg.input_format)
    if cfg.input_format != "table":
        check_remote_inputs(cfg.inputs)
    if cfg.input_format == "parquet":
        check_parquet_inputs(cfg.inputs, "events")
    inputs = path_inputs(cfg)
    if cfg.output:
        check_output_dir(cfg.output, inputs=inputs)
    if cfg.output_table:
        check_table_name(cfg.output_table)
        if cfg.input_format == "table" and cfg.output_table.lower() in (i.lower() for i in cfg.inputs):
            raise RefusedError(f"--output-table {cfg.output_table!r} is the input table")
    work = work_uri or cfg.work_dir or (default_work_dir(cfg.output) if cfg.output else None)
    if work:
        check_work_dir(work, outputs=[cfg.output, cfg.rejects], inputs=inputs,
                       what="--work-dir" if cfg.work_dir else "work directory")
    if cfg.rejects:
        check_output_dir(cfg.rejects, inputs=[*inputs, cfg.output, work], what="--rejects")


def check_remote_inputs(inputs: tuple[str, ...] | list[str]) -> None:
    """A missing input on a non-local store (not a glob) is a usage error too, found with a Spark listing
    of the active session before any work."""
    from .storage.filesystem import active_session, exists

    spark = active_session()
    for p in inputs:
        if spark is not None and local_path(p) is None and not any(c in p for c in "*?[{") and not exists(spark, p):
            raise ConfigError(f"input {p!r} does not exist")


def run_embed_job(spark: SparkSession, cfg: EmbedConfig, *, locked: bool = False) -> dict[str, Any]:
    """Run the whole job; returns the run report (also written to ``OUTPUT/_run.json``).

    The paths are checked and the output locked (unless the caller holds :func:`embed_locks`,
    ``locked``) before anything runs; a run that fails with a usage or input error (exit 2/3) leaves no
    work directory behind.
    """
    cfg = qualified_config(spark, cfg)
    destination = cfg.output or cfg.output_table
    assert destination
    work_uri = cfg.work_dir or (default_work_dir(cfg.output) if cfg.output
                                else default_table_work_dir(spark, destination))
    check_embed_paths(cfg, work_uri)
    with contextlib.nullcontext() if locked else embed_locks(cfg):
        return _run_locked(spark, cfg, work_uri)


@contextlib.contextmanager
def embed_locks(cfg: EmbedConfig) -> Iterator[None]:
    """Hold the locks of the run's output and explicit work directory (see :func:`output_lock`)."""
    with contextlib.ExitStack() as locks:
        if cfg.output:
            locks.enter_context(output_lock(cfg.output))
        if cfg.work_dir:
            locks.enter_context(output_lock(cfg.work_dir, "--work-dir"))
        yield


def _run_locked(spark: SparkSession, cfg: EmbedConfig, work_uri: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    destination = cfg.output or cfg.output_table
    if cfg.output_format == "delta":
        require_delta(spark)  # fail before embedding, with how to add Delta
    # checkpoint=local: lineage cut in executor storage, nothing to resume (the work dir then only
    # stages exports).
    store = WorkStore(spark, work_uri)
    log.info("spark_cleora embed: %s -> %s (work dir %s)", ", ".join(cfg.inputs), destination, work_uri)
    try:
        return _embed_and_write(spark, cfg, store, t0)
    except Exception as exc:
        if is_expected(exc, EXIT_USAGE, EXIT_INPUT, EXIT_RESOURCE) and not isinstance(exc, ForeignWorkError):
            # an expected failure (exit 2/3/5): nothing here is worth resuming, and a kept graph of this
            # config would block the rerun the message advises (e.g. another --on-bad-rows policy); a
            # work dir of another run (ResumeMismatchError) is the user's
            store.remove()
        raise


def _embed_and_write(spark: SparkSession, cfg: EmbedConfig, store: WorkStore, t0: float) -> dict[str, Any]:
    destination = cfg.output or cfg.output_table
    work_uri = store.uri
    if cfg.output_format not in TABLE_FORMATS:  # npy/cleora-text stage the rows in the work dir
        from .storage.outputs import claim_work_dir

        claim_work_dir(work_uri)
    source = read_cleora_text(spark, cfg) if cfg.input_format == "cleora-tsv" else read_events(spark, cfg)
    result = run_embedding(spark, cfg, source, store=store if cfg.checkpoint == "parquet" else None,
                           single_pass=True)
    report = result.report
    emb = result.embeddings

    def write(target: str) -> None:
        with job_description(spark, "spark_cleora: write output"):
            by_task = result.write_parquet and task_parquet_target(
                spark, output_format=cfg.output_format, partition_by=cfg.partition_by,
                table=bool(cfg.output_table), target=target)
            if by_task:  # the one task writes the Parquet file itself (no Spark writer)
                n = result.write_parquet(by_task)
            elif cfg.output_format in TABLE_FORMATS:  # parquet/delta, at a path or as a table
                n = write_output(emb, cfg, target)
            else:
                cached = store.write(emb, "output")
                n = cached.count()
                if cfg.output_format == "npy":
                    export_npy(cached, target, dim=cfg.output_dim, n_rows=n)
                else:
                    export_cleora_text(cached, target, dim=cfg.output_dim, n_rows=n, file_name=cleora_text_file_name(cfg))
        report.update(result.finish())  # the one-task engine ran inside this write: its report is in now
        if report.get("one_task") is not None and report.get("engine") == "one-task":
            report["one_task"]["output_written_by_task"] = bool(by_task)
        report["entities_written"] = n
        report["output"] = destination
        report["output_format"] = cfg.output_format
        report["seconds_total"] = round(time.perf_counter() - t0, 3)
        lp = local_path(target)
        if lp is not None and not cfg.output_table:  # the report, then _SUCCESS last, then the rename
            write_json(os.path.join(lp, "_run.json"), report)
            mark_output(lp, f"embeddings-{cfg.output_format}")
            with open(os.path.join(lp, "_SUCCESS"), "w", encoding="utf-8"):  # (re)written: newest file
                pass
        elif not cfg.output_table:  # a non-local store: the marker, written last
            mark_output(target, f"embeddings-{cfg.output_format}")

    t_write = time.perf_counter()
    if cfg.output_table or cfg.output_format == "delta":
        write(destination)  # a table swap or a Delta commit is the atomic step
    else:
        write_atomically(cfg.output, write)
    log.info("wrote %d entities to %s in %.1fs", report["entities_written"], destination,
             time.perf_counter() - t_write)
    if cfg.keep_work:
        log.info("work directory kept: %s", work_uri)
    else:
        store.remove()
    return report
