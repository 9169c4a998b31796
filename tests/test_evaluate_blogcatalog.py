"""BlogCatalog tooling: adjacency-list edges, multi-label labels, one-vs-rest classification, Micro/Macro-F1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from spark_cleora.cli import main
from spark_cleora.evaluate.graphs import EdgeSource, read_edges
from spark_cleora.evaluate.multilabel import multilabel_f1, ovr_loss_grad, read_multilabels, top_k_predictions

SHARED = Path(os.environ.get("SPARK_CLEORA_SHARED_DATA") or "/nonexistent")  # set by scripts/test.sh


def test_adjlist_reader_exact_edges_and_counted_rejects(spark, tmp_path):
    path = tmp_path / "g.adj"
    # blank line and a lone node: malformed (no edge); b's line repeats a; c's line has a self-loop;
    # tabs, CR and padding are whitespace
    path.write_text("a b c\r\n\n  b\ta a  \nc a c\nd\ne c\n")
    edges, counts = read_edges(spark, EdgeSource(paths=(str(path),), format="adjlist"))
    # first orientation in file order is kept: (a, b) from a's line, not (b, a)
    assert sorted(tuple(r) for r in edges.collect()) == [("a", "b"), ("a", "c"), ("e", "c")]
    assert counts == {"lines": 6, "malformed_lines": 2, "rows": 7, "self_loops_dropped": 1,
                      "duplicates_dropped": 3, "edges": 3}


def test_multilabel_f1_of_a_hand_computed_case():
    # labels A B C D; k = the node's true label count
    true = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 1, 0]], dtype=bool)
    scores = np.array([[.9, .1, .5, 0], [.2, .3, .1, 0], [.1, .8, .1, 0], [.1, .7, .7, 0]])
    pred = top_k_predictions(scores, true.sum(axis=1))
    assert pred.astype(int).tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0]]
    tp, fp, fn = (pred & true).sum(0), (pred & ~true).sum(0), (~pred & true).sum(0)
    micro, macro = multilabel_f1(tp, fp, fn)
    # A: tp 1 fn 1 -> 2/3; B: tp 1 fp 2 fn 1 -> 2/5; C: tp 1 fp 1 fn 1 -> 1/2; D: never true nor predicted -> 0
    assert micro == pytest.approx(6 / 12, abs=1e-15)
    assert macro == pytest.approx((2 / 3 + 2 / 5 + 1 / 2 + 0) / 4, abs=1e-15)
    assert top_k_predictions(np.array([[.5, .5, .1]]), np.array([1])).tolist() == [[True, False, False]]  # tie


def test_one_vs_rest_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 4)), (rng.random((30, 3)) < 0.4).astype(float)
    w, c = rng.normal(size=(4, 3)), rng.normal(size=3)
    out = ovr_loss_grad(x, y, w, c)
    p = 1 / (1 + np.exp(-(x @ w + c)))
    assert out[0] == pytest.approx(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(), rel=1e-12)
    theta, eps = np.concatenate([w.ravel(), c]), 1e-6
    for j in range(theta.size):
        hi, lo = theta.copy(), theta.copy()
        hi[j] += eps
        lo[j] -= eps
        f = [ovr_loss_grad(x, y, t[:12].reshape(4, 3), t[12:])[0] for t in (hi, lo)]
        assert out[1 + j] == pytest.approx((f[0] - f[1]) / (2 * eps), rel=1e-5, abs=1e-7)


def test_classify_cli_multilabel_on_a_generated_adjlist_graph(spark, tmp_path, capsys):
    from spark_cleora.evaluate.splits import split_nodes

    rng = np.random.default_rng(1)
    groups, size = 4, 30
    n = groups * size
    nbrs: dict[int, list[int]] = {i: [] for i in range(n)}
    for i in range(n):
        for j in range(i + 1, n):
            if rng.random() < (0.3 if i // size == j // size else 0.01):
                nbrs[i].append(j)
                nbrs[j].append(i)
    adj = tmp_path / "g.adj"
    adj.write_text("".join(f"n{i} " + " ".join(f"n{j}" for j in js) + "\n" for i, js in nbrs.items()) + "\nlone\n")
    labels = tmp_path / "labels.txt"  # groups 0 and 1 also carry "x": 60 nodes with two labels
    labels.write_text("".join(f"n{i} c{i // size}" + (" x" if i // size < 2 else "") + "\n" for i in range(n)))
    report = tmp_path / "r" / "ml.json"
    rc = main(["evaluate", "classify", "--labels", str(labels), "--labels-format", "space-multi",
               "--edges", str(adj), "--edges-format", "adjlist", "--dim", "16", "--iterations", "2",
               "--split-seed", "2", "--max-iter", "6", "--report", str(report)])
    assert rc == 0
    r = json.loads(report.read_text())
    n_edges = sum(len(js) for js in nbrs.values()) // 2
    assert r["edges"] == {"paths": [str(adj)], "lines": n + 2, "malformed_lines": 2, "rows": 2 * n_edges,
                          "self_loops_dropped": 0, "duplicates_dropped": n_edges, "edges": n_edges}
    assert {k: r["labels"][k] for k in ("labelled_nodes", "node_label_pairs", "multi_label_nodes", "labels")} == {
        "labelled_nodes": n, "node_label_pairs": n + 2 * size, "multi_label_nodes": 2 * size, "labels": 5}
    m = r["metrics"]
    lab, _ = read_multilabels(spark, str(labels))
    test_nodes = split_nodes(lab.select("node").distinct(), seed=2).filter("is_test").count()
    assert (m["labels"], m["test_nodes"], m["train_nodes"] + m["test_nodes"]) == (5, test_nodes, n)
    assert r["protocol"]["prediction_rule"].startswith("top-k")
    # planted communities are easy for Cleora + one-vs-rest; random top-k labels score about 0.3
    assert m["micro_f1"] > 0.75 and m["macro_f1"] > 0.7, m
    assert f"Micro-F1 {m['micro_f1']:.4f}" in capsys.readouterr().out


def test_single_label_space_format_rejects_multi_label_lines(spark, tmp_path):
    from spark_cleora.evaluate.classify import read_labels

    path = tmp_path / "l.txt"
    path.write_text("a 1\nb 2 3\n")
    with pytest.raises(ValueError, match="space-multi"):
        read_labels(spark, str(path), node=None, label=None, fmt="space")


@pytest.mark.skipif(not (SHARED / "blogcatalog").exists(), reason="no shared BlogCatalog data")
def test_blogcatalog_labels_as_documented(spark):
    lab, counts = read_multilabels(spark, str(SHARED / "blogcatalog" / "bc_labels.txt"))
    assert (counts["labelled_nodes"], counts["multi_label_nodes"], counts["labels"]) == (10312, 2852, 39)
