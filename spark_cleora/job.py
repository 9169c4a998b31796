"""The batch job behind ``spark-cleora embed``: read, embed, write atomically, report."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from pyspark.sql import SparkSession

from .config import TABLE_FORMATS, EmbedConfig
from .embed import default_work_dir, run_embedding
from .io import export_cleora_text, export_npy, read_cleora_text, read_events, write_atomically, write_json
from .session import job_description
from .tables import default_table_work_dir, require_delta, write_output
from .store import WorkStore, local_path

log = logging.getLogger(__name__)


def cleora_text_file_name(cfg: EmbedConfig) -> str:
    """Cleora 1 naming: ``emb__{colA}__{colB}.out`` (a reflexive column pairs with itself)."""
    cols = cfg.column_spec
    a = cols[0].name
    b = cols[1].name if len(cols) > 1 else a
    return f"emb__{a}__{b}.out"


def run_embed_job(spark: SparkSession, cfg: EmbedConfig) -> dict[str, Any]:
    """Run the whole job; returns the run report (also written to ``OUTPUT/_run.json``)."""
    t0 = time.perf_counter()
    destination = cfg.output or cfg.output_table
    assert destination
    if cfg.output_format == "delta":
        require_delta(spark)  # fail before embedding, with how to add Delta
    work_uri = cfg.work_dir or (default_work_dir(cfg.output) if cfg.output
                                else default_table_work_dir(spark, destination))
    # checkpoint=local: lineage cut in executor storage, nothing to resume (the work dir then only
    # stages exports).
    store = WorkStore(spark, work_uri)
    log.info("spark_cleora embed: %s -> %s (work dir %s)", ", ".join(cfg.inputs), destination, work_uri)
    source = read_cleora_text(spark, cfg) if cfg.input_format == "cleora-tsv" else read_events(spark, cfg)
    result = run_embedding(spark, cfg, source, store=store if cfg.checkpoint == "parquet" else None,
                           single_pass=True)
    report = result.report
    emb = result.embeddings

    def write(target: str) -> None:
        with job_description(spark, "spark_cleora: write output"):
            if cfg.output_format in TABLE_FORMATS:  # parquet/delta, at a path or as a table
                n = write_output(emb, cfg, target)
            else:
                cached = store.write(emb, "output")
                n = cached.count()
                if cfg.output_format == "npy":
                    export_npy(cached, target, dim=cfg.output_dim, n_rows=n)
                else:
                    export_cleora_text(cached, target, dim=cfg.output_dim, n_rows=n, file_name=cleora_text_file_name(cfg))
        result.finish()  # the one-task engine ran inside this write: its report is in now
        report["entities_written"] = n
        report["output"] = destination
        report["output_format"] = cfg.output_format
        report["seconds_total"] = round(time.perf_counter() - t0, 3)
        lp = local_path(target)
        if lp is not None and not cfg.output_table:  # the report, then _SUCCESS last, then the rename
            write_json(os.path.join(lp, "_run.json"), report)
            with open(os.path.join(lp, "_SUCCESS"), "w", encoding="utf-8"):  # (re)written: newest file
                pass

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
