"""Quality evaluations: link prediction (the Cleora paper's protocol) and node classification."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from spark_cleora.cli import main
from spark_cleora.evaluate.graphs import EdgeSource, embed_edges, read_edges
from spark_cleora.evaluate.linkpred import rank_test_edges, split_edges

GROUPS, SIZE = 4, 40


def planted_partition(seed=0):
    """Edges of a 4-community random graph (dense inside, sparse across) and each node's community."""
    rng = np.random.default_rng(seed)
    n = GROUPS * SIZE
    edges = [(f"n{i}", f"n{j}") for i in range(n) for j in range(i + 1, n)
             if rng.random() < (0.25 if i // SIZE == j // SIZE else 0.01)]
    return edges, {f"n{i}": i // SIZE for i in range(n)}


@pytest.fixture(scope="module")
def edge_file(tmp_path_factory):
    edges, _ = planted_partition()
    path = tmp_path_factory.mktemp("lp") / "edges.csv"
    # a self-loop and a reversed duplicate: dropped and counted
    path.write_text("a,b\n" + "".join(f"{s},{d}\n" for s, d in edges) + "n0,n0\n" + f"{edges[0][1]},{edges[0][0]}\n")
    return str(path), edges


def reference_ranks(emb, train, test, k):
    """Plain numpy version of the protocol for the given embeddings."""
    deg, nb = defaultdict(int), defaultdict(set)
    for s, d in train:
        deg[s] += 1
        deg[d] += 1
        nb[s].add(d)
        nb[d].add(s)
    cands = sorted(deg, key=lambda n: (-deg[n], n))[:k]
    unit = {n: v / np.linalg.norm(v) for n, v in emb.items()}
    ranks = []
    for a, b in test:
        if a not in unit or b not in unit:
            continue
        sb = unit[a] @ unit[b]
        ranks.append(1 + sum(1 for c in cands if c not in nb[a] | {a, b} and unit[a] @ unit[c] > sb))
    return np.array(ranks)


@pytest.fixture(scope="module")
def split_and_embedding(spark, edge_file):
    """The seed-3 split of the test graph and the embedding of its training edges (shared by two tests)."""
    df, counts = read_edges(spark, EdgeSource(paths=(edge_file[0],)))
    train, test = split_edges(df, seed=3)
    emb, _ = embed_edges(spark, train, expansion="clique", options={"dim": 16, "iterations": 2})
    return df, counts, train, test, emb.localCheckpoint(eager=True)


def test_linkpred_matches_a_numpy_reference(spark, edge_file, split_and_embedding):
    _, edges = edge_file
    df, counts, train, test, emb = split_and_embedding
    assert counts == {"rows": len(edges) + 2, "self_loops_dropped": 1, "duplicates_dropped": 1, "edges": len(edges)}
    train_l = [tuple(r) for r in train.collect()]
    test_l = [tuple(r) for r in test.collect()]
    assert sorted(train_l + test_l) == sorted(edges)
    assert 0.14 < len(test_l) / len(edges) < 0.26
    assert sorted(tuple(r) for r in split_edges(df, seed=3)[1].collect()) == sorted(test_l)  # reproducible
    emb_d = {r["entity"]: np.asarray(r["embedding"], dtype=np.float64) for r in emb.collect()}
    m = rank_test_edges(emb, train, test, seed=3, sample=0, candidates=60)
    want = reference_ranks(emb_d, train_l, test_l, 60)
    assert m["test_edges_ranked"] == len(want) == m["test_edges_with_known_nodes"]
    assert m["candidates"] == 60
    assert m["mrr"] == pytest.approx(np.mean(1.0 / want), abs=1e-9)
    assert m["hitrate@10"] == pytest.approx(np.mean(want <= 10), abs=1e-9)
    rng = np.random.default_rng(0)
    chance = reference_ranks({n: rng.normal(size=16) for n in emb_d}, train_l, test_l, 60)
    assert m["mrr"] > 1.5 * np.mean(1.0 / chance)  # communities are easy: well above random vectors


def test_linkpred_cli_writes_a_json_report(spark, edge_file, tmp_path, capsys):
    path, _ = edge_file
    report = tmp_path / "r" / "lp.json"
    rc = main(["evaluate", "linkpred", "--edges", path, "--expansion", "star", "--dim", "16", "--iterations", "2",
               "--sample", "40", "--candidates", "60", "--split-seed", "3", "--report", str(report)])
    assert rc == 0
    r = json.loads(report.read_text())
    assert r["protocol"]["expansion"] == "star" and r["metrics"]["test_edges_ranked"] == 40
    assert r["edges"]["self_loops_dropped"] == 1 and r["embedding"]["dim"] == 16
    assert 0 < r["metrics"]["mrr"] <= 1 and 0 <= r["metrics"]["hitrate@10"] <= 1
    assert f"MRR {r['metrics']['mrr']:.4f}" in capsys.readouterr().out
    assert not list(report.parent.glob("*.tmp-*"))


def test_macro_f1_of_a_known_confusion_matrix():
    from spark_cleora.evaluate.classify import macro_f1

    c = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # class 2: never true nor predicted -> F1 0
    f1 = [2 * 5 / (10 + 2 + 1), 2 * 3 / (6 + 1 + 2), 0.0]
    assert macro_f1(c) == pytest.approx(np.mean(f1))


def test_classify_cli_on_saved_embeddings(spark, split_and_embedding, tmp_path, capsys):
    from spark_cleora.evaluate.classify import read_labels
    from spark_cleora.evaluate.splits import split_nodes

    emb = split_and_embedding[-1]  # training-graph embedding: every node of this graph is in it
    emb_dir = str(tmp_path / "emb")
    emb.write.parquet(emb_dir)
    _, community = planted_partition()
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{n} c{c}\n" for n, c in community.items()))
    report = tmp_path / "cl.json"
    rc = main(["evaluate", "classify", "--labels", str(labels), "--labels-format", "space", "--embeddings", emb_dir,
               "--split-seed", "1", "--report", str(report)])
    assert rc == 0
    r = json.loads(report.read_text())["metrics"]
    lab, _ = read_labels(spark, str(labels), node=None, label=None, fmt="space")
    n_test = split_nodes(lab, seed=1).filter("is_test").count()
    assert (r["classes"], r["test_nodes"], r["train_nodes"] + r["test_nodes"]) == (GROUPS, n_test, GROUPS * SIZE)
    assert r["accuracy"] > 0.9 and r["macro_f1"] > 0.9  # communities are what Cleora embeddings capture
    assert f"accuracy {r['accuracy']:.4f}" in capsys.readouterr().out
