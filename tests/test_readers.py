"""The one table reader: embed/fold-in keep a CSV's invalid UTF-8 bytes (their rules count them); EMDE and
the evaluations get Spark's U+FFFD instead (their Python steps need valid strings); both drop a BOM."""

from __future__ import annotations

import pytest

from spark_cleora.config import ConfigError
from spark_cleora.storage.readers import read_table, require_columns


def test_csv_bytes_kept_or_replaced_and_the_bom_dropped(spark, tmp_path):
    f = tmp_path / "events.csv"
    f.write_bytes(b"\xef\xbb\xbfuser,item\nu\xff,a\nu\xfe,b\n\"q,\"\"x\",c\n")
    kept = read_table(spark, [str(f)], "csv", keep_bytes=True)
    replaced = read_table(spark, [str(f)], "csv")
    assert kept.columns == replaced.columns == ["user", "item"]
    raw = sorted(r["b"] for r in kept.selectExpr("hex(user) AS b").collect())
    assert raw == sorted(["75FF", "75FE", '712C2278'])  # u\xff, u\xfe distinct; RFC 4180 quoting
    assert sorted(r["user"] for r in replaced.collect()) == sorted(["u\ufffd", "u\ufffd", 'q,"x'])


def test_missing_inputs_and_columns_are_config_errors(spark, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_table(spark, [str(tmp_path / "nope.parquet")])
    df = spark.createDataFrame([("a",)], "user string")
    require_columns(df, ["user", None], "events")
    with pytest.raises(ConfigError, match=r"events has no column\(s\) \['item'\]"):
        require_columns(df, ["user", "item"], "events")
