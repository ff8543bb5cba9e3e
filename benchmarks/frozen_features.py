"""What a frozen pre-trained backbone costs and what computing its features once saves (issue 30 item 2).

On ltcil's ViT (random weights: speed does not depend on them), CIFAR-sized uint8 images resized to the model's
input size on the device, as a run feeds them:

  feature pass   images/s of the batched, no-grad embedding pass SimpleCIL and RanPAC run once per task
                 (TaskContext.features), and its peak memory
  linear probe   `--epochs` epochs of a linear classifier on those images: over features computed once (what
                 ltcil does for frozen backbones) against re-running the frozen backbone every epoch; the
                 speed-up of the first
  prompt step    images/s and peak memory of one training step of L2P (methods/l2p.py at PILOT's pool: the
                 frozen query pass, then 5 of 10 prompts of length 5 before the first block; the frozen
                 network's backward reaches the prompts and keys)

    python benchmarks/frozen_features.py --model vit_tiny_patch16_224 --images 512 --epochs 3        # CPU
    python benchmarks/frozen_features.py --model vit_base_patch16_224 --device cuda --images 8192 --amp
Prints one JSON line per measurement. Not run by the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import time

import torch
import torch.nn.functional as F

from ltcil.backbones import build_backbone
from ltcil.config import BackboneConfig


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def batches(images: torch.Tensor, size: int):
    for start in range(0, len(images), size):
        yield images[start:start + size]


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255).sub_(0.5).div_(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_tiny_patch16_224")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3, help="linear-probe epochs")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_backbone(BackboneConfig(name=args.model, input_size=224), 3, 32).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, args.classes, (args.images,), device=device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()

    base = {"model": args.model, "device": args.device, "amp": args.amp, "batch_size": args.batch_size}

    def embed() -> torch.Tensor:
        with torch.no_grad(), autocast():
            return torch.cat([model(to_float(x)).float() for x in batches(images, args.batch_size)])

    embed_small = images[: args.batch_size]
    with torch.inference_mode():
        model(to_float(embed_small))  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    feats = embed()
    sync(device)
    pass_s = time.perf_counter() - t0
    print(json.dumps({**base, "measure": "feature pass", "images": args.images,
                      "images_per_second": round(args.images / pass_s, 1), "peak_gib": round(peak_gib(device), 3)}),
          flush=True)

    def probe(features_each_epoch: bool) -> float:
        head = torch.nn.Linear(model.num_features, args.classes).to(device)
        opt = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
        sync(device)
        t = time.perf_counter()
        cached = None if features_each_epoch else embed()
        for _ in range(args.epochs):
            f_all = embed() if features_each_epoch else cached
            for start in range(0, args.images, args.batch_size):
                loss = F.cross_entropy(head(f_all[start:start + args.batch_size]),
                                       labels[start:start + args.batch_size])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        sync(device)
        return time.perf_counter() - t

    once, every = probe(False), probe(True)
    print(json.dumps({**base, "measure": "linear probe", "epochs": args.epochs, "features_once_s": round(once, 2),
                      "backbone_every_epoch_s": round(every, 2), "speedup": round(every / once, 2)}), flush=True)

    from ltcil.layers.prompt_pool import PromptPool
    from ltcil.methods.l2p import PromptedViT

    prompted = PromptedViT(model, PromptPool(10, 5, model.num_features, 5), "always", "prompt").to(device)
    head = torch.nn.Linear(model.num_features, args.classes).to(device)
    opt = torch.optim.Adam([*prompted.pool.parameters(), *head.parameters()], lr=0.001875)
    x, y = images[: args.batch_size], labels[: args.batch_size]

    def step() -> None:
        with autocast():
            feats, cosines = prompted.forward_prompted(to_float(x))
            loss = F.cross_entropy(head(feats).float(), y) - 0.1 * cosines.float().sum() / len(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = max(2, 1024 // args.batch_size) if device.type == "cuda" else 2
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    print(json.dumps({**base, "measure": "prompt step", "steps": steps,
                      "images_per_second": round(steps * len(x) / (time.perf_counter() - t0), 1),
                      "peak_gib": round(peak_gib(device), 3)}), flush=True)


if __name__ == "__main__":
    main()
