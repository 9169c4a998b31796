#!/usr/bin/env bash
# Install spark_cleora with its test extras into .venv, set up the pycleora 2.0.0 oracle, run the tests.
#   bash scripts/test.sh [pytest args...]
source "$(dirname "$0")/_env.sh" test
# pycleora 2.0.0 (SipHash init) cannot live beside pycleora 3.2.1: it gets its own small venv.
ORACLE="${SPARK_CLEORA_PYCLEORA2_VENV:-$ROOT/.venv-pycleora2}"
if [ "${FRESH:-0}" = "1" ]; then rm -rf "$ORACLE"; fi
if [ ! -x "$ORACLE/bin/python" ] || ! "$ORACLE/bin/python" -c 'import pycleora' 2>/dev/null; then
  "$PYTHON" -m venv "$ORACLE"
  "$ORACLE/bin/python" -m pip install --quiet --disable-pip-version-check "pycleora==2.0.0" numpy \
    || { echo "warning: could not install pycleora 2.0.0; SipHash parity tests will be skipped" >&2; rm -rf "$ORACLE"; }
fi
if [ -x "$ORACLE/bin/python" ]; then export SPARK_CLEORA_PYCLEORA2_PYTHON="$ORACLE/bin/python"; fi
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
