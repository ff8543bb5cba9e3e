"""Evaluation features of a frozen backbone, computed once per run (issue: a frozen ViT-B/16 re-ran on every seen
class's test images after every task, 5.5x the images of one pass over ten tasks).

A method whose backbone never changes (methods/frozen_base.py) keeps one cache; evaluation asks it for the
features of each task's test (or validation) images, which it computes on the first request, in batches taken
from that task's own index list, and returns from memory afterwards. The batches depend only on the list, so a
resumed run, whose cache starts empty, computes bit-identical features to an uninterrupted one. It holds
features, not images: 10,000 CIFAR test images of a ViT-B/16 are 31 MB (float32, on the evaluation device's host).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


class FeatureCache:
    def __init__(self):
        self._store: dict = {}  # (split, digest of the index list) -> (features on the CPU, labels on the CPU)
        self.computed = 0  # images passed through the backbone, for tests and the benchmark
        self.served = 0  # images answered from memory

    @staticmethod
    def key(split: str, indices: np.ndarray) -> tuple:
        idx = np.ascontiguousarray(np.asarray(indices, dtype=np.int64))
        return split, len(idx), hashlib.sha1(idx.tobytes()).hexdigest()

    @torch.inference_mode()
    def features(self, embed, data, split: str, indices: np.ndarray, batch_size: int):
        """(features, labels) of the un-augmented images `indices` of `split`, on the device `embed` runs on."""
        key = self.key(split, indices)
        if key not in self._store:
            feats, labels = [], []
            for idx in data.index_batches(indices, batch_size, shuffle=False, split=split):
                x, y = data.batch(split, idx)
                feats.append(embed(x).float().cpu())
                labels.append(y.cpu())
            empty = (torch.zeros(0, 0), torch.zeros(0, dtype=torch.long))
            self._store[key] = (torch.cat(feats), torch.cat(labels)) if feats else empty
            self.computed += len(indices)
        else:
            self.served += len(indices)
        return self._store[key]

    def clear(self) -> None:
        self._store.clear()
