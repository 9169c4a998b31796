"""Spark's errors about the user's input, as one-line messages with what to do (exit code 3).

Spark reports problems of the data it reads (Parquet files that disagree on a column's type, duplicate
or unparseable column names, nanosecond timestamps, a directory with no data files) as Java or
Python exceptions with a stack trace. They are expected failures of a batch job: the command line
ends them with one line naming Spark's error class, and a hint.
"""

from __future__ import annotations

import re

#: Spark error class -> what to do about it
INPUT_ERRORS: dict[str, str] = {
    "PARQUET_COLUMN_DATA_TYPE_MISMATCH": "the Parquet files disagree on a column's type; rewrite them "
                                         "with one type per column (e.g. all double)",
    "FAILED_READ_FILE": "an input file could not be read; check or rewrite it",
    "CANNOT_READ_FILE_FOOTER": "an input file is not a readable Parquet file",
    "COLUMN_ALREADY_EXISTS": "the input has two columns of the same name; rename one",
    "INVALID_ATTRIBUTE_NAME_SYNTAX": "column names with '.' or '`' cannot be used as options; rename the column",
    "UNRESOLVED_COLUMN": "a column named in the options is not in the input (names with '.' need renaming)",
    "PARQUET_TYPE_ILLEGAL": "nanosecond timestamps (pandas' default) are not readable by Spark: write the "
                            "Parquet with coerce_timestamps='us' (pandas: to_parquet(..., coerce_timestamps='us', "
                            "allow_truncated_timestamps=True))",
    "UNABLE_TO_INFER_SCHEMA": "no data files were found there (an empty directory?)",
    "PATH_NOT_FOUND": "the input path does not exist",
    "MALFORMED_RECORD_IN_PARSING": "a row of the input cannot be parsed",
}

_CLASS = re.compile(r"\[([A-Z_]+)(?:\.([A-Z_]+))?\]")


def input_error_message(exc: BaseException) -> str | None:
    """A one-line message for a Spark exception caused by the input, or None for anything else."""
    text = str(exc)
    for m in _CLASS.finditer(text):
        for cls in (m.group(2), m.group(1)):
            if cls and cls in INPUT_ERRORS:
                line = text[m.start():].splitlines()[0]
                line = re.sub(r"\s*SQLSTATE: \w+\.?$", "", line).strip()
                if len(line) > 400:
                    line = line[:400] + "..."
                return f"{line} ({INPUT_ERRORS[cls]})"
    return None


def is_spark_error(exc: BaseException) -> bool:
    """True for PySpark's own exceptions and Java exceptions coming through Py4J."""
    names = {c.__module__.split(".")[0] for c in type(exc).__mro__}
    return bool(names & {"pyspark", "py4j"})
