"""A trained EMDE model on disk: weights, input and feature specifications, coder id, manifest.

Directory layout (written atomically by :func:`spark_cleora.emde.train.train_model`)::

    MODEL/weights.pt      the network's state_dict (torch.save)
    MODEL/manifest.json   kind "model", coder_id, inputs, features, architecture, training
                          hyperparameters, per-epoch metrics, versions
    MODEL/_emde           the manifest as a one-row Parquet table (read through Spark)

PyTorch is imported only when a model is built or loaded: without it the model commands stop with
the install command (:func:`require_torch`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, MissingExtraError
from ..storage.paths import local_path
from .examples import InputSpec
from .features import FeatureSpec, block_normalize, csr, sketch_inputs

WEIGHTS = "weights.pt"
MANIFEST = "manifest.json"
INSTALL = "pip install 'spark-cleora[model]'"


def require_torch() -> Any:
    """The ``torch`` module, or a one-line error naming the install command."""
    try:
        import torch
    except ImportError:
        raise MissingExtraError(f"the EMDE model needs PyTorch: {INSTALL} (CPU-only build: pip install torch "
                                "--index-url https://download.pytorch.org/whl/cpu)") from None
    return torch


def batch_arrays(tbl: pa.Table, inputs: InputSpec, features: FeatureSpec, width: int, *,
                 with_target: bool = False) -> tuple[np.ndarray, ...]:
    """Network inputs (``x``, ``num``, ``cat``) of a batch of example/prediction rows, and the
    block-wise L1-normalised target with ``with_target``."""
    x = sketch_inputs(csr(tbl, "long", inputs.length), csr(tbl, "short", inputs.length), width)
    num, cat = features.encode(tbl)
    if not with_target:
        return x, num, cat
    tgt = block_normalize(csr(tbl, "tgt", inputs.length).toarray(), width, "l1").astype(np.float32)
    return x, num, cat, tgt


@dataclass
class EmdeModel:
    """A loaded model: :meth:`log_probs` gives each row's predicted log-probability per bucket."""

    path: str
    manifest: dict[str, Any]
    net: Any = field(repr=False)

    @property
    def inputs(self) -> InputSpec:
        return InputSpec(**self.manifest["inputs"])

    @property
    def features(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.manifest["features"])

    @property
    def width(self) -> int:
        return int(self.manifest["architecture"]["width"])

    @property
    def coder_id(self) -> str:
        return str(self.manifest["coder_id"])

    def log_probs(self, tbl: pa.Table, *, batch_size: int = 1024) -> np.ndarray:
        """``float32 (rows, L)``: log softmax per W-block of the network's output."""
        torch = require_torch()
        inputs, features = self.inputs, self.features
        out = []
        with torch.no_grad():
            for lo in range(0, tbl.num_rows, batch_size):
                x, num, cat = batch_arrays(tbl.slice(lo, batch_size), inputs, features, self.width)
                logits = self.net(torch.from_numpy(x), torch.from_numpy(num), torch.from_numpy(cat))
                out.append(torch.log_softmax(logits, dim=-1).reshape(len(x), -1).numpy())
        return np.concatenate(out) if out else np.zeros((0, inputs.length), np.float32)


def network_from_state(manifest: dict[str, Any], state: dict[str, Any]) -> Any:
    """The evaluation-mode network of a manifest with the given weights."""
    require_torch()
    from .network import build_network

    net = build_network(manifest["architecture"])
    net.load_state_dict(state)
    net.eval()
    return net


def load_model(path: str) -> EmdeModel:
    """The model directory written by ``emde train`` (a local path)."""
    torch = require_torch()
    lp = local_path(path)
    if lp is None or not os.path.isfile(os.path.join(lp, MANIFEST)) or not os.path.isfile(os.path.join(lp, WEIGHTS)):
        raise ConfigError(f"{path!r} is not a complete EMDE model directory (no {MANIFEST} and {WEIGHTS})")
    with open(os.path.join(lp, MANIFEST), encoding="utf-8") as fh:
        manifest = json.load(fh)
    if manifest.get("kind") != "model":
        raise ConfigError(f"{path!r} holds EMDE {manifest.get('kind')!r}, expected 'model'")
    state = torch.load(os.path.join(lp, WEIGHTS), map_location="cpu", weights_only=True)
    return EmdeModel(path=path, manifest=manifest, net=network_from_state(manifest, state))
