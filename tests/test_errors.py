"""spark_cleora.errors: every expected failure has its exit code; anything else is a bug with a traceback."""

from __future__ import annotations

import pytest

from spark_cleora import cli, errors
from spark_cleora.errors import exit_status

EXPECTED_CODES = {
    "SparkCleoraError": 1,
    "ConfigError": 2, "RefusedError": 2, "ForeignWorkError": 2, "ResumeMismatchError": 2, "MissingExtraError": 2,
    "BadInputError": 3, "InitVectorsError": 3, "UnknownEntityError": 3, "EntityHashCollisionError": 3,
    "UnsupportedEnvironmentError": 4, "MissingPySparkError": 4, "JavaNotFoundError": 4,
    "ResourceLimitError": 5, "HyperedgeTooLargeError": 5, "RunFailedError": 5,
}


def test_every_exception_class_has_its_exit_code():
    classes = {name: obj for name, obj in vars(errors).items()
               if isinstance(obj, type) and issubclass(obj, BaseException)}
    assert {n: c.exit_code for n, c in classes.items()} == EXPECTED_CODES
    for name, cls in classes.items():
        if name != "SparkCleoraError":
            assert exit_status(cls("what went wrong")) == (EXPECTED_CODES[name], "what went wrong")


def test_bugs_are_not_expected_failures():
    for exc in (ValueError("bug"), KeyError("k"), RuntimeError("x"), TypeError("t"), ZeroDivisionError()):
        assert exit_status(exc) is None
    assert exit_status(KeyboardInterrupt()) == (130, "interrupted")
    assert errors.is_expected(errors.BadInputError("x"), 2, 3) and not errors.is_expected(errors.RunFailedError("x"), 2, 3)


@pytest.mark.parametrize("exc, code", [(errors.HyperedgeTooLargeError("the largest hyperedge ..."), 5),
                                       (errors.EntityHashCollisionError("two names share a key"), 3),
                                       (errors.MissingExtraError("pip install 'spark-cleora[plot]'"), 2)])
def test_main_ends_an_expected_failure_with_one_line_and_its_code(monkeypatch, capsys, exc, code):
    def fail(ns):
        raise exc

    monkeypatch.setattr(cli, "_run_demo", fail)
    assert cli.main(["demo"]) == code
    err = capsys.readouterr().err
    assert err == f"error: {exc}\n"


def test_main_keeps_the_traceback_of_a_plain_value_error(monkeypatch):
    def bug(ns):
        raise ValueError("not an input problem: a bug")

    monkeypatch.setattr(cli, "_run_demo", bug)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["demo"])


def test_an_error_raised_inside_a_spark_task_keeps_its_exit_code(spark):
    """Raised in a Python worker, the error reaches the driver as Spark's exception: mapped all the same."""
    def collide(batches):
        for _ in batches:
            raise errors.EntityHashCollisionError("different entity names share a 64-bit key ('a' vs 'b')")
        yield from ()

    with pytest.raises(Exception) as info:
        spark.range(2).mapInArrow(collide, "id long").collect()
    assert not isinstance(info.value, errors.SparkCleoraError)  # Spark's own exception type
    assert exit_status(info.value) == (3, "different entity names share a 64-bit key ('a' vs 'b')")

