"""The seeded train/test split of the node-classification evaluations (single- and multi-label)."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

TEST_FRACTION = 0.2
_BUCKETS = 1_000_000


def split_nodes(labelled: DataFrame, *, seed: int, test_fraction: float = TEST_FRACTION) -> DataFrame:
    """``labelled`` with a boolean ``is_test``, decided by a hash of (seed, node)."""
    u = F.pmod(F.xxhash64(F.lit(seed), "node"), F.lit(_BUCKETS))
    return labelled.withColumn("is_test", u < F.lit(int(round(test_fraction * _BUCKETS))))
