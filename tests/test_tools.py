"""``spark-cleora similar`` / ``inspect`` and their library functions, against numpy on small tables."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from spark_cleora.cli import main
from spark_cleora.errors import UnknownEntityError
from spark_cleora.explore import PALETTE, SEQUENTIAL, draw_projection, problems, sample_projection, summarize
from spark_cleora.similar import nearest_neighbours, similar

EMB_SCHEMA = "entity string, column string, degree double, occurrences double, embedding array<float>"


def _table(n: int = 60, dim: int = 8, seed: int = 5) -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[: n // 2] /= np.linalg.norm(x[: n // 2], axis=1, keepdims=True)  # half unit length, half "whitened"
    names = [f"e{i:03d}" for i in range(n)]
    cols = ["product" if i % 3 else "user" for i in range(n)]
    return names, cols, x


@pytest.fixture(scope="module")
def emb_dir(spark, tmp_path_factory):
    names, cols, x = _table()
    rows = [(nm, c, float(i + 1), float(2 * i + 1), [float(v) for v in x[i]]) for i, (nm, c) in
            enumerate(zip(names, cols))]
    rows.append(("zero", "product", 1.0, 1.0, [0.0] * x.shape[1]))  # no cosine: never a neighbour
    path = str(tmp_path_factory.mktemp("tools") / "emb")
    spark.createDataFrame(rows, EMB_SCHEMA).coalesce(2).write.parquet(path)
    return path


def _numpy_top(x: np.ndarray, names: list[str], q: int, k: int, allowed=None) -> list[tuple[str, float]]:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = xn @ xn[q]
    order = [i for i in np.argsort(-cos, kind="stable") if i != q and (allowed is None or allowed[i])]
    return [(names[i], float(cos[i])) for i in order[:k]]


def test_similar_matches_numpy_cosine_and_excludes_query_and_zero_vectors(spark, emb_dir):
    names, cols, x = _table()
    emb = spark.read.parquet(emb_dir)
    got = similar(emb, ["e007", "e040", "e007"], k=5).collect()
    assert len(got) == 10  # duplicate query counted once
    for q in (7, 40):
        hits = sorted((r for r in got if r["query"] == names[q]), key=lambda r: r["rank"])
        assert [r["rank"] for r in hits] == [1, 2, 3, 4, 5]
        ref = _numpy_top(x, names, q, 5)
        assert [r["entity"] for r in hits] == [n for n, _ in ref]
        np.testing.assert_allclose([r["cosine"] for r in hits], [c for _, c in ref], atol=1e-6)
    # the library shortcut agrees and only returns (name, cosine)
    assert [n for n, _ in nearest_neighbours(emb, "e040", k=5)] == [n for n, _ in _numpy_top(x, names, 40, 5)]
    # k larger than the table: everything except the query and the zero vector
    assert len(similar(emb, ["e001"], k=1000).collect()) == len(names) - 1


def test_similar_column_filter_and_unknown_entities(spark, emb_dir):
    names, cols, x = _table()
    emb = spark.read.parquet(emb_dir)
    hits = similar(emb, ["e010"], k=4, column="user").orderBy("rank").collect()
    assert {r["column"] for r in hits} == {"user"}
    allowed = [c == "user" for c in cols]
    assert [r["entity"] for r in hits] == [n for n, _ in _numpy_top(x, names, 10, 4, allowed)]
    with pytest.raises(UnknownEntityError, match=r"2 of 3 queried entities.*'nope'.*'nada'"):
        similar(emb, ["nope", "e001", "nada"], k=3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        similar(emb, ["e001"], k=0)


def test_similar_cli_json_text_and_exit_codes(spark, emb_dir, capsys):
    names, _, x = _table()
    assert main(["similar", "--embeddings", emb_dir, "--entity", "e003", "--k", "3", "--json"]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert [d["entity"] for d in lines] == [n for n, _ in _numpy_top(x, names, 3, 3)]
    assert set(lines[0]) == {"query", "rank", "entity", "column", "cosine"}
    assert main(["similar", "--embeddings", emb_dir, "--entity", "e003", "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "nearest to e003 (cosine, k=2):" and len(out.splitlines()) == 3
    assert main(["similar", "--embeddings", emb_dir, "--entity", "missing"]) == 3  # bad input
    assert "'missing'" in capsys.readouterr().err
    assert main(["similar", "--embeddings", emb_dir + "-nope", "--entity", "e003"]) == 2  # no such output
    assert main(["similar", "--embeddings", "no_such_db.no_table", "--entity", "e003"]) == 2
    assert "no such directory or table" in capsys.readouterr().err
    spark.read.parquet(emb_dir).write.mode("overwrite").saveAsTable("tools_emb")  # a catalog table works too
    assert main(["similar", "--embeddings", "tools_emb", "--entity", "e003", "--k", "3", "--json"]) == 0
    assert [json.loads(s)["entity"] for s in capsys.readouterr().out.splitlines()] == [d["entity"] for d in lines]
    spark.sql("DROP TABLE tools_emb")
    assert main(["similar", "--embeddings", emb_dir, "--entity", "e003", "--k", "0"]) == 2


def test_inspect_summary_matches_numpy(spark, emb_dir):
    names, cols, x = _table()
    s = summarize(spark.read.parquet(emb_dir))
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    assert s["rows"] == s["distinct_entities"] == len(names) + 1
    assert s["per_column"] == {"product": cols.count("product") + 1, "user": cols.count("user")}
    assert s["dim"] == {"min": 8, "max": 8}
    assert s["zero_vectors"] == 1 and s["null_vectors"] == 0 and s["non_finite_vectors"] == 0
    # the zero vector counts for norms too: it is a finite vector of norm 0
    all_norms = np.append(norms, 0.0)
    assert s["norm"]["min"] == 0.0
    assert s["norm"]["max"] == pytest.approx(all_norms.max(), rel=1e-6)
    assert s["norm"]["mean"] == pytest.approx(all_norms.mean(), rel=1e-6)
    assert s["not_unit_length"] == int((np.abs(all_norms - 1) > 1e-3).sum())
    assert s["degree"] == {"min": 1.0, "mean": pytest.approx((sum(range(1, 61)) + 1) / 61), "max": 60.0}
    assert problems(s) == ["1 zero vectors"]


def test_inspect_flags_broken_tables(spark, tmp_path, capsys):
    rows = [("a", "c", 1.0, 1.0, [1.0, 0.0]), ("a", "c", 1.0, 1.0, [0.0, 1.0]),
            ("b", "c", 1.0, 1.0, [float("nan"), 1.0]), ("c", "c", 1.0, 1.0, None), ("d", "c", 1.0, 1.0, [1.0])]
    path = str(tmp_path / "bad")
    spark.createDataFrame(rows, EMB_SCHEMA).write.parquet(path)
    s = summarize(spark.read.parquet(path))
    assert problems(s) == ["1 duplicate entity rows", "vector lengths differ: 1..2", "1 null vectors",
                           "1 vectors with NaN/inf"]
    assert main(["inspect", path, "--plot", str(tmp_path / "p.png")]) == 3
    err = capsys.readouterr().err
    assert "plot: skipped" in err and "problems: 1 duplicate entity rows" in err
    assert not (tmp_path / "p.png").exists()


def test_inspect_cli_plot_is_the_pca_of_the_sample(spark, emb_dir, tmp_path, capsys):
    from matplotlib.image import imread

    from spark_cleora.storage.outputs import is_tool_file

    names, cols, x = _table()
    png, report = tmp_path / "p.png", tmp_path / "inspect.json"
    rc = main(["inspect", emb_dir, "--plot", str(png), "--json-out", str(report), "--sample", "1000"])
    assert rc == 3  # the zero vector is reported as a problem, and the rest still runs
    out = capsys.readouterr().out
    assert "rows 61, distinct entities 61" in out and "plot: " in out
    summary = json.load(open(report))
    assert summary["plot"]["points"] == 61
    assert summary["plot"]["legend"] == {"product": PALETTE[0], "user": PALETTE[1]}
    assert imread(str(png)).shape[:2] == (900, 1200)  # a PNG that decodes, 10 x 7.5 in at 120 dpi
    assert is_tool_file(str(png))  # marked: a rerun may replace it

    # the projection is the PCA of the sampled rows (all 61 here), up to the sign of each axis
    proj = sample_projection(spark.read.parquet(emb_dir), sample=1000)
    order = np.argsort(proj["entity"])
    full = np.vstack([x, np.zeros((1, 8), np.float32)]).astype(np.float64)
    ref_names = names + ["zero"]
    c = full - full.mean(axis=0)
    _, sv, vt = np.linalg.svd(c, full_matrices=False)
    ref = (c @ vt[:2].T)[np.argsort(ref_names)]
    got = proj["xy"][order]
    for axis in range(2):
        sign = np.sign(ref[:, axis] @ got[:, axis])
        np.testing.assert_allclose(got[:, axis] * sign, ref[:, axis], atol=1e-5)
    np.testing.assert_allclose(proj["explained_variance"], (sv[:2] ** 2) / (sv ** 2).sum(), rtol=1e-6)


def test_projection_sample_is_bounded_and_single_column_uses_degree_deciles(spark, tmp_path):
    rng = np.random.default_rng(2)
    rows = [(f"n{i}", "item", float(i % 17 + 1), 1.0, [float(v) for v in rng.normal(size=4)]) for i in range(300)]
    df = spark.createDataFrame(rows, EMB_SCHEMA)
    proj = sample_projection(df, sample=50, seed=3)
    assert len(proj["entity"]) == 50 and proj["xy"].shape == (50, 2)
    assert proj["palette"] == SEQUENTIAL and proj["groups"][0] == "degree decile 1"
    again = sample_projection(df, sample=50, seed=3)
    assert again["entity"] == proj["entity"]  # seeded: the same rows every time


def test_plot_has_a_title_labelled_axes_and_a_legend(spark, emb_dir):
    proj = sample_projection(spark.read.parquet(emb_dir), sample=1000)
    ev = proj["explained_variance"]
    fig = draw_projection(proj, source="out/emb")
    (ax,) = fig.axes
    assert ax.get_title() == "PCA of 61 sampled embeddings\nout/emb"
    assert ax.get_xlabel() == f"PC 1 ({ev[0]:.1%} of the variance)" and ax.get_ylabel().startswith("PC 2 (")
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "input column"
    assert [t.get_text() for t in legend.get_texts()] == ["product (41)", "user (20)"]
    # one scatter per group, in the legend's colour, holding that group's points
    from matplotlib.colors import to_hex

    assert [(to_hex(c.get_facecolor()[0]), len(c.get_offsets())) for c in ax.collections] == [
        (PALETTE[0], 41), (PALETTE[1], 20)]
    assert fig.get_size_inches().tolist() == [10.0, 7.5]
    assert min(ax.title.get_fontsize(), ax.xaxis.label.get_fontsize(), legend.get_texts()[0].get_fontsize()) >= 12


def test_inspect_plot_refusals_before_spark(emb_dir, tmp_path, capsys, monkeypatch):
    same = str(tmp_path / "same")
    assert main(["inspect", emb_dir, "--plot", same, "--json-out", same]) == 2
    assert "--plot and --json-out name the same file" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed
    assert main(["inspect", emb_dir, "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert err == "error: --plot draws with matplotlib, which is not installed: pip install 'spark-cleora[plot]'\n"
    assert not list(tmp_path.iterdir())
