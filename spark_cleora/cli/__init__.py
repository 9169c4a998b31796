"""``spark-cleora`` console script (also behind ``jobs/*.py`` for spark-submit)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..config import OUTPUT_FORMATS, EmbedConfig, load_toml
from ..errors import EXIT_OK, ConfigError, exit_status
from .._version import __version__
from ..options import add_embedding_options, add_spark_options, session_for_paths, setup_logging, spark_from_args

log = logging.getLogger("spark_cleora")

# Modules that add subcommands (see build_parser).
_SUBCOMMAND_MODULES: list[str] = ["spark_cleora.cli.evaluate", "spark_cleora.cli.tools", "spark_cleora.cli.emde",
                                     "spark_cleora.cli.foldin"]

EMBED_EXAMPLES = """\
examples:
  # events (user, item) in Parquet -> item embeddings
  spark-cleora embed events.parquet --hyperedge user_id --entity item_id --output out/emb
  # split users into sessions at 30-minute gaps, symmetric Markov, 3 iterations
  spark-cleora embed events/ --hyperedge user_id --entity item_id --timestamp ts --session-gap 1800 \\
      --markov symmetric --iterations 3 --output out/emb
  # Cleora text input, as pycleora: one hyperedge per line
  spark-cleora embed baskets.tsv --input-format cleora-tsv --columns complex::reflexive::product \\
      --dim 128 --init fx --output out/emb
  # options from a file, flags override it; on a cluster
  spark-cleora embed --config conf/embed.example.toml --master yarn --conf spark.executor.memory=8g
"""


def _embed_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    S = argparse.SUPPRESS  # unset flags stay absent, so a --config file can supply them
    p = sub.add_parser(
        "embed", help="Cleora embeddings of an event table or Cleora text",
        description="Embed entities with Cleora (pycleora-exact) on Spark.",
        epilog=EMBED_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=S,
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="input paths (or one table name)")
    p.add_argument("--config", help="TOML file with an [embed] table of these options (flags override)")
    p.add_argument("--output", "-o", help="output directory (written atomically)")
    g = p.add_argument_group("input")
    g.add_argument("--input-format", choices=["parquet", "csv", "tsv", "table", "cleora-tsv"],
                   help="parquet (default), csv/tsv with a header, a catalog table, or cleora-tsv")
    g.add_argument("--input-table", dest="input_table", help="read events from this catalog table")
    g.add_argument("--hyperedge", help="event column that groups events into hyperedges (user or session)")
    g.add_argument("--entity", help="event column with the entities to embed (e.g. item)")
    g.add_argument("--timestamp", help="event time column (epoch seconds or timestamp)")
    g.add_argument("--session-gap", type=float, help="split a hyperedge where events are > SECONDS apart")
    g.add_argument("--dedupe", action="store_true", help="drop repeated (hyperedge, entity) events")
    g.add_argument("--weight", help="event column with a positive weight per event (weight 2 = the event twice)")
    g.add_argument("--columns", help="cleora-tsv column spec, e.g. 'complex::reflexive::product'")
    g.add_argument("--csv-delimiter", help="field delimiter for csv input (default ',')")
    g.add_argument("--on-bad-rows", choices=["fail", "skip", "quarantine"],
                   help="fail (default): stop with the rule and first bad row; skip: drop and count; "
                        "quarantine: also write them to --rejects")
    g.add_argument("--rejects", help="with --on-bad-rows quarantine: Parquet directory for rejected rows")
    g.add_argument("--max-line-length", type=int, help="cleora-tsv lines longer than this are bad rows (10000000)")
    add_embedding_options(p.add_argument_group("embedding"))
    g = p.add_argument_group("output and engine")
    g.add_argument("--output-format", choices=list(OUTPUT_FORMATS),
                   help="parquet (default), delta (needs Delta on the classpath, e.g. Databricks), npy, cleora-text")
    g.add_argument("--output-table", help="write this catalog table instead of --output (parquet or delta; replaced atomically)")
    g.add_argument("--partition-by", nargs="+", choices=["column"], help="partition parquet/delta output by the input column")
    g.add_argument("--work-dir", help="where iterations are written (default: beside the output)")
    g.add_argument("--checkpoint-dir", dest="checkpoint_dir",
                   help="like --work-dir, but keep it and every finished iteration after success")
    g.add_argument("--keep-work", action="store_true", help="keep the work directory after success")
    g.add_argument("--checkpoint", choices=["parquet", "local"],
                   help="parquet: write each iteration to the work dir (resumable, default); local: localCheckpoint")
    g.add_argument("--num-blocks", type=int, help="blocks the hyperedges are cut into (default: from data size); the "
                   "shuffle engine's iterations multiply groups of them that fit --block-memory-gb")
    g.add_argument("--block-memory-gb", type=float,
                   help="memory a Python worker may use (one block or group of blocks, or the whole graph with "
                        "--engine one-task); "
                        "default 4, or in local mode the workers' share of the memory (for the one-task engine, "
                        "whose task runs alone, what all the workers would share); larger hyperedges are refused")
    g.add_argument("--block-memberships", type=int, help="target memberships per block (default: what fits --block-memory-gb)")
    g.add_argument("--engine", choices=["auto", "one-task", "shuffle"],
                   help="iterations in one Python task (one-task), or distributed per iteration (shuffle); "
                        "auto (default): one-task when the graph fits --block-memory-gb. An event table of at most "
                        "2M rows (--conf spark.cleora.oneTask.smallInputRows=N; 0: never) written to a local "
                        "path builds its graph in that task too: one Spark job")
    add_spark_options(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spark-cleora",
        description="Cleora embeddings and EMDE sketches on Apache Spark.",
    )
    parser.add_argument("--version", action="version", version=f"spark_cleora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _embed_parser(sub).set_defaults(handler=_run_embed)
    p = sub.add_parser("demo", help="embed the bundled sample and print nearest neighbours",
                       description="Run the embed job on the bundled sample with an embedded Spark.")
    p.add_argument("--output", default=os.path.join("out", "demo-embeddings"), help="output directory")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--iterations", type=int, default=3)
    add_spark_options(p)
    p.set_defaults(handler=_run_demo)
    # Subcommand groups in their own modules: each has ``register(sub)``, which adds its parsers with
    # ``set_defaults(handler=fn)``; ``fn(ns) -> int`` runs inside main()'s error handling.
    for module in _SUBCOMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


_SPARK_KEYS = {"master", "remote", "conf", "log_level", "config", "command", "handler", "input_table", "checkpoint_dir"}


def embed_config_from_args(ns: argparse.Namespace) -> EmbedConfig:
    """Defaults <- TOML file <- command-line flags."""
    values: dict[str, Any] = {}
    if getattr(ns, "config", None):
        values.update(load_toml(ns.config, "embed"))
    cli = {k: v for k, v in vars(ns).items() if k not in _SPARK_KEYS}
    if cli.get("inputs") == []:
        cli.pop("inputs")
    if getattr(ns, "checkpoint_dir", None):
        cli["work_dir"] = ns.checkpoint_dir
        cli["keep_work"] = True
    if getattr(ns, "input_table", None):
        if cli.get("inputs") or cli.get("input_format", "table") != "table":
            raise ConfigError("--input-table reads a catalog table: give it without INPUT paths or --input-format")
        cli["inputs"] = (ns.input_table,)
        cli["input_format"] = "table"
    values.update(cli)
    for flag, other in (("output_table", "output"), ("output", "output_table")):
        if flag in cli and other not in cli:  # a flag's destination replaces the file's
            values.pop(other, None)
    if "inputs" in values:
        values["inputs"] = tuple(values["inputs"])
    if not values.get("inputs"):
        raise ConfigError("no INPUT given (pass paths, --input-table, or inputs = [...] in --config)")
    if not values.get("output") and not values.get("output_table"):
        raise ConfigError("--output DIR (or --output-table NAME) is required")
    return EmbedConfig(**values)


def _run_embed(ns: argparse.Namespace) -> int:
    from ..job import PATH_FIELDS, check_embed_paths, embed_locks, qualified_config, run_embed_job

    cfg = embed_config_from_args(ns)
    paths = [p for f in PATH_FIELDS for p in ([getattr(cfg, f)] if f != "inputs" else cfg.inputs)]
    spark = session_for_paths(ns, paths)
    if spark is not None:  # scheme-less paths are on the session's default filesystem
        cfg = qualified_config(spark, cfg)
    check_embed_paths(cfg)  # inputs exist, outputs may be written (local paths: before the JVM starts)
    with embed_locks(cfg):  # a second run on the same output refuses before starting Spark
        report = run_embed_job(spark or spark_from_args(ns), cfg, locked=True)
    print(f"embeddings: {report['output']} ({report['entities_written']} entities, dim {cfg.dim}, "
          f"{report['seconds_total']:.1f}s)")
    return EXIT_OK


def _run_demo(ns: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(spark_from_args(ns), output=ns.output, dim=ns.dim, iterations=ns.iterations)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    setup_logging(ns.log_level)
    try:
        return int(ns.handler(ns) or EXIT_OK)
    except BaseException as exc:  # expected failures (spark_cleora.errors): one line and their exit code
        status = exit_status(exc)
        if status is None:
            raise  # a bug: the traceback, exit code 1
        code, message = status
        print(message if isinstance(exc, KeyboardInterrupt) else f"error: {message}", file=sys.stderr)
        return code


def embed_main() -> int:
    """``jobs/embed.py``: exactly the arguments of ``spark-cleora embed``."""
    return subcommand_main("embed")


def job_main() -> None:
    """Databricks ``python_wheel_task`` entry point (``spark_cleora_job``): ``spark-cleora`` with the task's
    parameters, failing the task on a non-zero exit code (Databricks ignores a returned value)."""
    rc = main()
    if rc:
        raise SystemExit(rc)


def subcommand_main(*command: str) -> int:
    """spark-submit entry points (``jobs/*.py``): ``spark-cleora COMMAND...`` with the script's arguments."""
    return main([*command, *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
