"""Every exception spark_cleora raises on purpose, each with the exit code the command line ends with.

=========  =====================================================================================
exit code  meaning
=========  =====================================================================================
0          success
1          an unexpected error (a bug): the command line shows the traceback
2          usage or configuration (:class:`ConfigError` and its kinds): an option, a combination of
           options, a path the tool must not write, a missing optional dependency
3          bad input (:class:`BadInputError` and its kinds, and Spark's errors about the data it
           reads): the data breaks a rule; the message names the rule and an example
4          unsupported environment (:class:`UnsupportedEnvironmentError`): Python, PySpark or Java
5          a resource limit or a failed run (:class:`ResourceLimitError`): the input and the options
           are valid, but the machine or cluster cannot run them as configured
130        interrupted (Ctrl-C)
=========  =====================================================================================

:func:`exit_status` maps an exception to its exit code and one-line message; every entry point (the
``spark-cleora`` console script, ``jobs/*.py``, the Databricks job) ends through it. Only these classes
are expected failures: any other exception, a plain ``ValueError`` included, is a bug and keeps its
traceback. The classes that were ``ValueError`` before (:class:`ConfigError`, :class:`BadInputError`)
still are, so library code catching ``ValueError`` keeps working.

At import time this module needs nothing beyond the standard library: the package checks its
environment with it before PySpark is imported (:func:`exit_status` imports Spark's error helpers only
when it runs).
"""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_ENV = 4
EXIT_RESOURCE = 5
EXIT_INTERRUPTED = 130


class SparkCleoraError(Exception):
    """The base of the expected failures; ``exit_code`` is what the command line exits with."""

    exit_code: int = EXIT_FAILURE


# -- exit code 2: usage and configuration ------------------------------------------------------

class ConfigError(SparkCleoraError, ValueError):
    """An invalid option or combination of options; the message says which and how to fix it."""

    exit_code = EXIT_USAGE


class RefusedError(ConfigError):
    """An output, work or rejects path the tool must not write (an input, another tool's data, a live run)."""


class ForeignWorkError(ConfigError):
    """The work directory holds another run's work (other options or input): never resumed, never cleared."""


class ResumeMismatchError(ForeignWorkError):
    """The embedding work directory holds a different run (config or input changed)."""


class MissingExtraError(ConfigError):
    """A command needs an optional dependency (an extra such as ``model`` or ``plot``) that is not installed."""


# -- exit code 3: bad input ----------------------------------------------------------------------

class BadInputError(SparkCleoraError, ValueError):
    """Input data broke a rule (and, for event rows, the policy is ``fail``)."""

    exit_code = EXIT_INPUT


class InitVectorsError(BadInputError):
    """The ``--init-vectors`` table is unusable (missing columns, wrong lengths, duplicates, nulls)."""


class UnknownEntityError(BadInputError, KeyError):
    """A queried entity is not in the embeddings (also a ``KeyError``, as a lookup that failed)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class EntityHashCollisionError(BadInputError):
    """Two different entity names of the input have the same 64-bit key (renaming one is the way out)."""


# -- exit code 4: unsupported environment ------------------------------------------------------

class UnsupportedEnvironmentError(SparkCleoraError, RuntimeError):
    """The Python or Spark version is outside the supported range, or Spark cannot start here."""

    exit_code = EXIT_ENV


class MissingPySparkError(UnsupportedEnvironmentError, ImportError):
    """No PySpark importable: spark_cleora does not install one (a platform brings its own)."""


class JavaNotFoundError(UnsupportedEnvironmentError):
    """No usable Java for an embedded Spark."""


# -- exit code 5: resource limits and failed runs ----------------------------------------------

class ResourceLimitError(SparkCleoraError, RuntimeError):
    """Valid input and options that the configured memory or workers cannot run (the message says what to raise)."""

    exit_code = EXIT_RESOURCE


class HyperedgeTooLargeError(ResourceLimitError):
    """One hyperedge needs more memory than a Python worker is allowed for one block."""


class RunFailedError(ResourceLimitError):
    """A step of the run failed outside spark_cleora's code (e.g. a training process died without a result)."""


def _classes(base: type = SparkCleoraError) -> dict[str, type]:
    found = {base.__name__: base}
    for sub in base.__subclasses__():
        found.update(_classes(sub))
    return found


# An exception raised inside a Spark task reaches the driver as Spark's exception whose text holds the
# worker's traceback, ending in e.g. "spark_cleora.errors.EntityHashCollisionError: <message>".
_FROM_WORKER = re.compile(r"^\s*spark_cleora\.errors\.(\w+): (.*)$", re.MULTILINE)


def _raised_in_worker(exc: BaseException) -> tuple[int, str] | None:
    classes = _classes()
    found = [(classes[m.group(1)], m.group(2)) for m in _FROM_WORKER.finditer(str(exc)) if m.group(1) in classes]
    if not found:
        return None
    cls, message = found[-1]
    return cls.exit_code, message.strip()


def exit_status(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and one-line message of an expected failure, or None for a bug (keep its traceback).

    Expected: the classes of this module, the same raised inside a Spark task, Spark's errors about the
    input data (exit code 3, see :mod:`spark_cleora.runtime.spark_errors`), and an interruption (130).
    """
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, SparkCleoraError):
        return exc.exit_code, str(exc)
    if not isinstance(exc, Exception):
        return None
    from .runtime.spark_errors import input_error_message, is_spark_error

    if not is_spark_error(exc):
        return None
    from_worker = _raised_in_worker(exc)
    if from_worker is not None:
        return from_worker
    message = input_error_message(exc)
    return (EXIT_INPUT, message) if message is not None else None


def is_expected(exc: BaseException, *codes: int) -> bool:
    """Whether ``exc`` is an expected failure (with one of ``codes``, when given)."""
    status = exit_status(exc)
    return status is not None and (not codes or status[0] in codes)
