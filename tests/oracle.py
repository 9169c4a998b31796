"""The reference: pycleora, run exactly as its README's baseline loop.

pycleora 3.2.1 (FxHash init) is a test dependency and runs in-process. pycleora 2.0.0 (SipHash init)
cannot share an environment with 3.x, so it runs in a second interpreter named by
``SPARK_CLEORA_PYCLEORA2_PYTHON`` (``.ci/run`` creates one); tests needing it skip without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import numpy as np

PYCLEORA2_PYTHON = os.environ.get("SPARK_CLEORA_PYCLEORA2_PYTHON")

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from pycleora import SparseMatrix
    req = json.load(sys.stdin)
    out = []
    for job in req:
        g = SparseMatrix.from_iterator(iter(job["rows"]), job["columns"],
                                       hyperedge_trim_n=job["trim"], num_workers=1)
        e = g.initialize_deterministically(job["dim"], job["seed"])
        f = g.left_markov_propagate if job["markov"] == "left" else g.symmetric_markov_propagate
        for _ in range(job["iterations"]):
            e = f(e, num_workers=1)
            e = e / np.maximum(np.linalg.norm(e, ord=2, axis=-1, keepdims=True), 1e-10)
        out.append({"ids": list(g.entity_ids), "emb": e.tolist(),
                    "degrees": np.asarray(g.entity_degrees).tolist()})
    json.dump(out, sys.stdout)
    """
)


def reference(rows, columns, *, dim, iterations, seed=0, markov="left", init="fx", trim=16):
    """{entity: (embedding float32[dim], degree)} from pycleora (3.2.1 for fx, 2.0.0 for siphash)."""
    job = {"rows": list(rows), "columns": columns, "dim": dim, "iterations": iterations, "seed": seed,
           "markov": markov, "trim": trim}
    if init == "fx":
        import pycleora

        g = pycleora.SparseMatrix.from_iterator(iter(job["rows"]), columns, hyperedge_trim_n=trim, num_workers=1)
        e = g.initialize_deterministically(dim, seed)
        f = g.left_markov_propagate if markov == "left" else g.symmetric_markov_propagate
        for _ in range(iterations):
            e = f(e, num_workers=1)
            e = e / np.maximum(np.linalg.norm(e, ord=2, axis=-1, keepdims=True), 1e-10)
        ids, emb, deg = list(g.entity_ids), np.asarray(e), np.asarray(g.entity_degrees)
    else:
        if not PYCLEORA2_PYTHON:
            raise RuntimeError("SPARK_CLEORA_PYCLEORA2_PYTHON is not set")
        res = subprocess.run([PYCLEORA2_PYTHON, "-c", _SCRIPT], input=json.dumps([job]), capture_output=True,
                             text=True, check=True)
        r = json.loads(res.stdout)[0]
        ids, emb, deg = r["ids"], np.asarray(r["emb"], dtype=np.float32), np.asarray(r["degrees"])
    return {name: (emb[i], float(deg[i])) for i, name in enumerate(ids)}


def random_hyperedges(n_lines: int, n_entities: int, *, max_size: int = 16, seed: int = 0,
                      names=None) -> list[list[str]]:
    """Seeded random hyperedges (repeats allowed inside one), with unicode entity names."""
    rng = np.random.default_rng(seed)
    names = names or [f"{p}{i}" for i, p in zip(range(n_entities), _prefixes(n_entities))]
    # a skewed popularity, so degrees differ a lot
    p = 1.0 / np.arange(1, n_entities + 1) ** 0.8
    p /= p.sum()
    out = []
    for _ in range(n_lines):
        k = int(rng.integers(1, max_size + 1))
        out.append([names[j] for j in rng.choice(n_entities, size=k, p=p)])
    return out


def _prefixes(n: int):
    base = ["item-", "ürün-", "商品", "🙂x", "ĸ_"]
    return [base[i % len(base)] for i in range(n)]
