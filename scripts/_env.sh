# Shared by scripts/demo.sh and scripts/test.sh: a project venv with spark_cleora installed, and Java.
# Usage: source scripts/_env.sh [extras]     (VENV=path overrides .venv; FRESH=1 recreates it)
# (the "local" extra brings PySpark itself: the package does not depend on it, a cluster has its own)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: spark_cleora needs Python >= 3.10 (found: $("$PYTHON" --version 2>&1)). Set PYTHON=/path/to/python3." >&2
  exit 4
fi
java_bin="${JAVA_HOME:+$JAVA_HOME/bin/}java"
if ! command -v "$java_bin" >/dev/null 2>&1; then
  cat >&2 <<'MSG'
error: Spark needs a Java runtime (17 or 21) and none was found (no java on PATH, no JAVA_HOME).
Install one and rerun, e.g.
  Debian/Ubuntu:  sudo apt-get install -y openjdk-17-jre-headless
  macOS:          brew install openjdk@17
  conda:          conda install -c conda-forge openjdk=17
or point JAVA_HOME at an existing JDK/JRE.
MSG
  exit 4
fi

if [ "${FRESH:-0}" = "1" ]; then rm -rf "$VENV"; fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
extras="${1:-}"
# (the grep drops this machine's pip-config noise about missing local mirrors, nothing else)
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT${extras:+[$extras]}" \
  2> >(grep -v "^WARNING: Location .* is ignored" >&2)
# Spark's Python workers must use this interpreter, not whatever python3 is on PATH.
export PYSPARK_PYTHON="$VENV/bin/python"
export PYSPARK_DRIVER_PYTHON="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"
