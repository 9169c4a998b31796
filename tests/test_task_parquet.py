"""The one-task engine writing a local Parquet output itself (pyarrow, in the task) instead of Spark's
writer: when it is allowed, that the file is the one Spark would read back, and that the run's rules
and counts are unchanged."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_cleora.cli import main
from spark_cleora.engine.one_task import SMALL_INPUT_CONF
from spark_cleora.runtime.session import EMBEDDED_LOCAL_CONF
from spark_cleora.storage import task_parquet
from spark_cleora.storage.task_parquet import (ENABLED_CONF, TaskParquetTarget, check_task_parquet, readable_by_task,
                                               task_parquet_target, write_task_parquet)


@pytest.fixture
def conf(spark):
    """Set Spark confs for one test, as a session spark_cleora started for a local master has them
    (the suite's own session is not one); everything set is unset afterwards."""
    from spark_cleora.runtime.compat import is_remote

    if is_remote(spark) or not spark.conf.get("spark.master", "").startswith("local"):
        pytest.skip("the task writes the output only on a local classic session")
    touched: list[str] = []

    def set_(**kv: str) -> None:
        for k, v in kv.items():
            key = k.replace("__", ".")
            touched.append(key)
            spark.conf.set(key, v)

    set_(**{EMBEDDED_LOCAL_CONF.replace(".", "__"): "true"})
    yield set_
    for k in touched:
        spark.conf.unset(k)


def _target(spark, tmp_path, **kw):
    opts = {"output_format": "parquet", "partition_by": (), "table": False, "target": str(tmp_path / "o"), **kw}
    return task_parquet_target(spark, **opts)


def test_the_task_writes_only_a_local_unpartitioned_parquet_output_of_an_embedded_local_session(spark, conf, tmp_path):
    got = _target(spark, tmp_path)
    assert (got.directory, got.compression) == (str(tmp_path / "o"), "snappy")
    again = _target(spark, tmp_path, target=f"file://{tmp_path}/o")
    assert (again.directory, again.compression) == (got.directory, got.compression)
    assert again.write_id != got.write_id  # each write names its part file anew
    assert _target(spark, tmp_path, partition_by=("column",)) is None
    assert _target(spark, tmp_path, output_format="delta") is None
    assert _target(spark, tmp_path, table=True) is None
    assert _target(spark, tmp_path, target="s3a://bucket/out") is None
    for codec, expected in (("zstd", "zstd"), ("GZIP", "gzip"), ("uncompressed", "none"), ("none", "none"),
                            ("lz4", None), ("brotli", None)):
        conf(spark__sql__parquet__compression__codec=codec)
        t = _target(spark, tmp_path)
        assert (t.compression if t else None) == expected, codec
    spark.conf.unset("spark.sql.parquet.compression.codec")
    conf(spark__sql__parquet__writeLegacyFormat="true")
    assert _target(spark, tmp_path) is None
    conf(spark__sql__parquet__writeLegacyFormat="false", **{ENABLED_CONF.replace(".", "__"): "false"})
    assert _target(spark, tmp_path) is None
    spark.conf.unset(EMBEDDED_LOCAL_CONF)  # a session spark_cleora did not start (a notebook's, spark-submit)
    spark.conf.set(ENABLED_CONF, "true")
    assert _target(spark, tmp_path) is None


def test_a_target_is_validated_on_creation():
    with pytest.raises(ValueError, match="absolute"):
        TaskParquetTarget("relative/dir")
    with pytest.raises(ValueError, match="codec"):
        TaskParquetTarget("/abs", "lz4")
    with pytest.raises(ValueError, match="write_id"):
        TaskParquetTarget("/abs", write_id="../x")


def test_a_retried_task_replaces_its_part_file_instead_of_adding_one(tmp_path):
    target = TaskParquetTarget(str(tmp_path / "staging"), "zstd")
    assert write_task_parquet(target, _batches(50, 4, 10), _SCHEMA) == 50
    assert write_task_parquet(target, _batches(30, 4, 10), _SCHEMA) == 30  # the second attempt
    assert os.listdir(target.directory) == [target.file_name]
    assert target.file_name.endswith("-c000.zstd.parquet")
    assert pq.read_table(target.directory).num_rows == 30


_SCHEMA = pa.schema([("entity", pa.string()), ("embedding", pa.list_(pa.float32()))])


def _batches(n: int, dim: int, per: int):
    for lo in range(0, n, per):
        m = min(per, n - lo)
        flat = pa.array(np.arange(lo * dim, (lo + m) * dim, dtype=np.float32))
        yield pa.RecordBatch.from_arrays(
            [pa.array([f"e{i}" for i in range(lo, lo + m)]),
             pa.ListArray.from_arrays(pa.array(np.arange(0, (m + 1) * dim, dim, dtype=np.int32)), flat)],
            schema=_SCHEMA)


def test_one_part_file_in_row_groups_of_about_128_mib_or_as_set(tmp_path, monkeypatch):
    target = TaskParquetTarget(str(tmp_path / "staging"))  # created by the writer, as Spark's would
    assert write_task_parquet(target, _batches(1000, 8, 64), _SCHEMA) == 1000
    (name,) = os.listdir(target.directory)
    assert name.startswith("part-00000-") and name.endswith("-c000.snappy.parquet")
    f = pq.ParquetFile(os.path.join(target.directory, name))
    assert f.metadata.num_row_groups == 1 and f.metadata.row_group(0).column(0).compression == "SNAPPY"
    assert f.read().column("entity").to_pylist() == [f"e{i}" for i in range(1000)]
    monkeypatch.setattr(task_parquet, "ROW_GROUP_BYTES", 64 * 40 * 4)  # ~64 rows of 40 floats
    other = TaskParquetTarget(str(tmp_path / "groups"), "none")
    assert write_task_parquet(other, _batches(1000, 40, 16), _SCHEMA) == 1000
    f = pq.ParquetFile(os.path.join(other.directory, os.listdir(other.directory)[0]))
    sizes = [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)]
    assert sum(sizes) == 1000 and len(sizes) > 10 and max(sizes) <= 80
    np.testing.assert_array_equal(np.asarray(f.read().column("embedding").to_pylist()),
                                  np.arange(1000 * 40, dtype=np.float32).reshape(1000, 40))


def test_an_empty_output_is_a_file_with_the_schema_and_a_failed_write_leaves_none(tmp_path):
    target = TaskParquetTarget(str(tmp_path / "empty"))
    assert write_task_parquet(target, iter(()), _SCHEMA) == 0
    (name,) = os.listdir(target.directory)
    assert pq.read_table(os.path.join(target.directory, name)).schema.names == ["entity", "embedding"]

    def broken():
        yield from _batches(100, 4, 10)
        raise RuntimeError("the task died")

    failed = TaskParquetTarget(str(tmp_path / "failed"))
    with pytest.raises(RuntimeError, match="died"):
        write_task_parquet(failed, broken(), _SCHEMA)
    assert os.listdir(failed.directory) == []  # no part file, no hidden partial one


def test_the_driver_keeps_only_the_tasks_file_and_checks_its_rows(tmp_path):
    target = TaskParquetTarget(str(tmp_path / "staging"))
    assert write_task_parquet(target, _batches(20, 4, 10), _SCHEMA) == 20
    killed = os.path.join(target.directory, f".{target.file_name}.0badf00d.inprogress")  # an attempt killed mid-write
    open(killed, "wb").write(b"partial")
    check_task_parquet(target, 20)
    assert os.listdir(target.directory) == [target.file_name]
    with pytest.raises(RuntimeError, match="the file holds 20"):
        check_task_parquet(target, 21)
    pq.write_table(pa.table({"entity": ["x"]}), os.path.join(target.directory, "part-00001-other.parquet"))
    with pytest.raises(RuntimeError, match="not the ones its tasks wrote"):
        check_task_parquet(target, 20)


def test_the_driver_checks_every_file_the_tasks_wrote_and_nothing_else(tmp_path):
    """The graph build's tasks each write a file: the directory must hold exactly those, with the rows
    each task reported; a lost file, a stray one or a wrong count is an error, a killed attempt's partial
    file is removed."""
    from spark_cleora.storage.task_parquet import check_task_files

    directory = str(tmp_path / "blocks")
    targets = [TaskParquetTarget(directory, write_id=f"w-{p:05d}") for p in range(2)]
    written = {t.file_name: write_task_parquet(t, _batches(n, 4, 10), _SCHEMA) for t, n in zip(targets, (20, 30))}
    killed = os.path.join(directory, f".{targets[1].file_name}.0badf00d.inprogress")
    open(killed, "wb").write(b"partial")
    check_task_files(directory, written)
    assert sorted(os.listdir(directory)) == sorted(written)
    with pytest.raises(RuntimeError, match="the file holds 30"):
        check_task_files(directory, {**written, targets[1].file_name: 31})
    with pytest.raises(RuntimeError, match="not the ones its tasks wrote"):  # a file the job did not report
        check_task_files(directory, {targets[0].file_name: 20})
    os.remove(os.path.join(directory, targets[0].file_name))
    with pytest.raises(RuntimeError, match="not the ones its tasks wrote"):  # a reported file lost
        check_task_files(directory, written)


def test_blocks_are_read_by_the_task_only_from_complete_files_in_a_codec_it_reads(tmp_path):
    d = tmp_path / "blocks"
    d.mkdir()
    assert not readable_by_task(str(d))  # no part file
    (d / "part-00000-x.snappy.parquet").write_bytes(b"not parquet")
    assert not readable_by_task(str(d))
    (d / "part-00000-x.snappy.parquet").unlink()
    pq.write_table(pa.table({"kind": [0, 1]}), str(d / "part-00000-x.zstd.parquet"), compression="zstd")
    (d / "_SUCCESS").write_text("")
    assert readable_by_task(str(d))
    assert not readable_by_task(str(tmp_path / "missing"))


def _embed(tmp_path, name, data, *extra):
    out = tmp_path / name
    code = main(["embed", str(data), "--input-format", "csv", "--hyperedge", "user", "--entity", "item",
                 "--dim", "8", "--iterations", "3", "--output", str(out), *extra])
    return code, out


@pytest.fixture
def events_csv(tmp_path):
    rng = np.random.default_rng(11)
    lines = ["user,item,w"] + [f"u{u},i{min(i, 120)},{1 + w}" for u, i, w in
                               zip(rng.integers(0, 150, 2500), rng.zipf(1.3, 2500), rng.integers(0, 3, 2500))]
    path = tmp_path / "ev.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.compat
@pytest.mark.parametrize("extra", [(), ("--weight", "w", "--dedupe", "--multiscale", "1,3")], ids=["plain", "multiscale"])
@pytest.mark.parametrize("small", [True, False], ids=["graph-in-task", "graph-stage"])
def test_the_tasks_file_is_what_spark_writes(spark, conf, tmp_path, events_csv, extra, small):
    if not small:
        conf(**{SMALL_INPUT_CONF.replace(".", "__"): "0"})
    code, by_task = _embed(tmp_path, "by_task", events_csv, *extra)
    assert code == 0
    conf(**{ENABLED_CONF.replace(".", "__"): "false"})
    code, by_spark = _embed(tmp_path, "by_spark", events_csv, *extra)
    assert code == 0
    task_report = json.loads((by_task / "_run.json").read_text())
    spark_report = json.loads((by_spark / "_run.json").read_text())
    assert task_report["engine"] == spark_report["engine"] == "one-task"
    assert task_report["one_task"].get("graph_in_task", False) is small
    assert task_report["one_task"]["write_seconds"] >= 0 and "write_seconds" not in spark_report["one_task"]
    assert task_report["one_task"]["output_written_by_task"] and not spark_report["one_task"]["output_written_by_task"]
    # the graph stage's blocks (in the local work directory) are read by the task too
    assert task_report["one_task"].get("blocks_read_by_task", False) is (not small)
    assert spark_report["one_task"].get("blocks_read_by_task", False) is False
    for key in ("entities_written", "entities", "input_rows", "rejected", "hyperedges", "memberships"):
        assert task_report[key] == spark_report[key], key
    parts = [f for f in os.listdir(by_task) if f.endswith(".parquet")]
    assert len(parts) == 1 and not [f for f in os.listdir(by_task) if f.startswith(".")]
    a = spark.read.parquet(str(by_task))
    b = spark.read.parquet(str(by_spark))
    assert a.schema == b.schema
    rows_a = sorted(a.collect(), key=lambda r: r["entity"])
    rows_b = sorted(b.collect(), key=lambda r: r["entity"])
    assert len(rows_a) == task_report["entities_written"] > 0
    assert rows_a == rows_b  # every value, bit for bit (floats compare exactly)


def test_rejected_rows_still_fail_the_run_before_the_tasks_file_is_published(spark, conf, tmp_path, capsys):
    data = tmp_path / "bad.csv"
    data.write_text("user,item\nu1,a\nu1,b\nu2,\nu2,c\n")
    for small in ("2000000", "0"):
        conf(**{SMALL_INPUT_CONF.replace(".", "__"): small})
        code, out = _embed(tmp_path, f"out{small}", data)
        assert code == 3 and "null_entity" in capsys.readouterr().err
        assert sorted(os.listdir(tmp_path)) == ["bad.csv"]  # no output, no staging directory left


@pytest.mark.parametrize("extra", [(), ("--weight", "w", "--on-bad-rows", "skip")], ids=["plain", "weighted"])
def test_the_graph_blocks_written_by_the_tasks_are_what_spark_writes(spark, conf, tmp_path, events_csv, extra):
    """On a local Spark the graph build's tasks write ``graph/blocks`` themselves: the same rows (every
    value, plans byte for byte) as Spark's writer, one part file per block, complete only with its
    ``_SUCCESS``, and the same counts and embeddings."""
    data = tmp_path / "ev2.csv"
    data.write_text(events_csv.read_text() + "u1,,1\nu2,i1,x\n")  # rejected rows: counted from the tasks' rows
    runs = {}
    for mode in ("true", "false"):
        conf(**{ENABLED_CONF.replace(".", "__"): mode})
        work = tmp_path / f"work-{mode}"
        code, out = _embed(tmp_path, f"out-{mode}", data, "--keep-work", "--work-dir", str(work), "--num-blocks", "3",
                           *(extra or ("--on-bad-rows", "skip")))
        assert code == 0
        runs[mode] = (json.loads((out / "_run.json").read_text()), work / "graph" / "blocks", out)
    (by_tasks, blocks_t, out_t), (by_spark, blocks_s, out_s) = runs["true"], runs["false"]
    for key in ("entities_written", "input_rows", "rejected", "hyperedges", "memberships", "num_blocks"):
        assert by_tasks[key] == by_spark[key], key
    assert by_tasks["rejected"] and by_tasks["one_task"]["blocks_read_by_task"]
    names = sorted(os.listdir(blocks_t))
    assert names[0] == "_SUCCESS" and len([n for n in names if n.endswith(".parquet")]) == 3
    assert not [n for n in names if n.startswith(".")]  # no attempt's partial file left
    cols = ["kind", "block", "id", "entity", "col", "occurrences", "degree", "plan", "memberships", "hyperedges",
            "largest", "rows", "entities"]
    a, b = spark.read.parquet(str(blocks_t)), spark.read.parquet(str(blocks_s))
    assert a.schema == b.schema
    key = lambda r: (r["kind"], r["block"], r["id"] or 0, r["entity"] or "")  # noqa: E731
    assert sorted(a.select(cols).collect(), key=key) == sorted(b.select(cols).collect(), key=key)
    rows_t = sorted(spark.read.parquet(str(out_t)).collect(), key=lambda r: r["entity"])
    assert rows_t == sorted(spark.read.parquet(str(out_s)).collect(), key=lambda r: r["entity"])
