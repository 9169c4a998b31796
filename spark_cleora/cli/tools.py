"""``spark-cleora similar`` and ``spark-cleora inspect``: everyday looks at an embeddings output."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ..errors import EXIT_INPUT, EXIT_OK, ConfigError
from ..storage.readers import read_embeddings
from ..storage.outputs import FILE_MARK, check_output_file, write_report
from ..runtime.session import job_description

log = logging.getLogger(__name__)

SIMILAR_EXAMPLES = """\
examples:
  # the 10 items closest to one item (cosine, computed on the cluster)
  spark-cleora similar --embeddings out/emb --entity coffee:espresso-beans --k 10
  # several queries at once, as JSON lines
  spark-cleora similar --embeddings out/emb --entity pasta:spaghetti --entity baby:diapers --json
  # from a catalog table; only neighbours of one input column (two-column specs)
  spark-cleora similar --embeddings lake.item_embeddings --entity u42 --column product
"""

INSPECT_EXAMPLES = """\
examples:
  # counts, dimensions, norms and degrees
  spark-cleora inspect out/emb
  # plus a PCA plot of 2000 sampled rows and a JSON report
  spark-cleora inspect out/emb --plot emb.png --sample 2000 --json-out inspect.json
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``similar`` and ``inspect`` to the ``spark-cleora`` subcommands."""
    from ..options import add_spark_options

    p = sub.add_parser(
        "similar", help="nearest neighbours of entities (cosine, distributed)",
        description="The k most similar entities (cosine) of each --entity, computed on the cluster.",
        epilog=SIMILAR_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--embeddings", required=True, metavar="DIR|TABLE",
                   help="the Parquet output of spark-cleora embed, or a catalog table")
    p.add_argument("--entity", action="append", required=True, help="query entity (repeatable)")
    p.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--column", help="only neighbours from this input column")
    p.add_argument("--json", action="store_true", help="print one JSON object per neighbour")
    add_spark_options(p)
    p.set_defaults(handler=run_similar)

    p = sub.add_parser(
        "inspect", help="counts, dimensions, norms and a 2-D plot of an embeddings output",
        description="Summarise an embeddings output (Spark aggregates) and optionally plot a PCA "
                    "projection of a sample as PNG. Exit code 3 if the table is unhealthy "
                    "(duplicate entities, mixed lengths, null/NaN/zero vectors).",
        epilog=INSPECT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("embeddings", metavar="DIR|TABLE", help="the Parquet output of spark-cleora embed, or a table")
    p.add_argument("--plot", metavar="PNG", help="write a 2-D PCA projection of a sample to this PNG file "
                   "(needs matplotlib: pip install 'spark-cleora[plot]')")
    p.add_argument("--sample", type=int, default=2000, help="rows in the plot sample (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--json-out", metavar="FILE", help="also write the summary as JSON")
    add_spark_options(p)
    p.set_defaults(handler=run_inspect)


def run_similar(ns: argparse.Namespace) -> int:
    from ..options import spark_from_args
    from ..similar import similar

    if ns.k < 1:
        raise ConfigError(f"--k must be >= 1; got {ns.k}")
    spark = spark_from_args(ns)
    emb = read_embeddings(spark, ns.embeddings)
    with job_description(spark, "spark_cleora: similar"):
        rows = similar(emb, ns.entity, k=ns.k, column=ns.column).orderBy("query", "rank").collect()
    by_query: dict[str, list] = {q: [] for q in ns.entity}
    for r in rows:
        by_query[r["query"]].append(r)
    for q, hits in by_query.items():
        if ns.json:
            for r in hits:
                print(json.dumps(r.asDict(), ensure_ascii=False))
            continue
        print(f"nearest to {q} (cosine, k={ns.k}):")
        for r in hits:
            print(f"  {r['rank']:3d}  {r['cosine']:7.4f}  {r['entity']}")
        if not hits:
            print("  (no other entity with a non-zero vector)")
    return EXIT_OK


def run_inspect(ns: argparse.Namespace) -> int:
    from ..options import spark_from_args
    from ..explore import legend_colours, plot_projection, problems, require_matplotlib, sample_projection, summarize

    if ns.sample < 2:
        raise ConfigError(f"--sample must be >= 2; got {ns.sample}")
    if ns.plot:
        require_matplotlib()  # before Spark starts: the install command, exit code 2
        if ns.json_out and os.path.realpath(ns.plot) == os.path.realpath(ns.json_out):
            raise ConfigError(f"--plot and --json-out name the same file {ns.plot!r}; give each its own")
    for flag, path in (("--plot", ns.plot), ("--json-out", ns.json_out)):
        if path:  # replaced only when a previous run wrote it; never the embeddings
            check_output_file(path, inputs=[ns.embeddings], what=flag)
    spark = spark_from_args(ns)
    emb = read_embeddings(spark, ns.embeddings)
    summary = summarize(emb)
    summary["source"] = ns.embeddings
    found = problems(summary)
    summary["problems"] = found
    _print_summary(summary)
    if ns.plot:
        if summary["dim"]["min"] != summary["dim"]["max"] or summary["rows"] < 2:
            print("plot: skipped (needs >= 2 rows of one vector length)", file=sys.stderr)
        else:
            proj = sample_projection(emb, sample=ns.sample, seed=ns.seed, rows=summary["rows"])
            plot_projection(proj, ns.plot, source=ns.embeddings)
            legend = legend_colours(proj)
            ev = proj["explained_variance"]
            summary["plot"] = {"path": os.path.abspath(ns.plot), "points": len(proj["entity"]),
                               "explained_variance": ev, "legend": legend}
            print(f"plot: {ns.plot} ({len(proj['entity'])} sampled rows, PCA axes explain "
                  f"{ev[0]:.1%} / {ev[1]:.1%} of their variance)")
            print("  colours: " + ", ".join(f"{g} {c}" for g, c in legend.items()))
    if ns.json_out:
        write_report(ns.json_out, {**summary, FILE_MARK: "inspect"})
    if found:
        print("problems: " + "; ".join(found), file=sys.stderr)
        return EXIT_INPUT
    return EXIT_OK


def _print_summary(s: dict) -> None:
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.6g}"

    print(f"embeddings: {s['source']}")
    print(f"  rows {s['rows']}, distinct entities {s['distinct_entities']}")
    if s["per_column"]:
        print("  per column: " + ", ".join(f"{c} {n}" for c, n in s["per_column"].items()))
    dim = s["dim"]
    print(f"  dim {dim['min']}" if dim["min"] == dim["max"] else f"  dim {dim['min']}..{dim['max']} (MIXED)")
    n = s["norm"]
    print(f"  L2 norm min {fmt(n['min'])} mean {fmt(n['mean'])} max {fmt(n['max'])} "
          f"stddev {fmt(n['stddev'])}; not unit length: {s['not_unit_length']}")
    print(f"  null vectors {s['null_vectors']}, with NaN/inf {s['non_finite_vectors']}, zero {s['zero_vectors']}")
    for c in ("degree", "occurrences"):
        if c in s:
            print(f"  {c} min {fmt(s[c]['min'])} mean {fmt(s[c]['mean'])} max {fmt(s[c]['max'])}")
