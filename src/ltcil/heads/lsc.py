"""PODNet's Local Similarity Classifier (Douillard et al., ECCV 2020, Sec. 3.2, Eq. 5-6): K proxies per class,
each compared to the feature by cosine; a class's similarity is the softmax-weighted mean of its proxies'
cosines, scaled by a learned eta. Rows are stored class by class (class c: rows c*K .. c*K+K-1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..clustering import kmeans_cosine
from .cosine import CosineLinear


class LSCHead(CosineLinear):
    def __init__(self, in_features: int, proxies: int = 10, num_classes: int = 0):
        self.proxies = proxies
        super().__init__(in_features, sigma=True)
        self.add_classes(num_classes)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0] // self.proxies

    def add_classes(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"cannot add a negative number of classes ({n})")
        if n:
            self._resize(self.weight.shape[0] + n * self.proxies)

    def class_similarities(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 5-6 before the scale: sum_k softmax_k(s_ck) s_ck, s_ck the cosine with proxy k of class c."""
        weight = self.weight
        if self.frozen:  # rows (all proxies of the old classes) that pass no gradient
            weight = torch.cat([weight[: self.frozen].detach(), weight[self.frozen:]])
        cos = F.linear(F.normalize(x, dim=1), F.normalize(weight, dim=1))
        cos = cos.view(len(x), -1, self.proxies)
        return (F.softmax(cos, dim=2) * cos).sum(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sigma * self.class_similarities(x)

    @torch.no_grad()
    def imprint_proxies(self, class_ids, features: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> None:
        """New classes' proxies from k-means (cosine) centres of their features, scaled to the old rows' mean norm
        (PodNet's weight imprinting of its proxies)."""
        old = torch.ones(self.weight.shape[0], dtype=torch.bool, device=self.weight.device)
        for c in class_ids:
            old[c * self.proxies:(c + 1) * self.proxies] = False
        scale = self.weight[old].norm(dim=1).mean() if old.any() else self.weight.new_tensor(1.0)
        for c in class_ids:
            feats = F.normalize(features[labels == c].float(), dim=1)
            if len(feats) == 0:
                continue
            assign = kmeans_cosine(feats, self.proxies, gen)
            for k in range(self.proxies):
                members = feats[assign == k] if (assign == k).any() else feats
                self.weight[c * self.proxies + k] = F.normalize(members.mean(0), dim=0) * scale

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, proxies={self.proxies}"
