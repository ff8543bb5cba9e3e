"""APER, AdaPt and mERge (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models:
Generalizability and Adaptivity are All You Need", IJCV 2024, Sec. 4.2; first published as ADAM): the pre-trained
ViT is adapted on the first task only, with parameter-efficient modules (here AdaptFormer's parallel adapters:
Chen et al., NeurIPS 2022), then frozen; every class's classifier row is the mean of its training images' merged
embedding, [pre-trained ViT's; adapted ViT's] (Eq. 9), compared by cosine. Later tasks train nothing.
`method.tuning` picks the parameter-efficient modules (layers/vit_tuning.py; the paper's Sec. 4.2 variants, PILOT's
aper_adapter / aper_ssf / aper_vpt): adapter (default), ssf, vpt_deep, vpt_shallow.

As LAMDA-PILOT runs its adapter variant (models/aper_adapter.py, exps/aper_aperpter.json, backbone/vit_adapter.py),
which the config aper_adapter_vit_b16_cifar100_b0inc10 names key by key:
- an adapter beside every block's MLP, fed the block's residual stream after attention: up(ReLU(down(x))) x 0.1,
  bottleneck 64, dropout 0.1 on the bottleneck in training, down Kaiming-uniform (a = sqrt 5) and up zero with zero
  biases (its "lora" init), no layer norm;
- first task: the adapters and a cosine classifier with a learned scale (PILOT's CosineLinear) trained by SGD
  (momentum 0.9, lr 0.01, weight decay 5e-4) for 20 epochs at batch 48, cosine lr to 0;
- prototypes from the un-augmented training images, the merged embedding 2 x 768 wide, scored by cosine.
SSF and VPT as PILOT's exps/aper_ssf.json / aper_vpt_{deep,shallow}.json: the same first-task recipe, 5 prompt
tokens for VPT (PILOT starts them at zero: `method.vpt_init: zeros` in its configs; the paper's Xavier init is the
default). One ViT is kept: the pre-trained embedding is the same network run without its tuning modules (PILOT
holds two copies). After the first task nothing changes, so evaluation embeds each test image once per run
(frozen_base). The first task's training is shared with RanPAC's Phase 1 (first_task_tuning.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..heads.cosine import CosineLinear
from ..registry import register_method
from .first_task_tuning import FirstTaskTuning, TunedNet, TuningOptions, check_tuning, tuned_backbone
from .frozen_base import AroundFrozenViT, FrozenBackboneMethod
from .simplecil import set_prototypes


@dataclass
class APEROptions(TuningOptions):
    pass


@register_method("aper")
class APER(FirstTaskTuning, AroundFrozenViT, FrozenBackboneMethod):
    Options = APEROptions

    @classmethod
    def check(cls, options, cfg) -> None:
        super().check(options, cfg)
        check_tuning(options)

    @classmethod
    def build_network(cls, networks, options, cfg):
        backbone = tuned_backbone(networks.backbone(), options, cfg, merge=True)
        head = CosineLinear(backbone.num_features, sigma=False).requires_grad_(False)
        return TunedNet(backbone, head, CosineLinear(backbone.vit.num_features, sigma=True))

    def end_task(self, task, ctx) -> None:  # Sec. 4.2: adapted on the first task only, then prototypes (Eq. 9)
        if task.index == 0:
            self.end_first_task()
        set_prototypes(self.model.head, *self.task_features(task, ctx), task.classes)
