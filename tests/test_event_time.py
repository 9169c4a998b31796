"""One time parser: embed (sessions, fold-in), EMDE (sketches, examples) and the evaluations read an event
time column the same way, DATE columns included (exact epoch seconds in a non-UTC session time zone)."""

from __future__ import annotations

import pytest

from spark_cleora.config import ConfigError

# 2024-05-01T00:00:00Z, and the same day's midnight and noon in New York (UTC-4 in May)
DAY_UTC = 1714521600.0
MIDNIGHT_NY, NOON_NY = DAY_UTC + 4 * 3600, DAY_UTC + 16 * 3600


@pytest.fixture
def new_york(spark):
    old = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        yield spark
    finally:
        spark.conf.set("spark.sql.session.timeZone", old)


def test_embed_emde_and_evaluations_read_times_alike(new_york):
    from spark_cleora.emde import examples, sketch
    from spark_cleora.engine import hyperedges
    from spark_cleora.evaluate import recommend, session

    df = new_york.sql(
        "SELECT 1714521600.5D AS n, 1714521600L AS i, TIMESTAMP'2024-05-01 12:00:00' AS ts, DATE'2024-05-01' AS d, "
        "'2024-05-01' AS s_date, '2024-05-01 12:00:00' AS s_ts, '1714521600' AS s_num, 'soon' AS s_bad")
    expected = {"n": DAY_UTC + 0.5, "i": DAY_UTC, "ts": NOON_NY, "d": MIDNIGHT_NY, "s_date": MIDNIGHT_NY,
                "s_ts": NOON_NY, "s_num": DAY_UTC, "s_bad": None}
    # the parser each caller uses (a module growing its own would be read here, and would have to agree)
    parsers = {"embed": hyperedges.epoch_seconds, "emde sketch": sketch.epoch_seconds,
               "emde examples": examples.epoch_seconds, "evaluate recommend": recommend.epoch_seconds,
               "evaluate session": session.epoch_seconds}
    row = df.select(*[parse(df, c).alias(f"{who}|{c}") for who, parse in parsers.items() for c in expected]).first()
    for who in parsers:
        assert {c: row[f"{who}|{c}"] for c in expected} == expected, who


def test_other_types_are_a_config_error(spark):
    from spark_cleora.engine.hyperedges import epoch_seconds

    df = spark.sql("SELECT true AS b")
    with pytest.raises(ConfigError, match="timestamp column 'b' has type boolean"):
        epoch_seconds(df, "b")
