"""Running spark_cleora on small inputs inside tests."""

from __future__ import annotations

import numpy as np

from spark_cleora import embed


def spark_lines(spark, rows):
    return spark.createDataFrame([(r,) for r in rows], "value string")


def run_text(spark, rows, columns, **opts):
    """{entity: (embedding, degree)} from spark_cleora on Cleora text lines."""
    emb = embed(spark_lines(spark, rows), columns=columns, **opts)
    return {r["entity"]: (np.asarray(r["embedding"], dtype=np.float32), r["degree"]) for r in emb.collect()}


def run_events(spark, events, **opts):
    emb = embed(events, **opts)
    return {r["entity"]: (np.asarray(r["embedding"], dtype=np.float32), r["degree"]) for r in emb.collect()}


def max_abs_diff(ours, ref, *, keys=None):
    keys = keys if keys is not None else ref.keys()
    assert set(keys) <= set(ours), f"missing entities: {sorted(set(keys) - set(ours))[:5]}"
    return max(float(np.abs(ours[k][0] - ref[k][0]).max()) for k in keys)


class SampleRun:
    """The bundled sample embedded by ``spark-cleora embed`` in this session: the reference run that the
    Connect and cluster tests compare with."""

    ARGS = ("--input-format", "csv", "--hyperedge", "user_id", "--entity", "item", "--timestamp", "ts",
            "--session-gap", "1800", "--dim", "16", "--iterations", "2")

    def __init__(self, spark, output: str) -> None:
        self.spark, self.output = spark, output

    def vectors(self, path: str | None = None) -> dict:
        import numpy as np

        rows = self.spark.read.parquet(path or self.output).collect()
        return {r["entity"]: np.asarray(r["embedding"], dtype=np.float64) for r in rows}

    def max_abs_diff(self, path: str) -> float:
        """Largest |difference| between this run's vectors and the Parquet output at ``path``."""
        ours, theirs = self.vectors(), self.vectors(path)
        assert set(ours) == set(theirs), sorted(set(ours) ^ set(theirs))[:5]
        return max(float(abs(ours[k] - theirs[k]).max()) for k in ours)
