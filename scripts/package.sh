#!/usr/bin/env bash
# Package spark_cleora for spark-submit on a cluster, the way the PySpark packaging guide recommends:
#
#   OUT/spark_cleora-<version>-py3-none-any.whl   the package (pip wheel of this checkout)
#   OUT/spark_cleora-env.tar.gz                   a packed venv (venv-pack): the wheel + its dependencies
#
# Ship the environment with the job; executors unpack it as ./env and run its Python:
#
#   spark-submit --master spark://HOST:7077 --archives OUT/spark_cleora-env.tar.gz#env \
#     --conf spark.pyspark.python=./env/bin/python jobs/embed.py INPUT ... --output OUT_DIR
#
# (the driver of a client-mode job needs the same packages: point spark.pyspark.driver.python at a
# local install or an unpacked copy of the archive.)
#
# pyspark itself is left out by default: every Spark installation puts its own pyspark on the
# executors' PYTHONPATH ($SPARK_HOME/python/lib/pyspark.zip), and the package would add ~450 MB.
# --with-pyspark includes it (for images without Spark's Python files).
#
# venv-pack keeps bin/python as a link to the interpreter the venv was made from, so the cluster
# nodes need that same Python (version and path); build with --python pointing at the interpreter
# your nodes have. Where they differ, use conda-pack or bake the wheel into the node image instead.
#
# --cache-dir DIR keeps the dependency venv there (keyed by the dependency list and the Python), so a
# rebuild after a source change only reinstalls the wheel and repacks.
#
# usage: scripts/package.sh [--python PY] [--out DIR] [--with-pyspark] [--compress-level 0-9] [--cache-dir DIR]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT="$ROOT/dist"
WITH_PYSPARK=0
LEVEL=4
CACHE=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) PY="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --with-pyspark) WITH_PYSPARK=1; shift ;;
    --compress-level) LEVEL="$2"; shift 2 ;;
    --cache-dir) CACHE="$2"; shift 2 ;;
    -h|--help) sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "package.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || { echo "package.sh: $PY is Python < 3.10; spark_cleora needs 3.10+ (use --python)" >&2; exit 2; }
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/spark_cleora_package.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

say() { echo "package.sh: $*" >&2; }

# 1. The wheel, built from a clean copy of the sources (no build/ or *.egg-info left in the checkout).
say "building the wheel with $("$PY" --version 2>&1)"
mkdir -p "$WORK/src"
cp -R "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/spark_cleora" "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
rm -f "$OUT"/spark_cleora-*.whl
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$OUT" "$WORK/src"
WHEEL="$(ls "$OUT"/spark_cleora-*.whl)"
say "wheel: $WHEEL"

# 2. A venv with the wheel and its runtime dependencies (read from the wheel's metadata): a fresh one,
#    or with --cache-dir the one kept for this dependency list, with the new wheel put in.
DEPS="$("$PY" - "$WHEEL" "$WITH_PYSPARK" <<'EOF'
import re, sys, zipfile
wheel, with_pyspark = sys.argv[1], sys.argv[2] == "1"
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
for line in lines:
    if not line.startswith("Requires-Dist:"):
        continue
    req = line.split(":", 1)[1].strip()
    name = re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0].lower()
    if name == "pyspark":  # only in the "local" extra: the cluster's own Spark is used
        if with_pyspark and "local" in req:
            print(req.split(";")[0].strip())
        continue
    if "extra ==" in req and 'extra == "fast"' not in req:
        continue  # optional extras (test, ...) are not runtime dependencies; "fast" (numba) is packed
    print(req.split(";")[0].strip())
EOF
)"
ENV="$WORK/env"
if [[ -n "$CACHE" ]]; then
  KEY="$( { "$PY" -c 'import sys; print(sys.version)'; echo "$DEPS"; } | "$PY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')"
  mkdir -p "$CACHE"
  ENV="$(cd "$CACHE" && pwd)/env-$KEY"
fi
PIP=("$ENV/bin/python" -m pip --quiet --disable-pip-version-check)
if [[ ! -f "$ENV/.spark_cleora_deps_complete" ]]; then
  say "creating the environment: $(echo "$DEPS" | tr '\n' ' ')"
  rm -rf "$ENV"
  "$PY" -m venv "$ENV"
  mapfile -t DEP_ARRAY <<< "$DEPS"
  "${PIP[@]}" install "${DEP_ARRAY[@]}"
  touch "$ENV/.spark_cleora_deps_complete"
else
  say "reusing the dependencies in $ENV"
fi
"${PIP[@]}" install --no-deps --force-reinstall "$WHEEL"
"$ENV/bin/python" -c 'import numpy, scipy, pandas, pyarrow, xxhash, importlib.util as u; assert u.find_spec("spark_cleora")'

# 3. Pack it. venv-pack runs from a tools venv of its own, so it is not inside the archive.
TOOLS="${CACHE:+$(cd "$CACHE" && pwd)/tools}"
TOOLS="${TOOLS:-$WORK/tools}"
if [[ ! -x "$TOOLS/bin/venv-pack" ]]; then
  "$PY" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip --quiet --disable-pip-version-check install "venv-pack>=0.2"
fi
ARCHIVE="$OUT/spark_cleora-env.tar.gz"
"$TOOLS/bin/venv-pack" --prefix "$ENV" --output "$ARCHIVE" --force --quiet \
  --compress-level "$LEVEL" --exclude 'bin/pip*' --exclude 'lib/*/site-packages/pip/*' \
  --exclude 'lib/*/site-packages/pip-*' --exclude 'lib/*/site-packages/setuptools*' --exclude 'lib/*/site-packages/_distutils_hack*' \
  --exclude 'lib/*/site-packages/distutils-precedence.pth' --exclude 'lib/*/site-packages/pkg_resources/*' \
  --exclude 'lib/*/site-packages/*/tests/*' --exclude 'lib/*/site-packages/pyarrow/include/*' \
  --exclude '.spark_cleora_deps_complete'  # test suites and C++ headers: ~100 MB
say "environment: $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
echo "$WHEEL"
echo "$ARCHIVE"
