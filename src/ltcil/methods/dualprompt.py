"""DualPrompt (Wang et al., "DualPrompt: Complementary Prompting for Rehearsal-free Continual Learning", ECCV
2022): a frozen pre-trained ViT with two kinds of prefix prompts (Sec. 4.2, prefix-tuning: learned keys and
values prepended inside a block's attention). The G(eneral)-prompt, shared by all tasks, enters the first blocks;
the E(xpert)-prompts, one per task in a pool with learnable keys, enter the next blocks. In training task t uses
its own E-prompt and pulls its key towards the task's queries (Eq. 3-4); at test time an image takes the E-prompt
whose key is nearest its query, the frozen model's class token. The classifier reads the class token. Loss: CE
over the task's own classes (the old ones masked) minus lambda times the chosen key's cosine to the query.

As LAMDA-PILOT runs it (models/dualprompt.py, exps/dualprompt.json, backbone/vit_dualprompt.py and EPrompt in
backbone/prompt.py), which the config dualprompt_vit_b16_cifar100_b0inc10 names key by key:
- G-prompt of length 5 in blocks 0-1, E-prompts of length 5 in blocks 2-4, a pool of 10 with keys, one chosen
  (top_k 1), all initialised uniform(-1, 1); prefix keys and values laid out per head as the model's own;
- at test time the choice is batchwise (the E-prompt chosen most often in the batch, for every image:
  `batchwise_prompt: true`; method.batchwise);
- before task t trains, E-prompt t starts as a copy of E-prompt t - 1 (`shared_prompt_pool: true`), keys not;
- a timm Linear head (trunc-normal 0.02) trained with the prompts and keys by Adam at 0.001, batch 24, 5 epochs,
  constant lr, no weight decay, a new optimiser each task.
Beyond the pool (task 11 of a 10-prompt pool) training chooses by the keys as testing does, as PILOT's mask does.
[BUG in the reference, not reproduced] PILOT's EPrompt (from the DualPrompt PyTorch port) turns the chosen prompts
from (layers, key|value, batch, ...) into (layers, batch, key|value, ...) with a reshape, not a permute: the first
half of every batch takes the E-prompt's key half as both its key and value prefix, the second half its value half
(checked on PILOT's class with a 4-image batch). ltcil gives every image the paper's prefixes (keys to keys,
values to values); G-prompts are indexed correctly there and here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..heads.linear import IncrementalLinear
from ..layers.prompt_pool import choose
from ..registry import register_method
from .base import IncrementalNet
from .frozen_base import FrozenBackboneMethod, freeze
from .l2p import BATCHWISE, L2P


@dataclass
class DualPromptOptions:
    g_length: int = 5  # PILOT "g_prompt_length"
    g_layers: list = field(default_factory=lambda: [0, 1])  # PILOT "g_prompt_layer_idx"
    e_length: int = 5  # PILOT "length"
    e_layers: list = field(default_factory=lambda: [2, 3, 4])  # PILOT "e_prompt_layer_idx"
    pool_size: int = 10  # PILOT "size": one E-prompt per task
    pull_weight: float = 0.1  # PILOT "pull_constraint_coeff"
    batchwise: str = "always"  # the test-time choice, see l2p.py (PILOT "batchwise_prompt: true")
    copy_previous: bool = True  # E-prompt t starts from E-prompt t - 1 (PILOT "shared_prompt_pool")


class DualPromptViT(nn.Module):
    """A frozen ViT with a G-prompt and a pool of E-prompts as attention prefixes; forward_features(x) is the
    class token the classifier reads."""

    def __init__(self, vit: nn.Module, options: DualPromptOptions):
        super().__init__()
        self.vit = freeze(vit)
        d = vit.num_features
        self.g_layers, self.e_layers = list(options.g_layers), list(options.e_layers)
        self.batchwise = options.batchwise
        # rows (layer, key | value) of the G-prompt, (layer, key | value, pool entry) of the E-prompts, each
        # (length, D) with D laid out head by head, as the attention splits it; kept 3-D so that a channels-last
        # placement of the network leaves them as they are
        self.pool_size = options.pool_size
        self.g_prompt = nn.Parameter(torch.empty(len(self.g_layers) * 2, options.g_length, d).uniform_(-1.0, 1.0))
        self.e_prompts = nn.Parameter(torch.empty(len(self.e_layers) * 2 * options.pool_size, options.e_length,
                                                  d).uniform_(-1.0, 1.0))
        self.keys = nn.Parameter(torch.empty(options.pool_size, d).uniform_(-1.0, 1.0))
        self.task_index = 0  # set by the method: the E-prompt task t trains
        self.num_features = d

    def train(self, mode: bool = True):
        super().train(mode)
        self.vit.eval()
        return self

    def forward_prompted(self, x: torch.Tensor, query=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(class token after the final norm (B, D), cosine (B, 1) of the chosen key to the query); `query`: the
        frozen model's class token of x when known."""
        if query is None:
            with torch.no_grad():
                query = self.vit.forward_features(x)
        if self.training and self.task_index < self.keys.shape[0]:  # the task's own E-prompt
            idx = torch.full((len(x), 1), self.task_index, dtype=torch.long, device=x.device)
            cosines = torch.nn.functional.cosine_similarity(query, self.keys[self.task_index].unsqueeze(0),
                                                            dim=1).unsqueeze(1)
        else:
            batchwise = self.batchwise == "always" or (self.batchwise == "train" and self.training)
            idx, cosines = choose(query, self.keys, 1, batchwise)
        prefixes = {}
        for i, layer in enumerate(self.g_layers):
            k, v = self.g_prompt[2 * i], self.g_prompt[2 * i + 1]
            prefixes[layer] = (k.expand(len(x), -1, -1), v.expand(len(x), -1, -1))
        for i, layer in enumerate(self.e_layers):
            prefixes[layer] = (self.e_prompts[self.e_row(i, 0) + idx[:, 0]],  # (B, length, D)
                               self.e_prompts[self.e_row(i, 1) + idx[:, 0]])
        return self.vit.forward_tokens(x, prefixes=prefixes)[:, 0], cosines

    def e_row(self, layer: int, kv: int, entry: int = 0) -> int:
        """Row of e_prompts holding E-prompt `entry`'s keys (kv 0) or values (kv 1) for its `layer`-th block."""
        return (2 * layer + kv) * self.pool_size + entry

    def e_prompt(self, entry: int) -> torch.Tensor:
        """E-prompt `entry` across its blocks: (layers, 2, length, D)."""
        rows = [self.e_row(i, kv, entry) for i in range(len(self.e_layers)) for kv in (0, 1)]
        return self.e_prompts[rows].view(len(self.e_layers), 2, *self.e_prompts.shape[1:])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_prompted(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


@register_method("dualprompt")
class DualPrompt(L2P):
    Options = DualPromptOptions

    @classmethod
    def check(cls, options, cfg) -> None:
        FrozenBackboneMethod.check(options, cfg)  # the random-weights warning
        if options.batchwise not in BATCHWISE:
            raise ConfigError(f"method.batchwise: {options.batchwise!r} is not one of {', '.join(BATCHWISE)}.")
        layers = list(options.g_layers) + list(options.e_layers)
        if len(set(layers)) != len(layers) or any(not isinstance(i, int) or i < 0 for i in layers):
            raise ConfigError(f"method.g_layers {options.g_layers} and method.e_layers {options.e_layers} must be "
                              "distinct block indices >= 0.")
        if options.g_length < 1 or options.e_length < 1 or options.pool_size < 1 or options.pull_weight < 0:
            raise ConfigError("method.g_length, method.e_length and method.pool_size must be >= 1, "
                              "method.pull_weight >= 0.")

    @classmethod
    def build_network(cls, networks, options, cfg):
        vit = networks.backbone()
        if not hasattr(vit, "forward_tokens"):
            raise ConfigError(f"method dualprompt prefixes a ViT's attention; backbone {cfg.backbone.name!r} has "
                              "none (use ltcil's ViTs: vit_tiny/small/base_patch16_224, vit_micro).")
        depth = len(vit.blocks)
        deepest = max(list(options.g_layers) + list(options.e_layers))
        if deepest >= depth:
            raise ConfigError(f"method dualprompt: block {deepest} of method.g_layers / method.e_layers does not "
                              f"exist in {cfg.backbone.name} ({depth} blocks).")
        return IncrementalNet(DualPromptViT(vit, options), IncrementalLinear(vit.num_features, init=cfg.head.init))

    def begin_task(self, task, ctx):  # (a resumed task runs this before its saved prompts are loaded)
        super().begin_task(task, ctx)
        net = self.model.backbone
        net.task_index = task.index
        if self.options.copy_previous and 0 < task.index < net.pool_size:
            with torch.no_grad():
                for i in range(len(net.e_layers)):
                    for kv in (0, 1):
                        net.e_prompts[net.e_row(i, kv, task.index)] = net.e_prompts[net.e_row(i, kv, task.index - 1)]
