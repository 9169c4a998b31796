"""The EMDE network (PyTorch): sketches and features in, one distribution per W-block out.

The paper's residual feed-forward network (``anonymous-kdd2021/emde`` ``resnetNetwork``, booking
solution): ``p = proj(x)``; ``a = BN(LeakyReLU(L1(x)))``; then for every further hidden layer
``a = BN(LeakyReLU(Li(a) + p))``; ``logits = Lout(a)`` viewed as ``(blocks, W)``, softmax inside
each block (contiguous W-blocks, as the codes are laid out). Loss: cross-entropy between the
block-wise L1-normalised target and the predicted block distributions, summed over a block's
buckets and averaged over blocks and rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class EmdeNet(nn.Module):
    """Residual feed-forward network from sketches + features to block-wise logits."""

    def __init__(self, *, sketch_in: int, n_numeric: int, cardinalities: list[int], embedding_dim: int,
                 hidden: int, layers: int, n_blocks: int, width: int) -> None:
        super().__init__()
        self.n_blocks, self.width = n_blocks, width
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim) for c in cardinalities)
        in_dim = sketch_in + n_numeric + embedding_dim * len(cardinalities)
        self.proj = nn.Linear(in_dim, hidden)
        self.hidden = nn.ModuleList([nn.Linear(in_dim, hidden)] + [nn.Linear(hidden, hidden) for _ in range(layers - 1)])
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden) for _ in range(layers))
        self.out = nn.Linear(hidden, n_blocks * width)

    def forward(self, x: torch.Tensor, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        z = torch.cat([x, num, *[emb(cat[:, k]) for k, emb in enumerate(self.embeddings)]], dim=1)
        p = self.proj(z)
        a = self.norms[0](F.leaky_relu(self.hidden[0](z)))
        for lin, bn in zip(self.hidden[1:], self.norms[1:]):
            a = bn(F.leaky_relu(lin(a) + p))
        return self.out(a).view(-1, self.n_blocks, self.width)


def block_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows and blocks of ``-sum_w target * log softmax(logits)`` (targets ``(B, blocks, W)``)."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def build_network(h: dict[str, Any]) -> EmdeNet:
    """The network described by a model's hyperparameters (``architecture`` of the manifest)."""
    return EmdeNet(sketch_in=h["sketch_in"], n_numeric=h["n_numeric"], cardinalities=list(h["cardinalities"]),
                   embedding_dim=h["embedding_dim"], hidden=h["hidden"], layers=h["layers"],
                   n_blocks=h["n_blocks"], width=h["width"])
