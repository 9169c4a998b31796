"""Quality evaluations: link prediction, node classification, recommendation."""
