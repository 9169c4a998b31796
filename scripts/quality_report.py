"""Quality report: spark_cleora and pycleora 3.2.1 side by side, same split, same protocol.

For each dataset in ``--data DIR`` (default: ``$SPARK_CLEORA_SHARED_DATA``):

* **link prediction** (``spark_cleora.evaluate.linkpred``, the Cleora paper's protocol): one seeded
  80/20 split; both libraries embed the same training edges (clique expansion); both embeddings are
  ranked by the same Spark code against the same 10,000 candidates on the same test edges.
* **node classification** (``spark_cleora.evaluate.classify``) where the dataset has labels: both
  libraries embed the whole graph; the same Spark ML logistic regression on the same node split.
  Multi-label datasets (BlogCatalog) use ``spark_cleora.evaluate.multilabel``: one-vs-rest logistic
  regression, each test node predicted its top-k labels (k = its true label count), Micro/Macro-F1.

pycleora runs in-process (``pycleora.embed`` / ``embed_multiscale``, FxHash init, its default
``hyperedge_trim_n=16``; spark_cleora never trims); its vectors are handed to the same ranking code as a
DataFrame. The training edges are collected to the driver for pycleora only: this is a
single-machine benchmark script, not a job.

Writes a Markdown table (``--markdown``) and all numbers as JSON (``--json``), and prints the table::

    python scripts/quality_report.py --datasets facebook cora email --json out/quality.json \\
        --markdown out/quality.md
    python scripts/quality_report.py --datasets blogcatalog --configs 0 1 5 6   # a separate run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_cleora.evaluate.classify import classify, read_labels  # noqa: E402
from spark_cleora.evaluate.graphs import EdgeSource, embed_edges, read_edges  # noqa: E402
from spark_cleora.evaluate.linkpred import rank_test_edges, split_edges  # noqa: E402
from spark_cleora.evaluate.multilabel import classify_multilabel, read_multilabels  # noqa: E402

DATASETS: dict[str, dict[str, Any]] = {
    "facebook": {"name": "Facebook page-page (musae)", "edges": "facebook-page-page-musae/musae_facebook_edges.csv",
                 "format": "csv", "labels": "facebook-page-page-musae/musae_facebook_target.csv",
                 "labels_format": "csv", "label_col": "page_type", "classify": True},
    "github": {"name": "GitHub developers (musae)", "edges": "github-musae/musae_git_edges.csv", "format": "csv",
               "labels": "github-musae/musae_git_target.csv", "labels_format": "csv", "label_col": "ml_target"},
    "lastfm": {"name": "LastFM Asia (musae)", "edges": "lastfm-asia-musae/lastfm_asia_edges.csv", "format": "csv",
               "labels": "lastfm-asia-musae/lastfm_asia_target.csv", "labels_format": "csv", "label_col": "target"},
    "cora": {"name": "Cora (OpenNE)", "edges": "cora/cora_edgelist.txt", "format": "space",
             "labels": "cora/cora_labels.txt", "labels_format": "space", "classify": True},
    "email": {"name": "email-Eu-core (SNAP)", "edges": "email-eu-core/email-Eu-core.txt", "format": "space",
              "labels": "email-eu-core/email-Eu-core-department-labels.txt", "labels_format": "space"},
    "blogcatalog": {"name": "BlogCatalog (OpenNE)", "edges": "blogcatalog/bc_adjlist.txt", "format": "adjlist",
                    "labels": "blogcatalog/bc_labels.txt", "labels_format": "space-multi", "classify": True},
}

# Each configuration: spark_cleora options and/or the pycleora 3.2.1 call it is compared with (d = 256 for
# both; "fx" is pycleora 3.x's init). "classify": also run node classification with it.
CONFIGS: list[dict[str, Any]] = [
    {"label": "plain, 4 it. (pycleora 3.x baseline)", "ours": {"iterations": 4, "init": "fx"},
     "pycleora": {"fn": "embed", "num_iterations": 4, "whiten": False}, "classify": True},
    {"label": "--whiten, 4 it. (pycleora 3.2.1 embed)", "ours": {"iterations": 4, "init": "fx", "whiten": "every"},
     "pycleora": {"fn": "embed", "num_iterations": 4, "whiten": True}},
    # pycleora's own options, searched for its best on this protocol
    {"label": "symmetric, 4 it.", "ours": None,
     "pycleora": {"fn": "embed", "num_iterations": 4, "whiten": False, "propagation": "symmetric"}},
    {"label": "symmetric, whiten, 16 it.", "ours": None,
     "pycleora": {"fn": "embed", "num_iterations": 16, "whiten": True, "propagation": "symmetric"}},
    {"label": "symmetric, whiten, 40 it.", "ours": None,
     "pycleora": {"fn": "embed", "num_iterations": 40, "whiten": True, "propagation": "symmetric"}},
    {"label": "symmetric, whiten, multiscale 2,8,40", "ours": None,
     "pycleora": {"fn": "embed_multiscale", "scales": [2, 8, 40], "whiten": True, "propagation": "symmetric"}},
    # spark_cleora: SipHash init (uncorrelated dimensions, so no whitening needed) + symmetric + multiscale
    {"label": "**A**: --init siphash --markov symmetric --multiscale 2,4,8",
     "ours": {"iterations": 8, "init": "siphash", "markov": "symmetric", "multiscale": (2, 4, 8)},
     "pycleora": None, "classify": True},
    {"label": "**B**: A with --whiten --multiscale 2,8,16",
     "ours": {"iterations": 16, "init": "siphash", "whiten": "every", "markov": "symmetric", "multiscale": (2, 8, 16)},
     "pycleora": None},
]


def data_root(arg: str | None) -> Path:
    root = arg or os.environ.get("SPARK_CLEORA_SHARED_DATA")
    if not root:
        raise SystemExit("give --data DIR (or set SPARK_CLEORA_SHARED_DATA): the directory holding the datasets")
    return Path(root)


def pycleora_embedding(spark, lines: list[str], call: dict[str, Any], dim: int):
    """(entity, embedding) DataFrame of pycleora's embedding of Cleora text ``lines`` (one clique each)."""
    import pycleora

    g = pycleora.SparseMatrix.from_iterator(iter(lines), "complex::reflexive::node")
    kw = {k: v for k, v in call.items() if k != "fn"}
    if call["fn"] == "embed_multiscale":
        e = pycleora.embed_multiscale(g, feature_dim=dim, **kw)
    else:
        e = pycleora.embed(g, feature_dim=dim, **kw)
    rows = list(zip(g.entity_ids, np.asarray(e, dtype=np.float32).tolist()))
    return spark.createDataFrame(rows, "entity string, embedding array<float>")


def clique_lines(edge_rows) -> list[str]:
    groups: dict[str, list[str]] = {}
    for s, d in edge_rows:
        groups.setdefault(s, []).append(d)
    return [" ".join([s, *ds]) for s, ds in groups.items()]


def run_dataset(spark, key: str, spec: dict[str, Any], root: Path, *, dim: int, sample: int,
                configs, with_classify: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"dataset": spec["name"], "key": key, "linkpred": [], "classify": []}
    edges, counts = read_edges(spark, EdgeSource(paths=(str(root / spec["edges"]),), format=spec["format"]))
    edges = edges.localCheckpoint(eager=True)
    out["edges"] = counts
    train, test = split_edges(edges, seed=0)
    train, test = train.localCheckpoint(eager=True), test.localCheckpoint(eager=True)
    train_lines = clique_lines(tuple(r) for r in train.toLocalIterator())
    labels = None
    with_classify = with_classify and spec.get("classify", False)
    all_lines = clique_lines(tuple(r) for r in edges.toLocalIterator()) if with_classify else []
    multi = spec.get("labels_format") == "space-multi"
    score = classify_multilabel if multi else classify
    if with_classify and spec.get("labels"):
        if multi:
            labels, out["labels"] = read_multilabels(spark, str(root / spec["labels"]))
        else:
            labels, _ = read_labels(spark, str(root / spec["labels"]), node=None, label=spec.get("label_col"),
                                    fmt=spec["labels_format"])
        labels = labels.localCheckpoint(eager=True)
    for c in configs:
        label, ours, theirs = c["label"], c["ours"], c["pycleora"]
        row: dict[str, Any] = {"config": label, "options": ours, "pycleora_call": theirs}
        if ours is not None:
            t = time.perf_counter()
            emb, _ = embed_edges(spark, train, expansion="clique", options={"dim": dim, **ours})
            row["spark_cleora"] = rank_test_edges(emb.localCheckpoint(eager=True), train, test, seed=0,
                                                  sample=sample)
            row["spark_cleora"]["seconds"] = round(time.perf_counter() - t, 1)
        if theirs is not None:
            t = time.perf_counter()
            pe = pycleora_embedding(spark, train_lines, theirs, dim).localCheckpoint(eager=True)
            row["pycleora"] = rank_test_edges(pe, train, test, seed=0, sample=sample)
            row["pycleora"]["seconds"] = round(time.perf_counter() - t, 1)
        out["linkpred"].append(row)
        print(json.dumps({"dataset": key, **row}, default=str), flush=True)
        if labels is not None and c.get("classify"):
            crow: dict[str, Any] = {"config": label, "multi_label": multi}
            if ours is not None:
                emb_all, _ = embed_edges(spark, edges, expansion="clique", options={"dim": dim, **ours})
                crow["spark_cleora"] = score(emb_all.localCheckpoint(eager=True), labels, seed=0)
            if theirs is not None:
                crow["pycleora"] = score(pycleora_embedding(spark, all_lines, theirs, dim).localCheckpoint(eager=True),
                                         labels, seed=0)
            out["classify"].append(crow)
            print(json.dumps({"dataset": key, **crow}, default=str), flush=True)
    return out


def _f(m: dict[str, Any] | None, key: str) -> str:
    return "—" if not m else f"{m[key]:.4f}"


def markdown(results: list[dict[str, Any]], *, sample: int) -> str:
    lines = [
        f"Link prediction (Cleora paper protocol: seeded 80/20 edge split, train-only clique expansion, "
        f"{'all' if sample <= 0 else sample} test edges ranked by cosine against the 10,000 most frequent "
        "training nodes, a's training neighbours masked), d = 256:",
        "",
        "| dataset | options | spark_cleora MRR | HR@10 | pycleora 3.2.1 MRR | HR@10 | test edges |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["linkpred"]:
            ranked = (row.get("spark_cleora") or row.get("pycleora"))["test_edges_ranked"]
            lines.append(f"| {r['dataset']} | {row['config']} | {_f(row.get('spark_cleora'), 'mrr')} | "
                         f"{_f(row.get('spark_cleora'), 'hitrate@10')} | {_f(row.get('pycleora'), 'mrr')} | "
                         f"{_f(row.get('pycleora'), 'hitrate@10')} | {ranked} |")
    single = [(r["dataset"], row) for r in results for row in r["classify"] if not row.get("multi_label")]
    multi = [(r["dataset"], row) for r in results for row in r["classify"] if row.get("multi_label")]
    if single:
        lines += ["", "Node classification (whole-graph embedding, seeded 80/20 node split, Spark ML "
                      "multinomial logistic regression):", "",
                  "| dataset | options | spark_cleora accuracy | macro-F1 | pycleora 3.2.1 accuracy | macro-F1 |",
                  "|---|---|---|---|---|---|"]
        for name, row in single:
            lines.append(f"| {name} | {row['config']} | {_f(row.get('spark_cleora'), 'accuracy')} | "
                         f"{_f(row.get('spark_cleora'), 'macro_f1')} | {_f(row.get('pycleora'), 'accuracy')} | "
                         f"{_f(row.get('pycleora'), 'macro_f1')} |")
    if multi:
        lines += ["", "Multi-label node classification (whole-graph embedding, seeded 80/20 node split, one-vs-rest "
                      "L2 logistic regression, each test node predicted its top-k labels, k = its true label count):",
                  "", "| dataset | options | spark_cleora Micro-F1 | Macro-F1 | pycleora 3.2.1 Micro-F1 | Macro-F1 |",
                  "|---|---|---|---|---|---|"]
        for name, row in multi:
            lines.append(f"| {name} | {row['config']} | {_f(row.get('spark_cleora'), 'micro_f1')} | "
                         f"{_f(row.get('spark_cleora'), 'macro_f1')} | {_f(row.get('pycleora'), 'micro_f1')} | "
                         f"{_f(row.get('pycleora'), 'macro_f1')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="directory holding the datasets (default: $SPARK_CLEORA_SHARED_DATA)")
    ap.add_argument("--datasets", nargs="+", default=["facebook", "email", "lastfm", "cora"], choices=sorted(DATASETS))
    ap.add_argument("--configs", nargs="+", type=int, help="indexes into CONFIGS (default: all)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--sample", type=int, default=0, help="test edges to rank (0 = all; the paper: 1000)")
    ap.add_argument("--no-classify", action="store_true")
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--markdown", help="write the table here")
    ap.add_argument("--master", default="local[2]")
    ns = ap.parse_args(argv)
    root = data_root(ns.data)
    if not root.exists():
        print(f"no data directory at {root}; nothing to do", file=sys.stderr)
        return 0
    from spark_cleora.runtime.session import get_spark

    spark = get_spark(master=ns.master, conf={"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "6g"})
    spark.sparkContext.setLogLevel("ERROR")
    configs = [CONFIGS[i] for i in ns.configs] if ns.configs else CONFIGS
    results = [run_dataset(spark, k, DATASETS[k], root, dim=ns.dim, sample=ns.sample, configs=configs,
                           with_classify=not ns.no_classify) for k in ns.datasets]
    table = markdown(results, sample=ns.sample)
    print(table)
    for path, text in ((ns.json, json.dumps(results, indent=2, default=str)), (ns.markdown, table)):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = f"{path}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
