#!/usr/bin/env python3
"""The compatibility table (docs/compatibility.md) from a run on each PySpark release, classic local mode.

For each version, one after the other: a fresh venv, that PySpark first, then this package with its
dependencies (a real ``pip install``, which must leave the PySpark as it was), then the probe — the
``spark-cleora`` command line on the bundled sample: embed with both engines, the EMDE chain (fit,
sketch, recommend), similar and inspect. The venv is deleted afterwards (each is ~300-450 MB). The
embeddings of every version are then compared with the newest's.

    python scripts/compat_matrix.py [--versions 3.5.9 4.0.5 4.1.4 4.2.1 4.3.0] [--out docs/compatibility.md]
                                    [--work DIR] [--keep]

Needs Java 17+ and network access to the package index. Exit code 1 if any step fails or any version's
embeddings differ from the newest's by more than 1e-6.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ["3.5.9", "4.0.5", "4.1.4", "4.2.1", "4.3.0"]
#: PySpark 3.5 pins NumPy < 2; pyarrow 21+ needs NumPy 2
EXTRA_PINS = {"3.": ["pyarrow<21"]}
TOLERANCE = 1e-6
EMBED_ARGS = ["--input-format", "csv", "--hyperedge", "user_id", "--entity", "item", "--timestamp", "ts",
              "--session-gap", "1800", "--dim", "16", "--iterations", "3", "--init", "fx"]
STEPS = ["install", "embed one-task", "embed shuffle", "emde fit", "emde sketch", "emde recommend", "similar",
         "inspect"]


def probe(out: str) -> None:
    """Run in the version's venv: every step through the CLI, results to ``out``/probe.json."""
    import numpy as np
    import pyspark

    from spark_cleora.cli import main
    from spark_cleora.demo import sample_path

    conf = ["--master", "local[2]", "--conf", "spark.sql.shuffle.partitions=4", "--conf", "spark.ui.enabled=false"]
    res: dict = {"pyspark": pyspark.__version__, "python": platform.python_version(), "steps": {}}

    def step(name: str, *argv: str) -> str:
        buf = io.StringIO()
        t = time.perf_counter()
        try:
            with contextlib.redirect_stdout(buf):
                rc = main([*argv, *conf])
        except Exception as exc:  # noqa: BLE001 (the table records what broke)
            rc, buf = 1, io.StringIO(f"{type(exc).__name__}: {exc}")
        res["steps"][name] = {"rc": rc, "seconds": round(time.perf_counter() - t, 1)}
        if rc:
            res["steps"][name]["error"] = buf.getvalue()[-300:]
        return buf.getvalue()

    sample = sample_path()
    for engine in ("one-task", "shuffle"):
        step(f"embed {engine}", "embed", sample, *EMBED_ARGS, "--engine", engine, "--output", f"{out}/emb-{engine}")
    step("emde fit", "emde", "fit", "--embeddings", f"{out}/emb-shuffle", "--depth", "4", "--bits", "3", "--seed", "0",
         "--output", f"{out}/coder")
    step("emde sketch", "emde", "sketch", "--coder", f"{out}/coder", "--events", sample, "--events-format", "csv",
         "--customer", "user_id", "--item", "item", "--output", f"{out}/sketches")
    step("emde recommend", "emde", "recommend", "--coder", f"{out}/coder", "--sketches", f"{out}/sketches", "--k", "5",
         "--output", f"{out}/recs")
    text = step("similar", "similar", "--embeddings", f"{out}/emb-shuffle", "--entity", "coffee:espresso-beans",
                "--k", "5", "--json")
    res["similar"] = [json.loads(line)["entity"] for line in text.splitlines() if line.startswith("{")]
    step("inspect", "inspect", f"{out}/emb-shuffle", "--json-out", f"{out}/inspect.json")

    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    for engine in ("one-task", "shuffle"):
        if not res["steps"][f"embed {engine}"]["rc"]:
            rows = spark.read.parquet(f"{out}/emb-{engine}").collect()
            np.savez(f"{out}/emb-{engine}.npz", **{r["entity"]: np.asarray(r["embedding"], np.float64) for r in rows})
    if not res["steps"]["emde recommend"]["rc"]:
        res["recommend"] = {r["customer"]: list(r["items"]) for r in spark.read.parquet(f"{out}/recs").collect()}
    Path(out, "probe.json").write_text(json.dumps(res))


def run_version(version: str, work: Path, keep: bool) -> dict:
    venv, out = work / f"venv-{version}", work / f"out-{version}"
    shutil.rmtree(venv, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    pins = next((p for prefix, p in EXTRA_PINS.items() if version.startswith(prefix)), [])
    t = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([*pip, f"pyspark=={version}", *pins], check=True)
        subprocess.run([*pip, str(ROOT)], check=True)  # the package with its dependencies, after PySpark
        after = subprocess.run([str(py), "-c", "import pyspark; print(pyspark.__version__)"], check=True,
                               capture_output=True, text=True).stdout.strip()
        install = {"rc": 0 if after == version else 1, "seconds": round(time.perf_counter() - t, 1),
                   "pyspark_after_install": after}
        env = dict(os.environ, PYSPARK_PYTHON=str(py), PYSPARK_DRIVER_PYTHON=str(py))
        env.pop("SPARK_REMOTE", None)
        subprocess.run([str(py), __file__, "--probe", str(out)], env=env, cwd=str(out), timeout=1800,
                       stdout=subprocess.DEVNULL, stderr=open(out / "stderr.log", "w"))
        res = json.loads((out / "probe.json").read_text())
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        res = {"pyspark": version, "steps": {}, "failure": str(exc)[-300:]}
        install = locals().get("install", {"rc": 1, "error": str(exc)[-300:]})
    res["steps"] = {"install": install, **res["steps"]}
    if not keep:
        shutil.rmtree(venv, ignore_errors=True)
    return res


def compare(results: dict, work: Path) -> None:
    """Max |difference| of each version's embeddings from the newest version's (same engine)."""
    import numpy as np

    newest = list(results)[-1]
    for version, res in results.items():
        res["diff"] = {}
        for engine in ("one-task", "shuffle"):
            mine, ref = work / f"out-{version}" / f"emb-{engine}.npz", work / f"out-{newest}" / f"emb-{engine}.npz"
            if mine.exists() and ref.exists():
                a, b = np.load(mine), np.load(ref)
                same = set(a.files) == set(b.files)
                res["diff"][engine] = max(float(np.abs(a[k] - b[k]).max()) for k in b.files) if same else float("inf")
        a, b = (work / f"out-{version}" / f"emb-{e}.npz" for e in ("one-task", "shuffle"))
        if a.exists() and b.exists():
            x, y = np.load(a), np.load(b)
            res["diff"]["engines"] = max(float(np.abs(x[k] - y[k]).max()) for k in x.files)
        res["same_similar"] = res.get("similar") == results[newest].get("similar")
        res["same_recommend"] = res.get("recommend") == results[newest].get("recommend")


def table(results: dict, command: str) -> str:
    newest = list(results)[-1]
    head = "| step | " + " | ".join(results) + " |"
    lines = [head, "|" + "---|" * (len(results) + 1)]
    for s in STEPS:
        cells = []
        for res in results.values():
            r = res["steps"].get(s)
            cells.append("not run" if r is None else ("ok" if r["rc"] == 0 else "**fails**") + f" ({r['seconds']} s)"
                         if "seconds" in r else ("ok" if r["rc"] == 0 else "**fails**"))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")

    def fmt(x):
        return "n/a" if x is None else ("0" if x == 0 else f"{x:.1e}")

    for engine in ("one-task", "shuffle"):
        lines.append(f"| embeddings ({engine}) vs {newest}, max abs diff | "
                     + " | ".join(fmt(r["diff"].get(engine)) for r in results.values()) + " |")
    lines.append("| one-task vs shuffle, max abs diff | "
                 + " | ".join(fmt(r["diff"].get("engines")) for r in results.values()) + " |")
    lines.append(f"| similar: same neighbours as {newest} | "
                 + " | ".join("yes" if r["same_similar"] else "**no**" for r in results.values()) + " |")
    lines.append(f"| recommend: same lists as {newest} | "
                 + " | ".join("yes" if r["same_recommend"] else "**no**" for r in results.values()) + " |")
    lines.append("| PySpark after `pip install` of the package | "
                 + " | ".join(str(r["steps"]["install"].get("pyspark_after_install", "?")) for r in results.values())
                 + " |")
    return "\n".join(lines)


DOC = """# Compatibility

spark_cleora supports **Python >= 3.10 with PySpark 3.5 to 4.x** (Spark 3.5 LTS: Databricks 15.4/16.4
LTS, EMR 7, Dataproc 2.2; Spark 4.0: Databricks 17.x; and the 4.1-4.3 releases). Outside that range
the command line stops at start-up with one line naming the installed and the supported versions (exit
code 4), and `import spark_cleora` raises the same message. The package does not depend on PySpark: it
uses the Spark the platform has (`pip install 'spark-cleora[local]'` brings one for a laptop).

Calls that differ between these releases have one form each in `spark_cleora/runtime/compat.py`, chosen so that
every release computes the same numbers: the UTF-8 validity check (`is_valid_utf8` from 4.0; a decode
round trip on 3.5), vector norms and cosines (plain `aggregate`/`zip_with` SQL in float64 everywhere,
not 4.3's `vector_*` functions), grouped Arrow functions (`applyInArrow` from 4.0; on 3.5
`repartition` + `sortWithinPartitions` + `mapInArrow` over the same groups), and the graph counts
observed during the build (JSON text, as 4.0's `Observation` returns arrays of structs as raw Java
objects).

## Measured

{date}, {machine}; each release installed into a fresh venv first, then the package with its dependencies
(`pip install <checkout>`), then the `spark-cleora` command line on the bundled sample (classic
`local[2]`): `embed` with each engine (dim 16, 3 iterations, `--init fx`), `emde fit` / `sketch` /
`recommend`, `similar` and `inspect`. Command:

    {command}

{table}

Seconds include starting Spark and were measured on a shared, busy machine: compare them only within
a column. "PySpark after `pip install`" shows that installing the package left the release that was
installed first.

## Notes per release

- **PySpark 3.5** pins NumPy < 2; pyarrow 21 and later need NumPy 2, so pair it with pyarrow <= 20
  (`pip install 'pyspark==3.5.*' 'pyarrow<21'` before the package). pandas 1.5 and pyarrow 14 are the
  oldest releases the package accepts.
- **Spark Connect** is tested on the newest PySpark (`tests/test_connect.py`); Connect on 3.5 needs the
  `spark-connect` server package from Maven and is not part of this table.
- `scripts/test.sh` runs the whole suite on the newest PySpark and, when no test is named, the tests
  marked `compat` (both engines against pycleora, every shim's two forms, similar, inspect and the EMDE
  chain) again on PySpark 3.5.9 in a venv of their own.
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--versions", nargs="+", default=VERSIONS, help="oldest first; the last is the reference")
    ap.add_argument("--out", default=str(ROOT / "docs" / "compatibility.md"))
    ap.add_argument("--work", default=None, help="venvs and outputs (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the venvs")
    ap.add_argument("--machine", default=None, help="machine description for the doc")
    ap.add_argument("--report-only", action="store_true",
                    help="no runs: the doc from --work's results.json (the versions finished so far)")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.probe:
        probe(ns.probe)
        return 0
    work = Path(ns.work or tempfile.mkdtemp(prefix="spark_cleora_compat_"))
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    if ns.report_only:
        results = {v: r for v, r in json.loads((work / "results.json").read_text()).items() if v in ns.versions}
        ns.versions = list(results)
    for v in ([] if ns.report_only else ns.versions):
        print(f"== pyspark {v}", file=sys.stderr, flush=True)
        results[v] = run_version(v, work, ns.keep)
        (work / "results.json").write_text(json.dumps(results, indent=1))
        print(json.dumps(results[v]["steps"]), file=sys.stderr, flush=True)
    compare(results, work)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    command = "python scripts/compat_matrix.py --versions " + " ".join(ns.versions)
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    machine = ns.machine or (f"{os.cpu_count()} cores, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
                             f"Python {platform.python_version()}, {java[0] if java else 'java ?'}")
    doc = DOC.format(date=time.strftime("%Y-%m-%d"), machine=machine, command=command, table=table(results, command))
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(doc)
    print(f"wrote {ns.out} (work: {work})", file=sys.stderr)
    ok = all(s.get("rc") == 0 for r in results.values() for s in r["steps"].values()) and all(
        d <= TOLERANCE for r in results.values() for k, d in r["diff"].items() if k != "engines")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
