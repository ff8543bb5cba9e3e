"""A pool of learnable prompts with learnable keys, chosen per input by the cosine between a query and the keys
(L2P: Wang et al., "Learning to Prompt for Continual Learning", CVPR 2022, Sec. 4.2, Eq. 3-5).

`select` returns which prompts each input takes and the cosines of their keys, whose mean over the batch the
method pulls up (Eq. 5's surrogate loss). With `batchwise`, every input of a batch takes the N prompts chosen
most often in it (the PyTorch port of L2P that LAMDA-PILOT runs, `batchwise_prompt: true`): ties between equally
frequent prompts go to the lower index.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def choose(query: torch.Tensor, keys: torch.Tensor, top_k: int, batchwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (B, N) of the keys each query takes, their cosines (B, N)): the N nearest keys by cosine, or with
    `batchwise` the N taken most often in the batch, for every query (ties: the lower index)."""
    q = F.normalize(query, dim=1)
    k = F.normalize(keys, dim=1)
    similarity = q @ k.T  # (B, M)
    idx = similarity.topk(top_k, dim=1).indices
    if batchwise:
        counts = torch.bincount(idx.flatten(), minlength=len(keys))
        # most frequent first, the lower index among equals (a stable sort of the negated counts)
        order = torch.sort(-counts, stable=True).indices[:top_k]
        idx = order.unsqueeze(0).expand(len(query), -1)
    return idx, similarity.gather(1, idx)


class PromptPool(nn.Module):
    def __init__(self, pool_size: int, length: int, dim: int, top_k: int):
        super().__init__()
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"top_k {top_k} must be between 1 and the pool size {pool_size}")
        self.pool_size, self.length, self.top_k = pool_size, length, top_k
        # uniform(-1, 1), as the L2P port initialises both (prompt_init / prompt_key_init: uniform)
        self.prompts = nn.Parameter(torch.empty(pool_size, length, dim).uniform_(-1.0, 1.0))
        self.keys = nn.Parameter(torch.empty(pool_size, dim).uniform_(-1.0, 1.0))

    def select(self, query: torch.Tensor, batchwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices (B, N) of the chosen prompts, cosines (B, N) between each query and its chosen keys)."""
        return choose(query, self.keys, self.top_k, batchwise)

    def tokens(self, idx: torch.Tensor) -> torch.Tensor:
        """The chosen prompts, concatenated per input: (B, N * L, D)."""
        chosen = self.prompts[idx]  # (B, N, L, D)
        return chosen.reshape(len(idx), -1, chosen.shape[-1])
