"""spark_cleora: Cleora hypergraph embeddings on Apache Spark, numerically equal to pycleora."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import ConfigError, EmbedConfig, parse_columns  # noqa: E402
from .embed import EmbedResult, embed, run_embedding  # noqa: E402

__all__ = ["ConfigError", "EmbedConfig", "EmbedResult", "embed", "parse_columns", "run_embedding", "__version__"]
