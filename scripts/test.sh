#!/usr/bin/env bash
# Install spark_cleora with its test and model extras into .venv, set up the pycleora 2.0.0 oracle, run the tests.
#   bash scripts/test.sh [pytest args...]
# Environment:
#   SPARK_CLEORA_TORCH       pip requirement for torch, installed before the package (default torch==2.13.0;
#                            where a CPU-only wheel of that release is in the pip find-links it is taken from
#                            there, otherwise PyPI's build is downloaded). "skip": no torch, model tests skip.
#   SPARK_CLEORA_OLDEST     pip requirements of the oldest supported PySpark (default "pyspark==3.5.9 pyarrow<21":
#                            PySpark 3.5 needs NumPy < 2, which pyarrow 21+ does not support): with no test
#                            named on the command line, the tests marked "compat" (the end-to-end subset) then run
#                            again on it, in a venv of their own (.venv-spark35); "skip": not.
#   SPARK_CLEORA_SHARED_DATA public datasets for the quality tests (default: ../shared/data beside the
#                            checkout, when it exists); tests that need a dataset skip without it.
FRESH_ALL="${FRESH:-0}"
ROOT_GUESS="$(cd "$(dirname "$0")/.." && pwd)"
TORCH_REQ="${SPARK_CLEORA_TORCH:-torch==2.13.0}"
if [ "$TORCH_REQ" = "skip" ]; then EXTRAS=local,test; else EXTRAS=local,test,model; fi
if [ "$TORCH_REQ" != "skip" ]; then
  # torch first, pinned: the model extra's range then installs nothing more (no multi-GB CUDA build by accident)
  VENV="${VENV:-$ROOT_GUESS/.venv}"
  if [ "${FRESH:-0}" = "1" ]; then rm -rf "$VENV"; fi
  PYTHON="${PYTHON:-python3}"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -c 'import torch' 2>/dev/null \
    || "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$TORCH_REQ" \
         2> >(grep -v "^WARNING: Location .* is ignored" >&2)
  export VENV
  FRESH=0
fi
source "$(dirname "$0")/_env.sh" "$EXTRAS"
# pycleora 2.0.0 (SipHash init) cannot live beside pycleora 3.2.1: it gets its own small venv.
ORACLE="${SPARK_CLEORA_PYCLEORA2_VENV:-$ROOT/.venv-pycleora2}"
if [ "$FRESH_ALL" = "1" ]; then rm -rf "$ORACLE"; fi
if [ ! -x "$ORACLE/bin/python" ] || ! "$ORACLE/bin/python" -c 'import pycleora' 2>/dev/null; then
  "$PYTHON" -m venv "$ORACLE"
  "$ORACLE/bin/python" -m pip install --quiet --disable-pip-version-check "pycleora==2.0.0" numpy \
    || { echo "warning: could not install pycleora 2.0.0; SipHash parity tests will be skipped" >&2; rm -rf "$ORACLE"; }
fi
if [ -x "$ORACLE/bin/python" ]; then export SPARK_CLEORA_PYCLEORA2_PYTHON="$ORACLE/bin/python"; fi
if [ -z "${SPARK_CLEORA_SHARED_DATA:-}" ] && [ -d "$ROOT/../shared/data" ]; then
  export SPARK_CLEORA_SHARED_DATA="$(cd "$ROOT/../shared/data" && pwd)"
fi
cd "$ROOT"
OLDEST="${SPARK_CLEORA_OLDEST:-pyspark==3.5.9 pyarrow<21}"
named=0
for a in "$@"; do case "$a" in tests/*|*.py|*::*) named=1 ;; esac; done
if [ "$OLDEST" = "skip" ] || [ "$named" = 1 ]; then exec "$VENV/bin/python" -m pytest "$@"; fi
rc=0
"$VENV/bin/python" -m pytest "$@" || rc=$?
# The end-to-end subset again on the oldest supported PySpark: that release first, then the package beside it.
OLD_VENV="$ROOT/.venv-spark35"
if [ "$FRESH_ALL" = "1" ]; then rm -rf "$OLD_VENV"; fi
[ -x "$OLD_VENV/bin/python" ] || "$PYTHON" -m venv "$OLD_VENV"
# shellcheck disable=SC2086  # a list of requirements
"$OLD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check $OLDEST \
  && "$OLD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test]" \
  2> >(grep -v "^WARNING: Location .* is ignored" >&2)
echo "== the compat subset on $("$OLD_VENV/bin/python" -c 'import pyspark; print("pyspark", pyspark.__version__)')"
PYSPARK_PYTHON="$OLD_VENV/bin/python" PYSPARK_DRIVER_PYTHON="$OLD_VENV/bin/python" \
  "$OLD_VENV/bin/python" -m pytest -q -m compat -p no:cacheprovider || rc=$?
exit "$rc"
