#!/usr/bin/env bash
# Embed the bundled sample on an embedded local Spark and print a few nearest neighbours.
#   bash scripts/demo.sh [--output DIR] [--dim N] [--iterations N]
source "$(dirname "$0")/_env.sh" local  # PySpark for this machine (an explicit argument keeps "$@" for the demo)
exec spark-cleora demo "$@"
