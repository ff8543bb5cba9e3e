"""L2P, Learning to Prompt (Wang et al., "Learning to Prompt for Continual Learning", CVPR 2022): a frozen
pre-trained ViT and a pool of M learnable prompts with learnable keys (Sec. 4.2). An image's query is the frozen
model's class token without any prompt; the N prompts whose keys are the nearest by cosine (Eq. 3) are prepended
to its tokens, and the classifier reads the mean of the prompt tokens' outputs. Loss (Eq. 5): cross-entropy over
the task's own classes (the old classes' logits masked out) minus lambda times the chosen keys' cosines to the
query, summed over the N keys and averaged over the batch (the surrogate that pulls keys towards their queries).

As LAMDA-PILOT runs it (models/l2p.py with exps/l2p.json, on backbone/vit_l2p.py and backbone/prompt.py), which
the config l2p_vit_b16_cifar100_b0inc10 names key by key:
- M = 10 prompts of length 5, N = 5 chosen, prompts and keys initialised uniform(-1, 1);
- batchwise selection: every image of a batch takes the N prompts chosen most often in it, in training and in
  evaluation (`method.batchwise: always`; `train` keeps it to training, `never` selects per image). At test time a
  prediction then depends on its batch: PILOT evaluates class-sorted test images in batches of its training batch
  size (16), nearly one class a batch; ltcil evaluates each task's test images in archive order in batches of
  eval.batch_size, which follows PILOT's rule but not its batches (`train` makes predictions batch-independent);
- the prompts enter after the class token and carry the class token's position embedding (vit_l2p.py widens the
  position embedding that way when it loads pre-trained weights);
- a timm Linear head (trunc-normal 0.02, zero bias: head.init trunc_normal), trained with the prompts and keys by
  Adam at 0.001875 (0.03 x 16 / 256), batch 16, 5 epochs a task, constant lr, no weight decay, a new optimiser
  each task (the engine builds one per task);
- the query model is the same frozen ViT run without prompts (PILOT keeps a second copy of it).
The backbone never changes: checkpoints keep the prompts, keys and head with a digest of the backbone (as
methods/frozen_base.py does), not the backbone; evaluation computes each test image's query once per run
(query_cache), leaving one prompted pass per image at later evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..evaluation.feature_cache import FeatureCache
from ..heads.linear import IncrementalLinear
from ..layers.prompt_pool import PromptPool
from ..registry import register_method
from .base import IncrementalNet, Method
from .frozen_base import AroundFrozenViT, FrozenBackboneMethod, freeze

BATCHWISE = ("always", "train", "never")
READOUTS = ("prompt", "token")


@dataclass
class L2POptions:
    pool_size: int = 10  # M (Sec. 5.1; PILOT "size")
    length: int = 5  # L_p, tokens per prompt (PILOT "length")
    top_k: int = 5  # N, prompts per image (PILOT "top_k")
    pull_weight: float = 0.1  # lambda of Eq. 5 (PILOT "pull_constraint_coeff")
    batchwise: str = "always"  # see the module docstring (PILOT "batchwise_prompt: true")
    readout: str = "prompt"  # the classifier's input: mean of the prompt tokens' outputs | the class token


class PromptedViT(nn.Module):
    """A frozen ViT with a prompt pool; forward_features(x) is what the classifier reads."""

    def __init__(self, vit: nn.Module, pool: PromptPool, batchwise: str, readout: str):
        super().__init__()
        self.vit = freeze(vit)
        self.pool = pool
        self.batchwise, self.readout = batchwise, readout
        self.num_features = vit.num_features

    def train(self, mode: bool = True):
        super().train(mode)
        self.vit.eval()  # the frozen model's own layers never switch to training behaviour
        return self

    @torch.no_grad()
    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(x)

    def forward_prompted(self, x: torch.Tensor, query=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(classifier input (B, D), cosines (B, N) of the chosen keys to the query); `query`: the frozen model's
        class token of x when known (evaluation's cache)."""
        batchwise = self.batchwise == "always" or (self.batchwise == "train" and self.training)
        idx, cosines = self.pool.select(self.query(x) if query is None else query, batchwise)
        prompts = self.pool.tokens(idx) + self.vit.pos_embed[:, :1]  # the class token's position embedding
        tokens = self.vit.forward_tokens(x, prompts={0: prompts})
        if self.readout == "prompt":
            return tokens[:, 1 : 1 + prompts.shape[1]].mean(1), cosines
        return tokens[:, 0], cosines

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_prompted(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


@register_method("l2p")
class L2P(AroundFrozenViT, Method):
    Options = L2POptions
    old_classes = 0  # classes before the current task (their logits are masked in training)

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        self.query_cache = FeatureCache()  # the frozen query of each evaluation image, computed once per run

    @torch.no_grad()
    def predict_with_query(self, x: torch.Tensor, query: torch.Tensor) -> dict:
        """predict() with the query already known: one prompted pass instead of two."""
        return {"logits": self.model.head(self.model.backbone.forward_prompted(x, query)[0])}

    def query_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.backbone.vit.forward_features(x)

    @classmethod
    def check(cls, options, cfg) -> None:
        FrozenBackboneMethod.check(options, cfg)  # the random-weights warning
        if options.batchwise not in BATCHWISE:
            raise ConfigError(f"method.batchwise: {options.batchwise!r} is not one of {', '.join(BATCHWISE)}.")
        if options.readout not in READOUTS:
            raise ConfigError(f"method.readout: {options.readout!r} is not one of {', '.join(READOUTS)}.")
        if not 1 <= options.top_k <= options.pool_size or options.length < 1:
            raise ConfigError(f"method.top_k ({options.top_k}) must be between 1 and method.pool_size "
                              f"({options.pool_size}), method.length ({options.length}) >= 1.")
        if options.pull_weight < 0:
            raise ConfigError(f"method.pull_weight: {options.pull_weight!r} must be >= 0.")

    @classmethod
    def build_network(cls, networks, options, cfg):
        vit = networks.backbone()
        if not hasattr(vit, "forward_tokens"):
            raise ConfigError(f"method l2p prepends prompts to a ViT's tokens; backbone {cfg.backbone.name!r} has "
                              "none (use ltcil's ViTs: vit_tiny/small/base_patch16_224, vit_micro).")
        pool = PromptPool(options.pool_size, options.length, vit.num_features, options.top_k)
        backbone = PromptedViT(vit, pool, options.batchwise, options.readout)
        return IncrementalNet(backbone, IncrementalLinear(vit.num_features, init=cfg.head.init))

    def training_step(self, x, y):
        feats, cosines = self.model.backbone.forward_prompted(x)
        logits = self.model.head(feats)
        if self.old_classes:  # Sec. 4.3 / PILOT: the old classes' logits masked, CE over the task's own
            logits = logits.clone()
            logits[:, : self.old_classes] = float("-inf")
        ce = F.cross_entropy(logits, y)
        pull = cosines.sum() / len(x)  # Eq. 5's surrogate, as the port computes it (reduce_sim)
        return {"loss": ce - self.options.pull_weight * pull, "ce": ce, "key_similarity": pull.detach()}

    def begin_task(self, task, ctx):
        self.old_classes = self.model.num_classes
        super().begin_task(task, ctx)
