"""Command-line options every command group shares (``spark-cleora`` and its ``evaluate`` evaluations): the
Spark options and the session they ask for, the embedding flags, logging.

Below both ``cli/`` and ``evaluate/``, which import it (a command group never imports another's module).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .config import ConfigError
from .runtime.session import get_spark


def add_spark_options(p: argparse.ArgumentParser) -> None:
    """The common Spark options every subcommand takes (``--master``, ``--remote``, ``--conf``, ...)."""
    g = p.add_argument_group("Spark")
    g.add_argument("--master", default=None, help="Spark master URL (default: the active session, else embedded local[*])")
    g.add_argument("--remote", default=None, help="Spark Connect URL, e.g. sc://host:15002 (also read from SPARK_REMOTE)")
    g.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="Spark configuration, repeatable (e.g. --conf spark.executor.memory=8g)")
    g.add_argument("--log-level", default=os.environ.get("SPARK_CLEORA_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="spark_cleora log level (default INFO)")


def add_embedding_options(g: argparse._ArgumentGroup) -> None:
    """The embedding flags (``--dim`` ... ``--init-vectors``), shared by ``embed`` and the evaluations."""
    g.add_argument("--dim", type=int, help="embedding dimension (default 256)")
    g.add_argument("--iterations", type=int, help="propagation steps (default 4)")
    g.add_argument("--markov", choices=["left", "symmetric"], help="left = W/D (default), symmetric = W/sqrt(DD)")
    g.add_argument("--init", choices=["siphash", "fx"],
                   help="start-vector hash: siphash (pycleora 2.0.0, default) or fx (pycleora 3.x)")
    g.add_argument("--seed", type=int, help="init seed (default 0)")
    g.add_argument("--whiten", nargs="?", const="every", choices=["every", "final", "none"],
                   help="PCA whitening as pycleora 3.x: after every iteration (--whiten) or once (--whiten final)")
    g.add_argument("--residual", type=float, metavar="ALPHA",
                   help="pycleora residual mixing: X <- rownorm((1-ALPHA) M X + ALPHA X), 0 <= ALPHA < 1 (default 0)")
    g.add_argument("--multiscale", metavar="K,K,...",
                   help="concatenate the embeddings of these iterations, e.g. 1,2,4 (the last = --iterations)")
    g.add_argument("--init-vectors", metavar="PATH",
                   help="Parquet of entity -> vector (length --dim): start vectors replacing the hash init there")


def parse_conf(pairs: Sequence[str]) -> dict[str, str]:
    conf = {}
    for kv in pairs:
        if "=" not in kv:
            raise ConfigError(f"--conf expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        conf[k.strip()] = v.strip()
    return conf


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)


def spark_from_args(ns: argparse.Namespace):
    """The SparkSession asked for by the common Spark options (see :func:`add_spark_options`)."""
    return get_spark(master=ns.master, remote=ns.remote, conf=parse_conf(ns.conf))


def session_for_paths(ns: argparse.Namespace, paths: Sequence[str | None]):
    """The session when checking ``paths`` needs one (the default filesystem may not be local, or a path
    is a non-local URI, :func:`spark_cleora.storage.filesystem.needs_session`); None when they are checked
    before Spark starts."""
    from .storage.filesystem import needs_session

    conf = parse_conf(ns.conf)
    return spark_from_args(ns) if needs_session(conf, paths, remote=ns.remote) else None


def qualify_namespace(ns: argparse.Namespace, fields: Sequence[str]):
    """The path options ``fields`` of a subcommand as Spark resolves them (in place), when that needs the
    session (:func:`session_for_paths`); returns the session, or None (paths checked before Spark starts)."""
    from .storage.filesystem import qualify

    values = {f: getattr(ns, f, None) for f in fields}
    spark = session_for_paths(ns, [p for v in values.values() if v for p in ([v] if isinstance(v, str) else v)])
    if spark is not None:
        for f, v in values.items():
            if v:
                setattr(ns, f, qualify(spark, v) if isinstance(v, str) else [qualify(spark, p) for p in v])
    return spark
