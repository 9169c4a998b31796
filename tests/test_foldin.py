"""fold-in (new entities from known vectors), combine (several runs), and EMDE coding of folded-in items."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from spark_cleora.cli import main
from spark_cleora.engine.combine import combine
from spark_cleora.config import EmbedConfig
from spark_cleora.errors import ConfigError
from spark_cleora.engine.foldin import fold_in

DIM = 8


def _known(seed: int, names: list[str], degrees: list[float]) -> dict[str, tuple[np.ndarray, float]]:
    rng = np.random.default_rng(seed)
    out = {}
    for n, d in zip(names, degrees):
        v = rng.standard_normal(DIM)
        out[n] = (v / np.linalg.norm(v), d)
    return out


def _known_frame(spark, known):
    rows = [(n, "e", d, 1.0, [float(x) for x in v.astype(np.float32)]) for n, (v, d) in known.items()]
    return spark.createDataFrame(rows, "entity string, column string, degree double, occurrences double, "
                                       "embedding array<float>")


def reference(hyperedges: list[list[str]], known, *, markov: str, iterations: int,
              residual: float = 0.0) -> dict[str, np.ndarray]:
    """Numpy fold-in, written out from the definition: W[x,y] = sum_h 2 c_x c_y / n_h², new-events degree
    D[x] = sum_h 2 c_x / n_h for new entities, the original degree for known ones; rows of M for the new
    entities times X (known fixed, new zero at first), plus residual/(1-residual) times the row's previous
    vector, row-normalised, ``iterations`` times."""
    names = sorted({e for h in hyperedges for e in h})
    ix = {n: i for i, n in enumerate(names)}
    n = len(names)
    w = np.zeros((n, n))
    d_new = np.zeros(n)
    for h in hyperedges:
        c = np.zeros(n)
        for e in h:
            c[ix[e]] += 1
        size = c.sum()
        w += 2.0 * np.outer(c, c) / size**2
        d_new += 2.0 * c / size
    deg = np.array([known[m][1] if m in known else d_new[ix[m]] for m in names])
    m = w / deg[:, None] if markov == "left" else w / np.sqrt(np.outer(deg, deg))
    x = np.array([known[m_][0].astype(np.float32).astype(np.float64) if m_ in known else np.zeros(DIM)
                  for m_ in names])
    new = np.array([m_ not in known for m_ in names])
    for _ in range(iterations):
        y = m[new] @ x + residual / (1.0 - residual) * x[new]
        y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-10)
        x[new] = y
    return {m_: x[ix[m_]] for m_ in names if m_ not in known and np.any(x[ix[m_]] != 0)}


def _events(spark, hyperedges):
    return spark.createDataFrame([(f"h{i}", e) for i, h in enumerate(hyperedges) for e in h], "h string, e string")


def _run(spark, known, hyperedges, *, markov="left", iterations=1, engine="auto", residual=0.0, **kw):
    cfg = EmbedConfig(input_format="dataframe", hyperedge="h", entity="e", dim=DIM, markov=markov, num_blocks=1,
                      engine=engine, residual=residual)
    res = fold_in(spark, _known_frame(spark, known), _events(spark, hyperedges), cfg, iterations=iterations, **kw)
    rows = res.embeddings.collect()
    return {r["entity"]: (np.array(r["embedding"]), r["fold_in_iteration"]) for r in rows}, res.report


KNOWN = _known(0, ["k1", "k2", "k3", "k4"], [1.5, 2.0, 0.7, 3.0])
# new entities whose hyperedges hold only known entities (k2 twice: multiplicity counts)
DIRECT = [["u1", "k1", "k2", "k2"], ["u1", "k3"], ["u2", "k1", "k4", "k3"], ["k1", "k4"]]


@pytest.mark.parametrize("markov,engine", [("left", "shuffle"), ("symmetric", "one-task")])
def test_one_iteration_is_a_propagation_step(spark, markov, engine):
    got, report = _run(spark, KNOWN, DIRECT, markov=markov, engine=engine)
    assert report["engine"] == engine
    want = reference(DIRECT, KNOWN, markov=markov, iterations=1)
    assert set(got) == {"u1", "u2"} == set(want)
    for name, vec in want.items():
        np.testing.assert_allclose(got[name][0], vec, atol=1e-6)
        assert got[name][1] == 1
    assert report["unreached"] == 0 and report["folded_in"] == 2
    if markov == "symmetric":  # the known degrees matter here: a wrong degree would change the direction
        wrong = {k: (v, 1.0) for k, (v, _) in KNOWN.items()}
        assert not np.allclose(reference(DIRECT, wrong, markov=markov, iterations=1)["u1"], want["u1"], atol=1e-3)


@pytest.mark.parametrize("engine", ["one-task", "shuffle"])
def test_chain_of_new_entities_and_unreached_report(spark, engine):
    edges = [["u1", "k1", "k2"], ["u1", "u2"], ["u2", "u3"], ["z1", "z2"], ["z2", "z3", "z1"]]
    got, report = _run(spark, KNOWN, edges, markov="symmetric", iterations=3, engine=engine, residual=0.3)
    want = reference(edges, KNOWN, markov="symmetric", iterations=3, residual=0.3)
    assert {k: v[1] for k, v in got.items()} == {"u1": 1, "u2": 2, "u3": 3}
    for name, vec in want.items():  # later iterations include the new entities' own (self-loop) terms
        np.testing.assert_allclose(got[name][0], vec, atol=1e-6)
    assert report["unreached"] == 3 and report["unreached_sample"] == ["z1", "z2", "z3"]
    assert report["folded_in_per_iteration"] == {"1": 1, "2": 1, "3": 1}


def test_engines_agree_on_a_two_column_relation(spark):
    """Cleora lines 'user<TAB>products' (two columns, not reflexive; a bad line skipped and counted): the
    one-pass task and the shuffle engine give the same vectors, iterations, columns and report."""
    known = _known(3, ["u1", "p1", "p2", "p3"], [1.0, 2.0, 1.5, 0.5])
    lines = spark.createDataFrame([(v,) for v in ["u1\tp1 p2 pNEW", "uNEW\tp2 p3", "uNEW\tpNEW", "u2 p3",
                                                  "u3\tpLONE"]], "value string")
    cfg = EmbedConfig(input_format="cleora-tsv", columns="user complex::product", dim=DIM, markov="symmetric",
                      num_blocks=3, on_bad_rows="skip")  # 3 blocks: multiplied in 2 groups (local[2])
    runs = {}
    for engine in ("one-task", "shuffle"):
        res = fold_in(spark, _known_frame(spark, known), lines, cfg.replace(engine=engine), iterations=2)
        rows = {r["entity"]: r for r in res.embeddings.collect()}
        runs[engine] = rows, res.report
    (a, ra), (b, rb) = runs["one-task"], runs["shuffle"]
    assert ra["engine"] == "one-task" and rb["engine"] == "shuffle" and rb["block_groups"] == 2
    assert set(a) == set(b) == {"pNEW", "uNEW"}
    assert {k: (r["column"], r["fold_in_iteration"]) for k, r in a.items()} == {"pNEW": ("product", 1),
                                                                              "uNEW": ("user", 1)}
    for name in a:
        np.testing.assert_allclose(a[name]["embedding"], b[name]["embedding"], atol=1e-6)
        assert (a[name]["degree"], a[name]["fold_in_iteration"]) == (b[name]["degree"], b[name]["fold_in_iteration"])
    assert ra["rejected"] == rb["rejected"] == {"wrong_cell_count": 1}
    for key in ("input_rows", "hyperedges", "memberships", "folded_in_per_iteration", "unreached", "unreached_sample"):
        assert ra[key] == rb[key], key
    assert ra["unreached_sample"] == ["pLONE", "u3"]


def test_include_known_and_refusals(spark):
    got, _ = _run(spark, KNOWN, DIRECT, include_known=True)
    assert set(got) == {"k1", "k2", "k3", "k4", "u1", "u2"}
    assert got["k1"][1] is None
    np.testing.assert_allclose(got["k1"][0], KNOWN["k1"][0], atol=1e-7)  # known vectors stay as they were
    known = _known_frame(spark, KNOWN)
    with pytest.raises(ConfigError, match="whitened"):
        fold_in(spark, known, _events(spark, DIRECT),
                EmbedConfig(input_format="dataframe", hyperedge="h", entity="e", dim=DIM, whiten="every"))
    with pytest.raises(ConfigError, match="dimension 8"):
        fold_in(spark, known, _events(spark, DIRECT),
                EmbedConfig(input_format="dataframe", hyperedge="h", entity="e", dim=16))


def test_combine_weights_and_partial_presence(spark):
    a = _known(1, ["x", "y", "z"], [1.0, 2.0, 3.0])
    b = _known(2, ["x", "y", "w"], [0.5, 0.5, 0.5])
    out = combine([_known_frame(spark, a), _known_frame(spark, b)], dim=DIM, weights=[1.0, 3.0])
    rows = {r["entity"]: r for r in out.collect()}
    assert {k: r["runs"] for k, r in rows.items()} == {"x": 2, "y": 2, "z": 1, "w": 1}
    for name in ("x", "y"):
        want = a[name][0].astype(np.float32) + 3.0 * b[name][0].astype(np.float32)
        np.testing.assert_allclose(rows[name]["embedding"], want / np.linalg.norm(want), atol=1e-6)
    assert rows["x"]["degree"] == pytest.approx(1.5) and rows["z"]["degree"] == pytest.approx(3.0)
    np.testing.assert_allclose(rows["w"]["embedding"], b["w"][0], atol=1e-6)


def _fake_run(tmp_path, name, **cfg):
    d = tmp_path / name
    d.mkdir()
    (d / "_run.json").write_text(json.dumps({"config": {"dim": 8, "init": "siphash", "seed": 0, "multiscale": [],
                                                        "whiten": "none", **cfg}}))
    return str(d)


@pytest.mark.parametrize("change", [{"dim": 16}, {"init": "fx"}, {"seed": 3}])
def test_combine_refuses_mismatched_runs(tmp_path, capsys, change):
    a, b = _fake_run(tmp_path, "a"), _fake_run(tmp_path, "b", **change)
    assert main(["combine", a, b, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{next(iter(change))}=" in err and "Traceback" not in err
    assert main(["combine", a, a, "--weights", "1", "--output", str(tmp_path / "out")]) == 2


def test_fold_in_cli_and_emde_code_a_new_item(spark, tmp_path):
    """embed -> fold-in a new item -> emde code -> the item is coded as the coder codes any vector, and a
    sketch of a customer with only the new item is not empty."""
    from spark_cleora.emde.coder import load_coder, read_codes

    rng = np.random.default_rng(0)
    rows = [(f"s{s}", f"i{i}") for s in range(60) for i in rng.choice(12, 3, replace=False)]
    old = tmp_path / "old.csv"
    old.write_text("s,i\n" + "\n".join(f"{a},{b}" for a, b in rows) + "\n")
    new = tmp_path / "new.csv"
    new.write_text("s,i\nn1,NEW\nn1,i1\nn1,i2\nn2,NEW\nn2,i3\nn3,LONELY\n")
    emb, folded = str(tmp_path / "emb"), str(tmp_path / "folded")
    assert main(["embed", str(old), "--input-format", "csv", "--hyperedge", "s", "--entity", "i", "--dim", "8",
                 "--iterations", "2", "--output", emb, "--checkpoint", "local"]) == 0
    before = sorted(os.listdir(emb))
    # the quarantine may be neither an input (the known embeddings) nor the output: refused before any work
    for rejects in (emb, os.path.join(folded, "bad")):
        assert main(["fold-in", "--embeddings", emb, "--events", str(new), "--on-bad-rows", "quarantine",
                     "--rejects", rejects, "--output", folded]) == 2
    assert sorted(os.listdir(emb)) == before and not os.path.exists(folded)
    assert main(["fold-in", "--embeddings", emb, "--events", str(new), "--output", folded]) == 0
    report = json.load(open(os.path.join(folded, "_run.json")))["fold_in"]
    assert report["folded_in"] == 1 and report["unreached"] == 1 and report["unreached_sample"] == ["LONELY"]
    out = spark.read.parquet(folded)
    assert set(out.columns) == {"entity", "column", "degree", "occurrences", "embedding", "fold_in_iteration"}
    coder_dir, coder2 = str(tmp_path / "coder"), str(tmp_path / "coder2")
    assert main(["emde", "fit", "--embeddings", emb, "--depth", "3", "--bits", "2", "--output", coder_dir]) == 0
    assert main(["emde", "code", "--coder", coder_dir, "--embeddings", folded, "--output", coder2]) == 0
    coder = load_coder(spark, coder2)
    assert coder.coder_id == load_coder(spark, coder_dir).coder_id  # same coder: old sketches stay valid
    codes = {r["item"]: list(r["codes"]) for r in read_codes(spark, coder2).collect()}
    old_codes = {r["item"]: list(r["codes"]) for r in read_codes(spark, coder_dir).collect()}
    assert set(codes) == set(old_codes) | {"NEW"} and all(codes[k] == v for k, v in old_codes.items())
    vec = np.array(out.filter("entity = 'NEW'").first()["embedding"], dtype=np.float32)[None, :]
    assert codes["NEW"] == coder.encode([vec])[0].tolist()
    sk = str(tmp_path / "sk")
    ev = tmp_path / "ev.csv"
    ev.write_text("c,i\nbuyer,NEW\n")
    assert main(["emde", "sketch", "--coder", coder2, "--events", str(ev), "--events-format", "csv",
                 "--customer", "c", "--item", "i", "--output", sk]) == 0
    assert spark.read.parquet(sk).count() == 1
