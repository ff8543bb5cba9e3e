"""Pre-trained-model CIL: ltcil's ViT with timm's parameter names, weights from files and the hub cache (never
downloaded), the offline error, and the frozen-backbone methods' defining behaviours (SimpleCIL's prototypes,
RanPAC's closed-form ridge classifier)."""

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import run_tiny

from ltcil.backbones import build_backbone
from ltcil.backbones.pretrained import read_safetensors
from ltcil.backbones.vit import VisionTransformer, resample_pos_embed
from ltcil.config import BackboneConfig
from ltcil.engine.runner import Experiment
from ltcil.errors import ConfigError
from ltcil.heads.random_projection import RandomProjectionHead, choose_ridge

VIT = ["backbone.name=vit_micro", "backbone.patch_size=4", "memory.size=0"]


def write_safetensors(path, tensors: dict) -> None:
    """The format as documented: 8-byte little-endian header size, JSON header, raw little-endian data."""
    header, blobs, offset = {}, [], 0
    for key, t in tensors.items():
        raw = t.contiguous().numpy().tobytes()
        header[key] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def timm_style_state(model: VisionTransformer) -> dict:
    """What a timm ViT checkpoint holds: the backbone's keys plus a classifier ltcil drops."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["head.weight"] = torch.randn(10, model.num_features)
    state["head.bias"] = torch.zeros(10)
    return state


def test_vit_forward_shapes_resize_and_prompts():
    torch.manual_seed(0)
    vit = build_backbone(BackboneConfig(name="vit_micro", patch_size=4), 3, 16)
    assert vit.input_size == 16 and vit.num_features == 64
    x = torch.randn(2, 3, 16, 16)
    assert vit.forward_features(x).shape == (2, 64)
    # another size is resized on the device to the model's input size
    assert vit.forward_features(torch.randn(2, 3, 12, 12)).shape == (2, 64)
    tokens = vit.forward_tokens(x)
    assert tokens.shape == (2, 1 + 16, 64)
    prompted = vit.forward_tokens(x, prompts={0: torch.randn(2, 5, 64)})
    assert prompted.shape == (2, 1 + 5 + 16, 64)
    prefix = (torch.randn(2, 3, 64), torch.randn(2, 3, 64))
    with_prefix = vit.forward_tokens(x, prefixes={1: prefix})
    assert with_prefix.shape == tokens.shape and not torch.allclose(with_prefix, tokens)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_with_timm_keys_loads_and_gives_the_same_features(tmp_path, suffix):
    torch.manual_seed(1)
    source = build_backbone(BackboneConfig(name="vit_micro", patch_size=4), 3, 16).eval()
    path = tmp_path / f"weights{suffix}"
    state = timm_style_state(source)
    if suffix == ".safetensors":
        write_safetensors(path, state)
        assert set(read_safetensors(path)) == set(state)
    else:
        torch.save(state, path)
    torch.manual_seed(2)  # another random init: only the file can make them equal
    loaded = build_backbone(BackboneConfig(name="vit_micro", patch_size=4, checkpoint=str(path), input_size=16),
                            3, 16).eval()
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(loaded(x), source(x))


def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    source = build_backbone(BackboneConfig(name="vit_micro", patch_size=4), 3, 16)
    state = timm_style_state(source)
    del state["blocks.1.mlp.fc2.weight"]
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=r"1 missing \(blocks\.1\.mlp\.fc2\.weight\)"):
        build_backbone(BackboneConfig(name="vit_micro", patch_size=4, checkpoint=str(tmp_path / "w.pth"),
                                      input_size=16), 3, 16)
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{{{{{")
    with pytest.raises(ConfigError, match="not a safetensors file"):
        build_backbone(BackboneConfig(name="vit_micro", checkpoint=str(tmp_path / "junk.safetensors")), 3, 16)
    with pytest.raises(ConfigError, match="does not exist"):
        build_backbone(BackboneConfig(name="vit_micro", checkpoint=str(tmp_path / "none.pth")), 3, 16)
    with pytest.raises(ConfigError, match="no pre-trained weights in ltcil"):
        build_backbone(BackboneConfig(name="resnet32", pretrained=True), 3, 32)


def test_position_embeddings_are_resampled_to_another_grid(tmp_path):
    source = build_backbone(BackboneConfig(name="vit_micro", patch_size=4), 3, 16)  # 4 x 4 patches
    pos = source.pos_embed.detach()
    grid = resample_pos_embed(pos, 64)  # to 8 x 8
    assert grid.shape == (1, 65, 64)
    torch.testing.assert_close(grid[:, 0], pos[:, 0])  # the class token's embedding is kept
    torch.testing.assert_close(resample_pos_embed(grid, 16), pos, atol=0.05, rtol=0)  # and back, close
    torch.save(timm_style_state(source), tmp_path / "w.pth")
    big = build_backbone(BackboneConfig(name="vit_micro", patch_size=4, checkpoint=str(tmp_path / "w.pth"),
                                        input_size=32), 3, 32)
    assert big.pos_embed.shape == (1, 65, 64)


def hub_snapshot(root, name: str, state: dict, mean=None):
    snap = root / f"models--timm--{name}" / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    write_safetensors(snap / "model.safetensors", state)
    if mean is not None:
        (snap / "config.json").write_text(json.dumps({"pretrained_cfg": {"mean": mean, "std": [0.25] * 3}}))
    return snap


def test_pretrained_weights_come_from_the_hub_cache_with_their_statistics(tmp_path, monkeypatch):
    torch.manual_seed(3)
    source = build_backbone(BackboneConfig(name="vit_micro", patch_size=4), 3, 32).eval()
    hub_snapshot(tmp_path / "hub", "vit_micro.test_in1k", timm_style_state(source), mean=[0.5, 0.4, 0.3])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = BackboneConfig(name="vit_micro.test_in1k", patch_size=4, pretrained=True)
    loaded = build_backbone(cfg, 3, 32).eval()
    assert loaded.input_size == 32  # the architecture's native size
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), source(x))
    assert loaded.input_stats == ([0.5, 0.4, 0.3], [0.25, 0.25, 0.25])
    # a run normalises its images with the weights' statistics, not the data's
    exp = Experiment(_cfg("data.num_classes=4", "data.image_size=32", "method.name=simplecil",
                          "backbone.name=vit_micro.test_in1k", "backbone.pretrained=true"), tmp_path / "run")
    torch.testing.assert_close(exp.data.mean.flatten().cpu(), torch.tensor([0.5, 0.4, 0.3]))


def _cfg(*extra):
    from helpers import tiny_config

    return tiny_config(*VIT, *extra)


def test_pretrained_without_cached_weights_is_one_paragraph_and_no_traceback(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "ltcil", "run", "method.name=simplecil",
                           "backbone.name=vit_base_patch16_224.augreg_in21k", "backbone.pretrained=true",
                           "--out", str(tmp_path / "run"), "--quiet"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "no weights of timm/vit_base_patch16_224.augreg_in21k on this machine" in proc.stderr
    assert "backbone.checkpoint=PATH" in proc.stderr
    assert str(tmp_path / "empty" / "models--timm--vit_base_patch16_224.augreg_in21k") in proc.stderr


def test_a_name_neither_ltcil_nor_timm_knows_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed: the name goes to timm")
    with pytest.raises(ConfigError, match=r"unknown backbone 'convnext_tiny'.*pip install timm"):
        build_backbone(BackboneConfig(name="convnext_tiny"), 3, 32)


def test_simplecil_rows_are_the_class_means_and_the_backbone_never_changes(tmp_path):
    exp = Experiment(_cfg("method.name=simplecil"), tmp_path)
    before = {k: v.clone() for k, v in exp.method.model.backbone.state_dict().items()}
    exp.run()
    model = exp.method.model
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k  # frozen: nothing trained
    assert all(t["train_images"] == 0 for t in exp.timing)  # no epoch was run
    train = np.concatenate([t.train_indices for t in exp.tasks])
    with torch.no_grad():
        x, y = exp.data.batch("train", torch.as_tensor(train))
        feats = model.backbone.eval().forward_features(x)
    for c in range(model.num_classes):
        torch.testing.assert_close(model.head.weight[c], feats[y == c].mean(0), atol=1e-5, rtol=1e-4)


def test_ranpac_task_by_task_equals_one_ridge_fit_on_everything():
    """G and Q are sums over images: accumulating them task by task and solving gives the ridge regression
    on all images seen (RanPAC Eq. 7-8), which is why it forgets nothing."""
    torch.manual_seed(0)
    feats, labels = torch.randn(60, 8), torch.arange(60) % 6
    head = RandomProjectionHead(8, 32)
    head.projection.copy_(torch.randn(8, 32))
    for first in (0, 2, 4):  # three tasks of two classes
        head.add_classes(2)
        part = (labels >= first) & (labels < first + 2)
        head.accumulate(head.expand(feats[part]), labels[part])
        head.solve(0.5)
    h = head.expand(feats).double()
    y = torch.nn.functional.one_hot(labels, 6).double()
    joint = torch.linalg.solve(h.T @ h + 0.5 * torch.eye(32, dtype=torch.float64), h.T @ y).T
    torch.testing.assert_close(head.weight, joint.float(), atol=1e-4, rtol=1e-4)


def test_ranpac_ridge_choice_matches_solving_each_candidate():
    torch.manual_seed(1)
    h, labels = torch.relu(torch.randn(80, 16)), torch.arange(80) % 4
    held = torch.arange(80) % 5 == 0
    grid = [1e-3, 1e-1, 10.0, 1e3]
    best, errors = choose_ridge(h, labels, 4, grid, held)
    y = torch.nn.functional.one_hot(labels, 4).double()
    fit, val = h[~held].double(), h[held].double()
    for ridge, error in zip(grid, errors):
        w = torch.linalg.solve(fit.T @ fit + ridge * torch.eye(16, dtype=torch.float64), fit.T @ y[~held])
        assert error == pytest.approx(float(((val @ w - y[held]) ** 2).mean()), rel=1e-6)
    assert best == grid[int(np.argmin(errors))]


def test_ranpac_checkpoint_resumes_its_statistics(tmp_path):
    full = run_tiny(tmp_path / "full", *VIT, "method.name=ranpac", "method.projection=32")
    assert full["ridge"] > 0 and len(full["ridge_per_task"]) == 3 and full["ridge_per_task"][-1] == full["ridge"]
    state = torch.load(tmp_path / "full" / "checkpoints" / "task_002.pt", weights_only=True)
    gram = state["method"]["head"]["gram"]
    assert not any(k.startswith("backbone") for k in state["method"]["head"])  # the frozen backbone is not stored
    assert gram.shape == (32, 32) and torch.all(torch.diagonal(gram) >= 0) and gram.abs().sum() > 0


def _timm_or_skip():
    try:
        import timm
    except Exception as exc:  # noqa: BLE001 - not installed, or its torchvision does not load beside this torch
        pytest.skip(f"timm is not usable here ({type(exc).__name__}: {str(exc)[:80]})")
    return timm


def test_ltcil_vit_computes_what_timm_vit_computes_with_the_same_weights(tmp_path):
    timm = _timm_or_skip()
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=4)
    ref.eval()
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    ours = build_backbone(BackboneConfig(name="vit_tiny_patch16_224", patch_size=4, input_size=32,
                                         checkpoint=str(tmp_path / "timm.pth")), 3, 32).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-4)


def test_a_timm_only_model_is_built_by_timm_and_offline_weights_are_one_paragraph(tmp_path, monkeypatch):
    _timm_or_skip()
    from ltcil.backbones.timm_backbone import TimmBackbone

    model = build_backbone(BackboneConfig(name="resnet10t"), 3, 32)
    assert isinstance(model, TimmBackbone) and model(torch.randn(2, 3, 32, 32)).shape == (2, model.num_features)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="no weights of timm/resnet10t.c3_in1k on this machine"):
        build_backbone(BackboneConfig(name="resnet10t.c3_in1k", pretrained=True), 3, 32)


def test_frozen_backbone_checkpoints_hold_no_backbone_and_refuse_other_weights(tmp_path):
    weights = tmp_path / "w.pth"
    torch.manual_seed(5)
    torch.save(timm_style_state(build_backbone(BackboneConfig(name="vit_micro", patch_size=4), 3, 8)), weights)
    extra = (f"backbone.checkpoint={weights}", "backbone.input_size=8", "method.name=simplecil")
    full = run_tiny(tmp_path / "run", *VIT, *extra)
    state = torch.load(tmp_path / "run" / "checkpoints" / "task_001.pt", weights_only=True)
    assert set(state["method"]) == {"head", "num_classes", "backbone_digest"}
    (tmp_path / "run" / "checkpoints" / "task_002.pt").unlink()
    (tmp_path / "run" / "results.json").unlink()
    exp = Experiment(_cfg(*extra), tmp_path / "run")  # the same weights: resumes to the same result
    assert exp.restore() and exp.run()["accuracy"] == full["accuracy"]
    torch.manual_seed(6)  # the weights file replaced between the two halves of a run
    torch.save(timm_style_state(build_backbone(BackboneConfig(name="vit_micro", patch_size=4), 3, 8)), weights)
    (tmp_path / "run" / "checkpoints" / "task_002.pt").unlink()
    with pytest.raises(ConfigError, match="other backbone weights"):
        Experiment(_cfg(*extra), tmp_path / "run").restore()


def test_a_frozen_backbone_method_on_random_weights_says_so():
    from ltcil.engine.runner import check_components
    from ltcil.errors import LtcilWarning

    with pytest.warns(LtcilWarning, match="random weights here .* useful for tests, not for results"):
        check_components(_cfg("method.name=ranpac"))


@pytest.mark.parametrize("method", ["simplecil", "ranpac"])
def test_frozen_backbone_evaluation_embeds_each_test_image_once_and_scores_as_without_the_cache(tmp_path, method):
    # three tasks: without the cache the backbone would see task 1's test images three times, task 2's twice
    from ltcil.evaluation.evaluator import predict_all

    extra = ["method.projection=32"] if method == "ranpac" else []
    exp = Experiment(_cfg(f"method.name={method}", *extra), tmp_path)
    results = exp.run()
    cache = exp.method.feature_cache
    test_images = sum(len(t.test_indices) for t in exp.tasks)
    assert cache.computed == test_images
    assert cache.served == sum(len(t.test_indices) for t in exp.tasks[:2]) + len(exp.tasks[0].test_indices)
    direct = predict_all(exp.method, exp.data, "test", np.concatenate([t.test_indices for t in exp.tasks]), 7)
    pred = direct["logits"].argmax(1)
    assert results["accuracy"][-1] == pytest.approx(100 * float((pred == direct["target"]).mean()), abs=1e-9)


def test_ranpac_phase1_adapts_on_the_first_task_then_projects_the_adapted_embedding(tmp_path):
    """Phase 1 (Sec. 4.1): adapters and a cosine head learn on the first task only; the random projection and the
    ridge classifier see the adapted embedding (not APER's merge); a resumed run ends as the uninterrupted one."""
    import shutil

    from helpers import tiny_config

    extra = [*VIT, "method.name=ranpac", "method.projection=32", "method.tuning=adapter", "method.bottleneck=8",
             "method.adapter_dropout=0", "train.epochs=2"]
    exp = Experiment(tiny_config(*extra), tmp_path / "full")
    net = exp.method.model.backbone
    vit_before = {k: v.clone() for k, v in net.vit.state_dict().items()}
    full = exp.run()
    assert [t["train_images"] > 0 for t in exp.timing] == [True, False, False]
    assert all(torch.equal(v, vit_before[k]) for k, v in net.vit.state_dict().items())
    ups = [a.up.weight for a in net.tuning.adapters]
    assert any(w.abs().sum() > 0 for w in ups) and not any(w.requires_grad for w in ups)
    assert net.num_features == net.vit.num_features  # the adapted embedding alone
    head = exp.method.model.head
    train = torch.as_tensor(np.concatenate([t.train_indices for t in exp.tasks]))
    with torch.no_grad():
        images, _ = exp.data.batch("train", train)
        h = head.expand(net.adapted(images)).double()
    torch.testing.assert_close(head.gram, h.T @ h, atol=1e-6, rtol=1e-6)  # G of every adapted image seen
    state = torch.load(tmp_path / "full" / "checkpoints" / "task_002.pt", weights_only=True)
    assert any(k.startswith("backbone.tuning.") for k in state["method"]["model"])
    assert not any(k.startswith("backbone.vit.") for k in state["method"]["model"])
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "full", crashed)
    (crashed / "checkpoints" / "task_002.pt").unlink()
    (crashed / "results.json").unlink()
    again = Experiment(tiny_config(*extra), crashed)
    assert again.restore() and again.next_task == 2
    assert again.run()["accuracy_matrix"] == full["accuracy_matrix"]
