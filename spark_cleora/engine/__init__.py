"""The Cleora engine: hyperedges, the graph's blocks and plans, start vectors, the two iteration engines
(one-task and shuffle), whitening, the work store, the embedding pipeline, fold-in and combine."""
