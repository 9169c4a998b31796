"""``spark-cleora evaluate EVALUATION ...``: reproducible quality evaluations with JSON reports."""

from __future__ import annotations

import argparse
import importlib

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
