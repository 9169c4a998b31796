"""``spark-cleora evaluate EVALUATION ...``: reproducible quality evaluations with JSON reports."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

# Modules with ``register(evaluate_sub)`` adding one evaluation each (``p.set_defaults(handler=fn)``).
_EVALUATIONS: list[str] = ["spark_cleora.evaluate.linkpred", "spark_cleora.evaluate.classify",
                            "spark_cleora.evaluate.recommend", "spark_cleora.evaluate.session"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="quality evaluations (link prediction, classification, recommendation)",
                       description="Reproducible quality evaluations; each writes a JSON report.")
    esub = p.add_subparsers(dest="evaluation", metavar="EVALUATION")
    esub.required = True
    for module in _EVALUATIONS:
        importlib.import_module(module).register(esub)
    for sp in esub.choices.values():  # every evaluation: its report and work paths checked up front
        sp.set_defaults(handler=_checked(sp.get_default("handler")))


def _checked(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``handler`` after the output rules (:mod:`spark_cleora.storage.outputs`), before Spark starts."""

    def run(ns: argparse.Namespace) -> int:
        from ..storage.outputs import check_output_file, check_work_dir

        inputs = [p for name in ("edges", "events", "embeddings", "data_dir", "train", "test")
                  for p in ([getattr(ns, name, None)] if isinstance(getattr(ns, name, None), str)
                            else list(getattr(ns, name, None) or []))]
        if getattr(ns, "report", None):
            check_output_file(ns.report, inputs=inputs, what="--report")
        if getattr(ns, "work_dir", None):
            check_work_dir(ns.work_dir, outputs=[getattr(ns, "report", None)], inputs=inputs)
        return handler(ns)

    return run
