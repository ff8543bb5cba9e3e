"""CUDA paths: device-resident data and augmentation on the GPU, bf16 autocast, channels_last, fused SGD, a
compiled step, and a whole run with resume. They skip without a GPU (benchmarks/gpu_check.py runs them first
on a GPU machine); the compiled-step check on the CPU runs everywhere."""

import shutil

import pytest
import torch
from helpers import run_tiny, tiny_config

from ltcil.data.augment import AugmentSpec
from ltcil.data.loader import DeviceData
from ltcil.engine.optim import build_optimizer
from ltcil.engine.runner import Experiment

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def _dataset():
    from ltcil.config import DataConfig
    from ltcil.registry import get

    return get("dataset", "synthetic")(DataConfig(name="synthetic", num_classes=4, images_per_class=16,
                                                  image_size=8))


@cuda
def test_device_batches_on_gpu_equal_the_cpu_ones_without_augmentation():
    ds = _dataset()
    maps = {name: split.labels for name, split in ds.splits()}
    cpu, gpu = DeviceData(ds, maps, torch.device("cpu")), DeviceData(ds, maps, torch.device("cuda"), True)
    idx = torch.arange(10)
    x_cpu, y_cpu = cpu.batch("train", idx)
    x_gpu, y_gpu = gpu.batch("train", idx)
    assert torch.allclose(x_cpu, x_gpu.cpu(), atol=1e-5) and torch.equal(y_cpu, y_gpu.cpu())
    gen = torch.Generator(device="cuda").manual_seed(0)
    x_aug, _ = gpu.batch("train", idx, AugmentSpec(crop_padding=2, flip=True, color_jitter=0.2), gen)
    assert x_aug.is_cuda and x_aug.is_contiguous(memory_format=torch.channels_last) and torch.isfinite(x_aug).all()


@cuda
def test_fused_sgd_and_bf16_autocast_step():
    from ltcil.config import TrainConfig

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.LazyLinear(4)).cuda()
    model(torch.randn(2, 3, 8, 8, device="cuda"))
    opt = build_optimizer(model.parameters(), TrainConfig(), 0.1, torch.device("cuda"))
    assert opt.defaults.get("fused")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(torch.randn(4, 3, 8, 8, device="cuda"))
        loss = torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3], device="cuda"))
    assert out.dtype == torch.bfloat16
    loss.backward()
    opt.step()
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


@cuda
@pytest.mark.parametrize("name", ["icarl", "bic", "lwf"])
def test_run_on_gpu_with_amp_and_resume(name, tmp_path):
    extra = [f"method.name={name}", "device=cuda", "train.amp=true", "train.channels_last=true",
             "method.bias_epochs=2" if name == "bic" else "train.flip=true"]
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    full = run_tiny(tmp_path / "full", *extra)
    assert len(full["accuracy"]) == 3 and full["device"].startswith("cuda")
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "full", crashed)
    (crashed / "checkpoints" / "task_002.pt").unlink()
    exp = Experiment(tiny_config(*extra), crashed)
    assert exp.restore() and exp.next_task == 2
    resumed = exp.run()
    assert resumed["accuracy"][:2] == full["accuracy"][:2]  # read back from the checkpoints
    # the third task trains again: GPU reductions may reorder, so allow one test image (of 36) either way
    assert abs(resumed["accuracy"][2] - full["accuracy"][2]) <= 100 / 36 + 1e-6


@cuda
def test_compiled_step_with_cuda_graphs_runs_every_task(tmp_path):
    results = run_tiny(tmp_path, "method.name=icarl", "device=cuda", "train.compile=reduce-overhead")
    assert len(results["accuracy"]) == 3


def test_compiled_step_gives_the_eager_results(tmp_path):
    # trace-only compilation runs the same operations: a teacher snapshot and a grown head are traced anew
    eager = run_tiny(tmp_path / "eager", "method.name=icarl", "method.loss=ce_kd")
    traced = run_tiny(tmp_path / "traced", "method.name=icarl", "method.loss=ce_kd", "train.compile=eager")
    assert traced["accuracy"] == eager["accuracy"] and traced["accuracy_linear"] == eager["accuracy_linear"]
