"""What the tool may replace or delete: outputs, work and rejects directories, locks, tables, error exits.

Every refused command must leave the user's files, inputs and tables exactly as they were, and end with
the documented exit code (2 refused/usage, 3 bad input).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from spark_cleora.cli import main
from spark_cleora.errors import RefusedError
from spark_cleora.storage.outputs import (
    LOCK_SUFFIX,
    OUTPUT_MARKER,
    WORK_MARKER,
        output_lock,
    overlapping_input,
)

ARGS = ["--input-format", "csv", "--hyperedge", "user", "--entity", "item", "--dim", "8", "--iterations", "1",
        "--log-level", "ERROR"]
EVENTS = "user,item\nu1,a\nu1,b\nu2,b\nu2,c\nu3,a\nu3,c\n"


def _tree(path) -> dict:
    """Every file below ``path`` with its bytes (to prove nothing was touched)."""
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, path)] = open(p, "rb").read()
    return out


@pytest.fixture
def events(tmp_path):
    d = tmp_path / "events"
    d.mkdir()
    (d / "ev.csv").write_text(EVENTS)
    return d


def embed(inp, *extra) -> int:
    return main(["embed", str(inp), *ARGS, *extra])


def test_output_is_replaced_only_when_it_is_a_previous_output(spark, tmp_path, events, capsys):
    before = _tree(tmp_path)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    afile = tmp_path / "report.txt"
    afile.write_text("keep me too")
    before = _tree(tmp_path)
    refused = [
        (str(events), "overlaps the input"),                      # the events themselves
        (str(events / "emb"), "overlaps the input"),              # inside the input directory
        (str(tmp_path), "overlaps the input"),                    # containing the input
        (str(user), "is not an output of spark_cleora"),          # someone's directory
        (str(afile), "is an existing file"),                      # a file: refused, not renamed away
        (str(tmp_path / "o" / "emb*"), "glob character"),         # a glob
        (str(tmp_path / "o[1]"), "glob character"),
        (str(afile / "emb"), "is a file, not a directory"),       # parent is a file
    ]
    for out, message in refused:
        assert embed(events, "--output", out) == 2, out
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err  # one line
        assert _tree(tmp_path) == before, out
    assert not [n for n in os.listdir(tmp_path) if ".old-" in n or ".staging-" in n or n.endswith(LOCK_SUFFIX)]

    # a previous output of the tool is replaced; so is one of an older version (_SUCCESS + _run.json)
    out = tmp_path / "emb"
    assert embed(events, "--output", str(out)) == 0
    assert (out / OUTPUT_MARKER).exists() and (out / "_run.json").exists()
    assert embed(events, "--output", str(out), "--dim", "4") == 0
    assert json.loads((out / "_run.json").read_text())["config"]["dim"] == 4
    os.remove(out / OUTPUT_MARKER)
    assert embed(events, "--output", str(out)) == 0
    assert sorted(os.listdir(tmp_path)) == ["emb", "events", "mine", "report.txt"]  # no work dir, no lock


def test_emde_outputs_never_touch_their_inputs(spark, tmp_path, events, capsys):
    emb = tmp_path / "emb"
    assert embed(events, "--output", str(emb)) == 0
    before = _tree(tmp_path)
    assert main(["emde", "fit", "--embeddings", str(emb), "--output", str(emb), "--log-level", "ERROR"]) == 2
    assert main(["emde", "fit", "--embeddings", str(emb), "--output", str(emb / "coder")]) == 2
    assert main(["emde", "fit", "--embeddings", str(emb), "--seed", str(2**70), "--output", str(tmp_path / "c")]) == 2
    assert main(["emde", "sketch", "--coder", str(emb), "--events", str(events), "--events-format", "csv",
                 "--customer", "user", "--item", "item", "--output", str(events)]) == 2
    err = capsys.readouterr().err
    assert err.count("overlaps the input") == 3 and "64-bit" in err
    assert _tree(tmp_path) == before


def test_work_dir_deletes_only_what_the_tool_created(spark, tmp_path, events, capsys):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "mine.txt").write_text("keep")
    before = _tree(tmp_path)
    out = str(tmp_path / "o")
    for work in (str(scratch), str(events), out, str(tmp_path / "o" / "w"), str(tmp_path)):
        assert embed(events, "--output", out, "--work-dir", work) == 2, work
        assert _tree(tmp_path) == before, work
    err = capsys.readouterr().err
    assert "not a spark_cleora work directory" in err and "overlaps the output" in err
    # an empty directory of the user's is used and left in place, empty again
    empty = tmp_path / "empty"
    empty.mkdir()
    assert embed(events, "--output", out, "--work-dir", str(empty)) == 0
    assert empty.is_dir() and os.listdir(empty) == []
    # a work dir the tool created is removed after success; one kept (--keep-work) carries the marker
    assert embed(events, "--output", out, "--work-dir", str(tmp_path / "w2"), "--keep-work") == 0
    assert (tmp_path / "w2" / WORK_MARKER).exists()
    assert embed(events, "--output", out, "--work-dir", str(tmp_path / "w2")) == 0
    assert not (tmp_path / "w2").exists()


def test_rejects_dir_is_replaced_only_when_it_holds_rejects(spark, tmp_path, capsys):
    ev = tmp_path / "ev.csv"
    ev.write_text(EVENTS + "u4,\n")  # one row without an item
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "x.txt").write_text("keep")
    before = _tree(tmp_path)
    q = ["--on-bad-rows", "quarantine", "--output", str(tmp_path / "o")]
    assert embed(ev, *q, "--rejects", str(mine)) == 2
    assert embed(ev, *q, "--rejects", str(ev)) == 2
    assert embed(ev, *q, "--rejects", str(tmp_path / "o")) == 2
    assert _tree(tmp_path) == before
    rejects = tmp_path / "rejects"
    for _ in range(2):  # the second run replaces the first one's rejects
        assert embed(ev, *q, "--rejects", str(rejects)) == 0
        assert spark.read.parquet(str(rejects)).count() == 1 and (rejects / OUTPUT_MARKER).exists()


def test_a_failed_run_leaves_no_work_dir_and_the_advised_rerun_works(spark, tmp_path, capsys):
    ev = tmp_path / "ev.csv"
    ev.write_text(EVENTS + "u4,\n")
    out = tmp_path / "o"
    assert embed(ev, "--output", str(out)) == 3  # --on-bad-rows fail (default)
    err = capsys.readouterr().err
    assert "--on-bad-rows skip" in err
    assert sorted(os.listdir(tmp_path)) == ["ev.csv"]  # no o.spark_cleora_work, no lock, no output
    assert embed(ev, "--output", str(out), "--on-bad-rows", "skip") == 0
    # errors found inside the run leave nothing either: a column that is not there (2), start vectors of
    # another length (3)
    assert main(["embed", str(ev), *ARGS, "--entity", "nope", "--output", str(tmp_path / "o2")]) == 2
    init = tmp_path / "init"
    spark.createDataFrame([("a", [1.0, 2.0])], "entity string, vector array<float>").write.parquet(str(init))
    assert embed(ev, "--output", str(tmp_path / "o2"), "--on-bad-rows", "skip", "--init-vectors", str(init)) == 3
    assert sorted(os.listdir(tmp_path)) == ["ev.csv", "init", "o"]


def test_expected_failures_are_one_line_errors(spark, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pq.write_table(pa.table({"user": [1, 2], "item": [1, 2]}), mixed / "a.parquet")
    pq.write_table(pa.table({"user": [1.5, 2.5], "item": [3, 4]}), mixed / "b.parquet")
    pq.write_table(pa.table([pa.array([1]), pa.array([1]), pa.array([2])], names=["user", "item", "item"]),
                   tmp_path / "dup.parquet")
    pq.write_table(pa.table({"user": [1], "it`em": [1]}), tmp_path / "tick.parquet")
    pq.write_table(pa.table({"user": [1, 2], "item": [1, 2], "ts": pa.array([1, 2], pa.timestamp("ns"))}),
                   tmp_path / "nanos.parquet")
    (tmp_path / "empty").mkdir()
    p = ["--dim", "8", "--iterations", "1", "--hyperedge", "user", "--log-level", "ERROR"]
    cases = [
        (["embed", str(mixed), *p, "--entity", "item", "--output", str(tmp_path / "o1")], "one type per column"),
        (["embed", str(tmp_path / "dup.parquet"), *p, "--entity", "item", "--output", str(tmp_path / "o2")], "duplicate column name"),
        (["embed", str(tmp_path / "tick.parquet"), *p, "--entity", "it`em", "--output", str(tmp_path / "o3")], "INVALID_ATTRIBUTE_NAME_SYNTAX"),
        (["embed", str(tmp_path / "nanos.parquet"), *p, "--entity", "item", "--timestamp", "ts", "--session-gap", "5",
          "--output", str(tmp_path / "o4")], "coerce_timestamps='us'"),
        (["emde", "fit", "--embeddings", str(tmp_path / "empty"), "--output", str(tmp_path / "c"), "--log-level", "ERROR"],
         "UNABLE_TO_INFER_SCHEMA"),
    ]
    for argv, message in cases:
        assert main(argv) == 3, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    for o in ("o1", "o2", "o3", "o4", "c"):  # no output, no work dir left
        assert not [n for n in os.listdir(tmp_path) if n.startswith(o + ".") or n == o]


def test_missing_input_and_bad_paths_are_refused_before_the_jvm_starts(tmp_path, events):
    """No Java on PATH: had the JVM been started, the exit code would be 4 (environment)."""
    env = {**os.environ, "PATH": os.path.dirname(sys.executable), "JAVA_HOME": str(tmp_path / "nojava")}
    env.pop("SPARK_HOME", None)
    cases = [
        ["embed", str(tmp_path / "missing.csv"), *ARGS, "--output", str(tmp_path / "o")],
        ["embed", str(events), *ARGS, "--output-table", "db.bad name"],
        ["embed", str(events), *ARGS, "--output", str(events)],
        ["embed", str(events), *ARGS, "--output", str(tmp_path / "o"), "--work-dir", str(events)],
    ]
    code = "import sys; from spark_cleora.cli import main; sys.exit(main(sys.argv[1:]))"
    for argv in cases:
        r = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (argv, r.stderr)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["events"]


def test_overlap_rules_with_globs(tmp_path):
    d = str(tmp_path)
    assert overlapping_input(f"{d}/data/out", [f"{d}/data/*.csv"]) is None
    assert overlapping_input(f"{d}/data/x.csv", [f"{d}/data/*.csv"]) == f"{d}/data/*.csv"
    assert overlapping_input(f"{d}/data/x.csv/part", [f"{d}/data/*.csv"]) == f"{d}/data/*.csv"
    assert overlapping_input(f"{d}", [f"{d}/data/*.csv"]) == f"{d}/data/*.csv"
    assert overlapping_input(f"{d}/datax", [f"{d}/data"]) is None
    assert overlapping_input("s3a://b/ev/out", ["s3a://b/ev"]) == "s3a://b/ev"


def test_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    out = str(tmp_path / "o")
    with output_lock(out):
        with pytest.raises(RefusedError, match="being written by another run"):
            with output_lock(out):
                pass
    assert not os.path.exists(out + LOCK_SUFFIX)
    # a dead process's lock on this host is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    with open(out + LOCK_SUFFIX, "w") as fh:
        json.dump({"host": socket.gethostname(), "pid": int(dead.stdout), "started": "x"}, fh)
    with output_lock(out):
        assert json.load(open(out + LOCK_SUFFIX))["pid"] == os.getpid()
    # a lock whose heartbeat stopped long ago (another host) is taken over too; a fresh one is not
    with open(out + LOCK_SUFFIX, "w") as fh:
        json.dump({"host": "elsewhere", "pid": 1, "started": "x"}, fh)
    with pytest.raises(RefusedError):
        with output_lock(out):
            pass
    old = time.time() - 3600
    os.utime(out + LOCK_SUFFIX, (old, old))
    with output_lock(out):
        pass
    assert os.listdir(tmp_path) == []


def test_two_runs_racing_on_one_output(spark, tmp_path, events):
    """Exit 0 means a complete output equal to a single run; the loser refuses with exit 2."""
    ref = tmp_path / "ref"
    assert embed(events, "--output", str(ref)) == 0
    out = str(tmp_path / "out")
    code = "import sys; from spark_cleora.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "embed", str(events), *ARGS, "--output", out, "--master", "local[1]"]
    env = {**os.environ, "SPARK_CLEORA_JVM_CACHE": "0"}
    logs = [tmp_path.parent / f"{tmp_path.name}-race-{i}.log" for i in range(2)]
    procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env) for log in logs]
    results = [(p.wait(timeout=300), log.read_text()) for p, log in zip(procs, logs)]
    codes = sorted(rc for rc, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    if codes == [0, 2]:
        assert "being written by another run" in [e for rc, e in results if rc == 2][0]
    a = {r["entity"]: list(r["embedding"]) for r in spark.read.parquet(str(ref)).collect()}
    b = {r["entity"]: list(r["embedding"]) for r in spark.read.parquet(out).collect()}
    assert a == b and len(b) == 3
    assert sorted(os.listdir(tmp_path)) == ["events", "out", "ref"]


def test_partition_value_with_a_quote_and_a_failed_swap_keeps_the_old_table(spark, tmp_path, monkeypatch):
    import spark_cleora.storage.tables as tables

    ev = tmp_path / "ev.csv"
    ev.write_text(EVENTS.replace("item", "it'em"))
    spark.sql("DROP TABLE IF EXISTS quote_t")
    args = [str(ev), "--input-format", "csv", "--hyperedge", "user", "--entity", "it'em", "--dim", "8",
            "--iterations", "1", "--output-table", "quote_t", "--partition-by", "column", "--log-level", "ERROR"]
    assert main(["embed", *args]) == 0
    rows = sorted((r["entity"], r["column"]) for r in spark.read.table("quote_t").collect())
    assert rows == [("a", "it'em"), ("b", "it'em"), ("c", "it'em")]
    assert main(["embed", *args, "--dim", "4"]) == 0  # replaced: the partition fix-up quoted the value
    assert {len(r["embedding"]) for r in spark.read.table("quote_t").collect()} == {4}

    real, calls = tables._follow_renamed_partitions, []

    def fail_once(spark, name):  # the new table's partition fix-up fails; the old table's restore runs
        calls.append(name)
        if len(calls) == 1:
            raise RuntimeError("injected failure after the swap began")
        real(spark, name)

    monkeypatch.setattr(tables, "_follow_renamed_partitions", fail_once)
    with pytest.raises(RuntimeError, match="injected"):
        main(["embed", *args, "--dim", "8"])
    assert {len(r["embedding"]) for r in spark.read.table("quote_t").collect()} == {4}
    assert spark.read.table("quote_t").count() == 3
    assert [t.name for t in spark.catalog.listTables() if t.name.startswith("quote_t")] == ["quote_t"]
    spark.sql("DROP TABLE quote_t")


def test_class_archive_used_only_when_owned_and_private(monkeypatch, tmp_path):
    from spark_cleora.runtime import session

    session.check_java()
    monkeypatch.setenv(session.CLASS_CACHE_ENV, str(tmp_path / "cache"))
    options, pending = session.class_cache_options({})
    final = pending.rsplit(".", 2)[0]
    with open(final, "wb") as fh:
        fh.write(b"x")
    os.chmod(final, 0o666)  # writable by others: never mapped, made anew
    options, pending = session.class_cache_options({})
    assert "SharedArchiveFile" not in options and pending and not os.path.exists(final)
    with open(final, "wb") as fh:
        fh.write(b"x")
    os.chmod(final, 0o644)
    assert session.class_cache_options({})[0].startswith(f"-XX:SharedArchiveFile={final} ")
    os.chmod(tmp_path / "cache", 0o777)  # a directory others can write to: not used at all
    assert session.class_cache_options({}) == ("", None)
    # keyed by the jars' path: the same jar files (names, sizes) elsewhere, as in another venv, get
    # another archive
    import pyspark

    jars = os.path.join(os.path.dirname(pyspark.__file__), "jars")
    copy = tmp_path / "elsewhere" / "jars"
    copy.mkdir(parents=True)
    for f in os.listdir(jars):
        with open(copy / f, "wb") as fh:
            fh.truncate(os.path.getsize(os.path.join(jars, f)))  # sparse: same size, no bytes written
    monkeypatch.setattr(pyspark, "__file__", str(tmp_path / "elsewhere" / "__init__.py"))
    os.chmod(tmp_path / "cache", 0o700)
    other, pending = session.class_cache_options({})
    assert "ArchiveClassesAtExit" in other and not pending.startswith(final)
