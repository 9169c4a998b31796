"""``spark-cleora fold-in`` and ``spark-cleora combine``: new entities and several runs, without re-embedding."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from ..config import INPUT_FORMATS, EmbedConfig
from ..errors import BadInputError, ConfigError
from ..storage.readers import read_cleora_text, read_embeddings, read_events
from ..storage.outputs import check_output_dir, guarded_dir, mark_output, write_atomically, write_json
from ..storage.paths import local_path

log = logging.getLogger(__name__)

FOLD_IN_EXAMPLES = """\
examples:
  # vectors for today's new items from yesterday's embeddings (the run's options come from its _run.json)
  spark-cleora fold-in --embeddings out/emb --events new_events.parquet --output out/emb-new
  # 2 fold-in iterations (new items seen only with other new items), with the known rows in the output
  spark-cleora fold-in --embeddings out/emb --events new/ --iterations 2 --include-known --output out/emb-all
"""

COMBINE_EXAMPLES = """\
examples:
  # two runs on two halves of the data (same --dim, --init, --seed) -> one table
  spark-cleora combine out/emb-a out/emb-b --output out/emb-ab
  # the second run counts twice as much
  spark-cleora combine out/emb-a out/emb-b --weights 1 2 --output out/emb-ab
"""

#: event options of ``embed`` that fold-in takes for the new events (the rest comes from the run)
_EVENT_OPTIONS = ("input_format", "hyperedge", "entity", "timestamp", "session_gap", "dedupe", "weight",
                  "columns", "csv_delimiter", "on_bad_rows", "rejects", "max_line_length", "engine", "block_memory_gb")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``fold-in`` and ``combine`` to the ``spark-cleora`` subcommands."""
    from ..options import add_spark_options

    S = argparse.SUPPRESS
    p = sub.add_parser(
        "fold-in", help="vectors for new entities from the known vectors of their hyperedges' members",
        description="One Cleora propagation step restricted to the entities of new events that have no vector "
                    "(same weights and Markov kind as the original run, read from its _run.json), repeated "
                    "--iterations times; known vectors stay fixed. Entities with no known entity within reach "
                    "are counted and left out. Output: the embed schema plus fold_in_iteration.",
        epilog=FOLD_IN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embeddings", required=True, metavar="DIR", help="the Parquet output of spark-cleora embed")
    p.add_argument("--events", required=True, nargs="+", metavar="PATH", help="the new events")
    p.add_argument("--output", "-o", required=True, help="output directory (written atomically)")
    p.add_argument("--iterations", type=int, default=3,
                   help="fold-in iterations: k reaches entities k hyperedges away from a known one (default 3)")
    p.add_argument("--include-known", action="store_true", help="also write the known rows (fold_in_iteration null)")
    p.add_argument("--markov", choices=["left", "symmetric"], default=S,
                   help="only for embeddings without _run.json: the original run's Markov kind")
    p.add_argument("--residual", type=float, default=S,
                   help="only for embeddings without _run.json: the original run's residual")
    g = p.add_argument_group("new events (default: as the original run read its input)")
    g.add_argument("--input-format", choices=[f for f in INPUT_FORMATS if f != "dataframe"], default=S)
    for flag in ("--hyperedge", "--entity", "--timestamp", "--weight", "--columns", "--csv-delimiter", "--rejects"):
        g.add_argument(flag, default=S)
    g.add_argument("--session-gap", type=float, default=S)
    g.add_argument("--dedupe", action="store_true", default=S)
    g.add_argument("--on-bad-rows", choices=["fail", "skip", "quarantine"], default=S)
    g.add_argument("--max-line-length", type=int, default=S)
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["auto", "one-task", "shuffle"], default=S,
                   help="iterations in one Python task (one-task) or a shuffle each (shuffle); auto (default): "
                        "one-task when the new events' graph fits --block-memory-gb")
    g.add_argument("--block-memory-gb", type=float, default=S, help="memory a Python worker may use (as embed)")
    add_spark_options(p)
    p.set_defaults(handler=run_fold_in)

    p = sub.add_parser(
        "combine", help="per-entity weighted mean of several runs' embeddings, L2-normalised",
        description="Combine embeddings of the same entities from runs with the same --dim, --init and --seed "
                    "(checked in their _run.json; exit 2 otherwise). Entities in only some runs are kept; the "
                    "output's runs column counts the runs that had each entity.",
        epilog=COMBINE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="DIR", help="embed (or fold-in) outputs")
    p.add_argument("--output", "-o", required=True, help="output directory (written atomically)")
    p.add_argument("--weights", nargs="+", type=float, metavar="W", help="one positive weight per DIR (default 1)")
    add_spark_options(p)
    p.set_defaults(handler=run_combine)


@contextlib.contextmanager
def _guarded(output: str, inputs: list[str], rejects: str | None = None) -> Iterator[None]:
    """The output rules of :mod:`spark_cleora.storage.outputs`: checked before Spark starts, locked while writing;
    a quarantine directory is checked against the inputs and the output too."""
    if rejects:  # checked first: nothing is locked when it is refused
        check_output_dir(rejects, inputs=[*inputs, output], what="--rejects")
    with guarded_dir(output, inputs=inputs):
        yield


def original_config(ns: argparse.Namespace) -> tuple[EmbedConfig, dict[str, Any] | None]:
    """The original run's config (from its ``_run.json``, or ``--markov``/``--residual`` and defaults)
    with the new events' options from the command line."""
    from ..engine.foldin import read_run_manifest, run_config

    manifest = read_run_manifest(ns.embeddings)
    given = {k: getattr(ns, k) for k in ("markov", "residual") if hasattr(ns, k)}
    if manifest is not None:
        cfg = run_config(manifest)
        for k, v in given.items():
            if getattr(cfg, k) != v:
                raise ConfigError(f"--{k} {v} contradicts the run's _run.json ({k}={getattr(cfg, k)}); "
                                  "fold-in must use the original run's graph")
    else:
        if "markov" not in given:
            raise ConfigError(f"{ns.embeddings!r} has no _run.json: pass the original run's --markov "
                              "(and --residual, if any) and the event options")
        cfg = EmbedConfig(input_format="parquet", hyperedge="h", entity="e", **given)
    events = {k: getattr(ns, k) for k in _EVENT_OPTIONS if hasattr(ns, k)}
    if "input_format" in events and events["input_format"] != cfg.input_format:
        if (events["input_format"] == "cleora-tsv") != (cfg.input_format == "cleora-tsv"):
            # event tables and cleora text have different column options: start from the new ones only
            for k in ("hyperedge", "entity", "timestamp", "session_gap", "weight", "columns"):
                events.setdefault(k, None)
    if manifest is not None and cfg.on_bad_rows == "quarantine" and "rejects" not in events:
        # never write the new events' bad rows over the original run's quarantine
        raise ConfigError(f"the original run quarantined bad rows to {cfg.rejects!r}; pass --rejects DIR for the "
                          "new events' bad rows (or --on-bad-rows skip/fail)")
    cfg = cfg.replace(inputs=tuple(ns.events), **events)
    if manifest is None and (not hasattr(ns, "hyperedge") or not hasattr(ns, "entity")) \
            and cfg.input_format != "cleora-tsv":
        raise ConfigError("without _run.json the new events need --hyperedge COL and --entity COL")
    return cfg, manifest


def run_fold_in(ns: argparse.Namespace) -> int:
    from ..options import qualify_namespace

    tables = getattr(ns, "input_format", None) == "table"
    qualify_namespace(ns, ("embeddings", "output", "rejects", *(() if tables else ("events",))))
    cfg, manifest = original_config(ns)
    with _guarded(ns.output, [ns.embeddings, *ns.events], cfg.rejects if cfg.on_bad_rows == "quarantine" else None):
        return _fold_in(ns, cfg, manifest)


def _fold_in(ns: argparse.Namespace, cfg: EmbedConfig, manifest: dict[str, Any] | None) -> int:
    from pyspark.sql import functions as F

    from ..options import spark_from_args
    from ..engine.foldin import fold_in

    spark = spark_from_args(ns)
    known = read_embeddings(spark, ns.embeddings)
    if manifest is None:  # the dimension from the table itself (one row)
        first = known.select(F.size("embedding").alias("d")).first()
        if first is None:
            raise BadInputError(f"embeddings {ns.embeddings!r} are empty")
        cfg = cfg.replace(dim=int(first["d"]))
    if "degree" not in known.columns and cfg.markov == "symmetric":
        raise ConfigError(f"{ns.embeddings!r} has no degree column, which the symmetric Markov kind needs")
    if "degree" not in known.columns:
        known = known.withColumn("degree", F.lit(1.0))  # left Markov: known degrees are not used
    source = read_cleora_text(spark, cfg) if cfg.input_format == "cleora-tsv" else read_events(spark, cfg)
    result = fold_in(spark, known, source, cfg, iterations=ns.iterations, include_known=ns.include_known)
    report = result.report

    def write(target: str) -> None:
        result.embeddings.write.parquet(target)
        lp = local_path(target)
        if lp is not None:
            write_json(os.path.join(lp, "_run.json"), {
                "kind": "fold-in", "config": cfg.replace(output=ns.output).to_dict(), "embeddings": ns.embeddings,
                "fold_in": report, "original_run": (manifest or {}).get("config")})
            with open(os.path.join(lp, "_SUCCESS"), "w", encoding="utf-8"):
                pass
        mark_output(target, "fold-in")

    write_atomically(ns.output, write)
    sample = f" (e.g. {', '.join(report['unreached_sample'])})" if report["unreached"] else ""
    print(f"fold-in: {ns.output} ({report['folded_in']} new entities with a vector, per iteration "
          f"{report['folded_in_per_iteration']}; {report['unreached']} without a known neighbour left out{sample}; "
          f"{report['seconds']:.1f}s)")
    return 0


def run_combine(ns: argparse.Namespace) -> int:
    from ..engine.combine import check_compatible, check_weights
    from ..engine.foldin import read_run_manifest

    from ..options import qualify_namespace

    qualify_namespace(ns, ("inputs", "output"))
    weights = check_weights(ns.weights, len(ns.inputs))
    configs = []
    for d in ns.inputs:
        m = read_run_manifest(d)
        if m is None or "config" not in m:
            raise ConfigError(f"{d!r} has no _run.json: its dim, init and seed cannot be checked; combine only "
                              "takes spark-cleora embed (or fold-in) output directories")
        configs.append(m["config"])
    check_compatible(configs, ns.inputs)
    with _guarded(ns.output, list(ns.inputs)):
        return _combine(ns, weights, configs)


def _combine(ns: argparse.Namespace, weights: list[float], configs: list[dict[str, Any]]) -> int:
    from pyspark.sql import functions as F

    from ..options import spark_from_args
    from ..engine.combine import combine, presence_counts

    spark = spark_from_args(ns)
    frames = [read_embeddings(spark, d) for d in ns.inputs]
    dim = int(configs[0]["dim"]) * max(1, len(configs[0].get("multiscale") or []))
    out = combine(frames, dim=dim, weights=weights)
    report: dict[str, Any] = {"kind": "combine", "inputs": list(ns.inputs), "weights": weights,
                              "config": {**configs[0], "output": ns.output}}

    def write(target: str) -> None:
        out.write.parquet(target)
        written = spark.read.parquet(target)
        report["entities"] = written.count()
        report["entities_by_runs"] = presence_counts(written)
        report["entities_per_input"] = [f.select(F.countDistinct("entity")).first()[0] for f in frames]
        lp = local_path(target)
        if lp is not None:
            write_json(os.path.join(lp, "_run.json"), report)
            with open(os.path.join(lp, "_SUCCESS"), "w", encoding="utf-8"):
                pass
        mark_output(target, "combine")

    write_atomically(ns.output, write)
    partial = report["entities"] - report["entities_by_runs"].get(str(len(ns.inputs)), 0)
    print(f"combine: {ns.output} ({report['entities']} entities, {partial} of them in only some of the "
          f"{len(ns.inputs)} runs; by runs {report['entities_by_runs']})")
    return 0
