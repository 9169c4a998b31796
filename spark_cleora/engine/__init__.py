"""The Cleora engine: hyperedges, the graph's blocks and plans, start vectors, the two iteration engines
(one-task and shuffle), whitening, the work store, the embedding pipeline, fold-in and combine."""

from ..runtime.session import import_in_workers

# the Python workers an embedded Spark warms up import what the engine's tasks import (numpy, pyarrow, scipy)
import_in_workers(f"{__name__}.graph", f"{__name__}.one_task")
