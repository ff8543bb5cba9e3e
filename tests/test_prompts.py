"""Prompt- and adapter-based CIL on a frozen ViT: L2P's prompt pool (key matching, batchwise choice), where its
prompts enter the ViT, its masked loss with the key pull, and that only the prompts, keys and head learn;
DualPrompt's G- and E-prefixes; APER's first-task adapters and merged prototypes, its SSF and VPT variants."""

import math
import shutil

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from helpers import run_tiny, tiny_config

from ltcil.engine.runner import Experiment
from ltcil.errors import ConfigError
from ltcil.layers.prompt_pool import PromptPool

L2P = ["method.name=l2p", "backbone.name=vit_micro", "backbone.patch_size=4", "memory.size=0",
       "head.init=trunc_normal", "train.optimizer=adam", "train.lr=0.002", "method.pool_size=6", "method.top_k=2",
       "method.length=2"]


def test_pool_takes_the_nearest_keys_per_image_or_the_batchs_most_frequent():
    pool = PromptPool(pool_size=4, length=1, dim=2, top_k=2)
    with torch.no_grad():
        pool.keys.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.7]]))
    query = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 0.2]])
    idx, cos = pool.select(query, batchwise=False)
    assert idx.tolist() == [[0, 3], [1, 3], [0, 3]]
    expected = F.normalize(query, dim=1) @ F.normalize(pool.keys, dim=1).T
    torch.testing.assert_close(cos, expected.gather(1, idx))
    shared, shared_cos = pool.select(query, batchwise=True)  # key 3 chosen 3 times, key 0 twice, key 1 once
    assert shared.tolist() == [[3, 0]] * 3
    torch.testing.assert_close(shared_cos, expected.gather(1, shared))
    tie = pool.select(torch.tensor([[1.0, 0.1], [0.1, 1.0]]), batchwise=True)[0]  # 3 twice, 0 and 1 once
    assert tie.tolist() == [[3, 0]] * 2  # equals: the lower index
    assert pool.tokens(idx).shape == (3, 2, 2)


def test_l2p_prompts_follow_the_class_token_with_its_position_embedding(tmp_path):
    exp = Experiment(tiny_config(*L2P), tmp_path)
    net = exp.method.model.backbone
    vit = net.vit
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        feats, cos = net.eval().forward_prompted(x)
        idx, _ = net.pool.select(vit.forward_features(x), batchwise=True)
        prompts = net.pool.prompts[idx].reshape(3, -1, vit.num_features) + vit.pos_embed[:, :1]
        z = vit.embed(x)
        z = torch.cat([z[:, :1], prompts, z[:, 1:]], dim=1)
        for block in vit.blocks:
            z = block(z)
        z = vit.norm(z)
    torch.testing.assert_close(feats, z[:, 1 : 1 + prompts.shape[1]].mean(1))
    assert cos.shape == (3, 2)


def test_l2p_masks_old_classes_pulls_keys_and_trains_only_prompts_keys_and_head(tmp_path):
    exp = Experiment(tiny_config(*L2P, "scenario.max_tasks=2"), tmp_path)
    vit_before = {k: v.clone() for k, v in exp.method.model.backbone.vit.state_dict().items()}
    pool_before = exp.method.model.backbone.pool.prompts.detach().clone()
    exp.run()
    method = exp.method
    for k, v in method.model.backbone.vit.state_dict().items():
        assert torch.equal(v, vit_before[k]), k  # the ViT is frozen
    assert not torch.equal(method.model.backbone.pool.prompts, pool_before)  # the prompts learned
    trainable = {id(p) for p in method.trainable_parameters()}
    assert trainable == {id(p) for p in (method.model.backbone.pool.prompts, method.model.backbone.pool.keys,
                                         method.model.head.weight, method.model.head.bias)}
    # a step of the second task: CE over its own classes only, minus 0.1 x the chosen keys' cosines per image
    assert method.old_classes == 2
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([2, 3, 3, 2])
    method.model.train()
    losses = method.training_step(x, y)
    with torch.no_grad():
        feats, cos = method.model.backbone.forward_prompted(x)
        logits = method.model.head(feats)
        ce = F.cross_entropy(logits[:, 2:], y - 2)
    assert losses["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx((ce - 0.1 * cos.sum() / 4).item(), rel=1e-5)
    method.model.zero_grad()
    losses["loss"].backward()
    assert torch.equal(method.model.head.weight.grad[:2], torch.zeros_like(method.model.head.weight.grad[:2]))
    assert method.model.backbone.pool.keys.grad.abs().sum() > 0


def test_l2p_checkpoints_hold_no_backbone_and_resume_bit_identically(tmp_path):
    full = run_tiny(tmp_path / "full", *L2P)
    state = torch.load(tmp_path / "full" / "checkpoints" / "task_002.pt", weights_only=True)
    assert not any(k.startswith("backbone.vit.") for k in state["method"]["model"])
    assert "backbone.pool.prompts" in state["method"]["model"]
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "full", crashed)
    (crashed / "checkpoints" / "task_002.pt").unlink()
    exp = Experiment(tiny_config(*L2P), crashed)
    assert exp.restore()
    assert exp.run()["accuracy"] == full["accuracy"]


def test_l2p_refuses_impossible_options_and_a_backbone_without_tokens(tmp_path):
    with pytest.raises(ConfigError, match="method.top_k"):
        Experiment(tiny_config(*L2P, "method.top_k=7"), tmp_path / "a")
    with pytest.raises(ConfigError, match="method.batchwise"):
        Experiment(tiny_config(*L2P, "method.batchwise=sometimes"), tmp_path / "b")
    with pytest.raises(ConfigError, match="prepends prompts to a ViT"):
        Experiment(tiny_config(*L2P, "backbone.name=convnet"), tmp_path)


DUALPROMPT = ["method.name=dualprompt", "backbone.name=vit_micro", "backbone.patch_size=4", "memory.size=0",
              "head.init=trunc_normal", "train.optimizer=adam", "train.lr=0.002", "method.pool_size=4",
              "method.g_layers=[0]", "method.e_layers=[1]", "method.g_length=2", "method.e_length=3",
              "train.weight_decay=0"]


def test_dualprompt_prefixes_its_g_and_e_prompts_and_trains_the_tasks_own_e_prompt(tmp_path):
    exp = Experiment(tiny_config(*DUALPROMPT, "scenario.max_tasks=2"), tmp_path)
    net = exp.method.model.backbone
    vit = net.vit
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        query = vit.forward_features(x)
        net.eval()
        feats, cos = net.forward_prompted(x)  # testing: the nearest key, batchwise
        idx = int(torch.mode((F.normalize(query, dim=1) @ F.normalize(net.keys, dim=1).T).argmax(1)).values)
        z = vit.embed(x)
        g = net.g_prompt[:2]
        e = net.e_prompt(idx)[0]
        z = vit.blocks[0](z, (g[0].expand(3, -1, -1), g[1].expand(3, -1, -1)))
        z = vit.blocks[1](z, (e[0].expand(3, -1, -1), e[1].expand(3, -1, -1)))
        expected = vit.norm(z)[:, 0]
    torch.testing.assert_close(feats, expected)
    assert cos.shape == (3, 1)
    seen = {}
    begin = exp.method.begin_task

    def prompts():
        return torch.stack([net.e_prompt(p) for p in range(4)]).detach().clone()

    def recorded_begin(task, ctx):
        before = prompts()
        begin(task, ctx)
        seen[task.index] = (before, prompts(), net.task_index)

    exp.method.begin_task = recorded_begin
    exp.run()
    before, started, task_index = seen[1]
    assert task_index == 1
    after = prompts()
    assert torch.equal(started[1], before[0])  # E-prompt 1 starts as the trained E-prompt 0
    assert not torch.equal(after[1], started[1])  # and learns in task 1
    assert torch.equal(after[2:], before[2:])  # the unused ones never move
    net.train()
    net.task_index = 1
    _, train_cos = net.forward_prompted(x)  # training: the task's own key, whatever the query
    torch.testing.assert_close(train_cos[:, 0], F.cosine_similarity(vit.forward_features(x), net.keys[1][None]))


def test_dualprompt_refuses_layers_the_vit_does_not_have(tmp_path):
    with pytest.raises(ConfigError, match="block 5 of method.g_layers"):
        Experiment(tiny_config(*DUALPROMPT, "method.e_layers=[5]"), tmp_path / "a")
    with pytest.raises(ConfigError, match="distinct block indices"):
        Experiment(tiny_config(*DUALPROMPT, "method.e_layers=[0]"), tmp_path / "b")


APER = ["method.name=aper", "backbone.name=vit_micro", "backbone.patch_size=4", "memory.size=0",
        "method.bottleneck=8", "train.epochs=2"]


def test_aper_adapts_on_the_first_task_only_and_merges_both_embeddings_into_prototypes(tmp_path):
    exp = Experiment(tiny_config(*APER), tmp_path)
    net = exp.method.model.backbone
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():  # the adapters start as zero maps: adapted = pre-trained
        torch.testing.assert_close(net.adapted(x), net.vit.forward_features(x))
    vit_before = {k: v.clone() for k, v in net.vit.state_dict().items()}
    adapters = {}
    end = exp.method.end_task

    def recorded_end(task, ctx):
        end(task, ctx)
        adapters[task.index] = {k: v.clone() for k, v in net.tuning.state_dict().items()}

    exp.method.end_task = recorded_end
    exp.run()
    assert [t["train_images"] > 0 for t in exp.timing] == [True, False, False]  # only the first task trains
    for k, v in net.vit.state_dict().items():
        assert torch.equal(v, vit_before[k]), k
    assert all(torch.equal(adapters[2][k], v) for k, v in adapters[0].items())  # frozen after the first task
    assert any(v.abs().sum() > 0 for k, v in adapters[0].items() if k.endswith("up.weight"))  # they did learn
    train = torch.as_tensor(np.concatenate([t.train_indices for t in exp.tasks]))
    with torch.no_grad():
        images, y = exp.data.batch("train", train)
        merged = torch.cat([net.vit.forward_features(images), net.adapted(images)], dim=1)
    assert merged.shape[1] == 2 * net.vit.num_features
    head = exp.method.model.head
    for c in range(head.num_classes):
        torch.testing.assert_close(head.weight[c], merged[y == c].mean(0), atol=1e-5, rtol=1e-4)
    assert not any("adapter" in k for k in net.vit.state_dict())  # attached only while embedding


def _micro_vit():
    from ltcil.backbones.vit import build_vit
    from ltcil.config import BackboneConfig

    torch.manual_seed(0)
    return build_vit("vit_micro", BackboneConfig(name="vit_micro", patch_size=4), 3, 8).eval()


def test_ssf_equals_the_vit_with_its_scales_and_shifts_merged_into_the_weights():
    """SSF (Lian et al. 2022, Sec. 3.3): each scale-shift after a linear map (or LayerNorm) folds into that map,
    w' = scale * w, b' = scale * b + shift; the hooked forward must equal the plain forward of the folded ViT."""
    import copy

    from ltcil.layers.vit_tuning import SSFTuning

    vit = _micro_vit()
    tuning = SSFTuning(vit)
    with torch.no_grad():
        for p in tuning.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # far from the identity init, so every site matters
    folded = copy.deepcopy(vit)
    with torch.no_grad():
        for (module, ss), (twin, _) in zip(tuning._pairs(vit), tuning._pairs(folded)):
            w = twin.weight
            w.mul_(ss.scale.view(-1, *([1] * (w.dim() - 1))))
            twin.bias.mul_(ss.scale).add_(ss.shift)
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(tuning.embed(vit, x), folded.forward_features(x), atol=1e-5, rtol=1e-4)
        plain = vit.forward_features(x)
    assert not any(module._forward_hooks for module in vit.modules())  # removed after the embedding
    assert not torch.allclose(tuning.embed(vit, x), plain)


def test_vpt_deep_replaces_each_blocks_prompts_and_shallow_keeps_one_set():
    from ltcil.layers.vit_tuning import VPTTuning

    vit = _micro_vit()
    x = torch.rand(2, 3, 8, 8)
    deep, shallow = VPTTuning(vit, 3, deep=True), VPTTuning(vit, 3, deep=False, init="zeros")
    assert deep.prompts.shape == (2, 3, 64) and deep.prompts.abs().max() > 0
    assert torch.equal(shallow.prompts, torch.zeros(1, 3, 64))
    with torch.no_grad():
        shallow.prompts.normal_()
        # shallow: one set joined before block 0 and kept: ltcil's own prompt insertion (after the class token)
        torch.testing.assert_close(shallow.embed(vit, x), vit.forward_tokens(x, prompts={0: shallow.prompts.expand(
            2, -1, -1)})[:, 0], atol=1e-5, rtol=1e-4)
        # deep, by hand: block i sees the patch tokens and its own prompts, the previous prompts' outputs dropped
        z = vit.embed(x)
        for i, block in enumerate(vit.blocks):
            z = block(torch.cat([z[:, :1], deep.prompts[i].expand(2, -1, -1), z[:, 1:]], dim=1))
            z = torch.cat([z[:, :1], z[:, 4:]], dim=1)
        torch.testing.assert_close(deep.embed(vit, x), vit.norm(z)[:, 0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("tuning,expected", [("ssf", None), ("vpt_deep", 2 * 5 * 64), ("vpt_shallow", 5 * 64)])
def test_aper_variants_tune_only_their_modules_on_the_first_task(tmp_path, tuning, expected):
    exp = Experiment(tiny_config(*APER, f"method.tuning={tuning}", "method.vpt_init=zeros"), tmp_path)
    net = exp.method.model.backbone
    vit_before = {k: v.clone() for k, v in net.vit.state_dict().items()}
    tuned_before = {k: v.clone() for k, v in net.tuning.state_dict().items()}
    trained = sum(p.numel() for p in net.tuning.parameters())
    if expected is not None:
        assert trained == expected
    else:  # SSF: a scale and a shift per channel at 8 sites of each of 2 blocks (qkv 3 x 64, fc1 4 x 64) + 2
        assert trained == 2 * (2 * (64 + 192 + 64 + 64 + 256 + 64) + 64 + 64)
    results = exp.run()
    assert [t["train_images"] > 0 for t in exp.timing] == [True, False, False]
    assert all(torch.equal(v, vit_before[k]) for k, v in net.vit.state_dict().items())
    assert any(not torch.equal(v, tuned_before[k]) for k, v in net.tuning.state_dict().items())
    assert len(results["accuracy"]) == 3


def test_aper_rejects_an_unknown_tuning(tmp_path):
    with pytest.raises(ConfigError, match="method.tuning: 'lora' is not one of adapter, ssf, vpt_deep"):
        Experiment(tiny_config(*APER, "method.tuning=lora"), tmp_path)


CODA = ["method.name=coda_prompt", "backbone.name=vit_micro", "backbone.patch_size=4", "memory.size=0",
        "train.optimizer=adam", "train.lr=0.002", "train.weight_decay=0", "method.components=6", "method.length=4",
        "method.layers=[0, 1]"]


def test_coda_components_are_drawn_orthonormal_per_task():
    from ltcil.methods.coda_prompt import orthonormal_rows

    m = torch.zeros(6, 3, 4)
    gen = torch.Generator().manual_seed(0)
    orthonormal_rows(m, 0, 2, gen)
    first = m[:2].clone()
    orthonormal_rows(m, 2, 4, gen)
    flat = m.view(6, -1)
    torch.testing.assert_close(flat[:4] @ flat[:4].T, torch.eye(4), atol=1e-5, rtol=0)
    assert torch.equal(m[:2], first) and torch.equal(m[4:], torch.zeros(2, 3, 4))  # earlier kept, later untouched


def test_coda_prompt_is_the_cosine_weighted_sum_and_only_the_tasks_components_learn(tmp_path):
    exp = Experiment(tiny_config(*CODA, "scenario.max_tasks=2"), tmp_path)
    exp.run()
    method, net = exp.method, exp.method.model.backbone
    assert net.active == (2, 4)  # 6 components over the scenario's 3 tasks: the second task's are 2 and 3
    vit = net.vit
    x = torch.rand(3, 3, 8, 8)
    net.eval()
    with torch.no_grad():
        feats, _ = net.forward_prompted(x)
        q = vit.forward_features(x)
        z = vit.embed(x)
        for i, block in enumerate(vit.blocks):  # both blocks prompted
            k, a, p = net.keys[i], net.attention[i], net.prompts[i * 6 : (i + 1) * 6]
            alpha = F.cosine_similarity((q[:, None] * a[None]), k[None], dim=2)  # (B, M)
            prompt = torch.einsum("bk,kld->bld", alpha, p)
            z = block(z, (prompt[:, :2], prompt[:, 2:]))
        expected = vit.norm(z)[:, 0]
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-4)
    net.train()
    method.model.zero_grad()
    method.training_step(x, torch.tensor([2, 3, 2]))["loss"].backward()
    grad = net.keys.grad
    assert grad[:, :2].abs().sum() == 0 and grad[:, 2:4].abs().sum() > 0  # earlier tasks' components fixed
    assert grad[:, 4:].abs().sum() == 0 and torch.equal(net.keys[:, 4:], torch.zeros_like(net.keys[:, 4:]))
    assert method.model.head.weight.grad[:2].abs().sum() == 0  # old classes masked


def test_quarter_cosine_schedule_is_codas():
    from ltcil.config import TrainConfig
    from ltcil.engine.optim import lr_factor

    stage = TrainConfig(schedule="quarter_cosine", warmup_epochs=0)
    got = [lr_factor(stage, e, 20) for e in range(20)]
    assert got[0] == 1.0 and got[-1] == pytest.approx(math.cos(99 * math.pi / 200))
    assert all(a > b for a, b in zip(got, got[1:]))


SLCA = ["method.name=slca", "backbone.name=vit_micro", "backbone.patch_size=4", "memory.size=0",
        "method.ca_epochs=2", "method.ca_samples=8", "head.init=trunc_normal"]


def test_slca_logit_normalisation_divides_by_the_mean_per_task_norm():
    from ltcil.methods.slca import task_normalised

    logits = torch.tensor([[3.0, 4.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0, 0.0]])
    got = task_normalised(logits, [2, 3])
    norms = torch.tensor([[(5.0 + 1.0) / 2], [(1e-7 + 2.0) / 2]])
    torch.testing.assert_close(got, logits / norms, atol=1e-6, rtol=1e-6)


def test_slca_learns_slowly_keeps_old_rows_and_aligns_only_for_the_evaluation(tmp_path):
    exp = Experiment(tiny_config(*SLCA), tmp_path)
    method = exp.method
    groups = method.trainable_parameters()
    assert groups[0]["lr_scale"] == 0.01 and groups[1]["lr_scale"] == 1.0 and groups[1]["weight_decay"] == 0.0
    heads = {}
    begin, end = method.begin_task, method.end_task

    def recorded_begin(task, ctx):
        begin(task, ctx)
        heads[("begin", task.index)] = method.model.head.weight.detach().clone()

    def recorded_end(task, ctx):
        heads[("trained", task.index)] = method.model.head.weight.detach().clone()
        end(task, ctx)
        heads[("aligned", task.index)] = method.model.head.weight.detach().clone()

    method.begin_task, method.end_task = recorded_begin, recorded_end
    exp.run()
    # task 1's training leaves task 0's rows as they were (no gradient, no weight decay)
    torch.testing.assert_close(heads[("trained", 1)][:2], heads[("begin", 1)][:2], atol=0, rtol=0)
    assert torch.equal(heads[("aligned", 0)], heads[("trained", 0)])  # no alignment after the first task
    assert not torch.equal(heads[("aligned", 1)], heads[("trained", 1)])  # aligned for task 1's evaluation
    assert torch.equal(heads[("begin", 2)][:4], heads[("trained", 1)])  # task 2 starts from the unaligned head
    assert method.means.shape == (6, method.model.backbone.num_features) and method.covs.shape[0] == 6


EASE = ["method.name=ease", "backbone.name=vit_micro", "backbone.patch_size=4", "memory.size=0", "method.bottleneck=8"]


def test_ease_reweights_each_classs_own_subspace_and_complements_old_prototypes():
    from ltcil.methods.ease import SubspaceHead

    head = SubspaceHead(width=2, alpha=0.1, reweight=True)
    head.grow(2, 0)
    head.grow(1, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 2.0]]))
    feats = torch.tensor([[2.0, 0.0, 1.0, 1.0]])
    cos = lambda a, b: float(F.cosine_similarity(torch.tensor(a), torch.tensor(b), dim=0))  # noqa: E731
    # class 0 (task 0): own subspace 0 at 1, subspace 1 (its row there is zero: cosine 0) at 0.1 / 1
    expected = [cos([2.0, 0.0], [1.0, 0.0]), cos([2.0, 0.0], [0.0, 1.0]),
                0.1 * cos([2.0, 0.0], [1.0, 1.0]) + cos([1.0, 1.0], [0.0, 2.0])]
    torch.testing.assert_close(head(feats)[0], torch.tensor(expected), atol=1e-6, rtol=1e-6)


def test_ease_trains_one_subspace_per_task_and_fills_old_classes_in_new_subspaces(tmp_path):
    exp = Experiment(tiny_config(*EASE), tmp_path)
    method = exp.method
    net, head = method.model.backbone, method.model.head
    saved = {}
    end = method.end_task

    def recorded_end(task, ctx):
        saved[task.index] = [{k: v.clone() for k, v in s.state_dict().items()} for s in net.sets]
        end(task, ctx)
        saved[("head", task.index)] = head.weight.clone()

    method.end_task = recorded_end
    exp.run()
    assert len(net.sets) == 3 and head.weight.shape == (6, 3 * net.width)
    for k, v in saved[0][0].items():  # subspace 0 never moves after task 0
        assert torch.equal(saved[2][0][k], v), k
    train = torch.as_tensor(np.concatenate([t.train_indices for t in exp.tasks]))
    with torch.no_grad():
        images, y = exp.data.batch("train", train)
        feats = net.forward_features(images)
    for c in (4, 5):  # the last task's classes: real prototypes in every subspace
        torch.testing.assert_close(head.weight[c], feats[y == c].mean(0), atol=1e-5, rtol=1e-4)
    # task 0's classes in subspace 2: softmax(cos in subspace 0 with task 2's classes) @ their subspace-2 rows
    w = saved[("head", 2)]
    a = F.normalize(w[4:6, 0:net.width], dim=1)
    a_hat = F.normalize(w[0:2, 0:net.width], dim=1)
    expected = torch.softmax(a_hat @ a.T, dim=1) @ w[4:6, 2 * net.width:]
    torch.testing.assert_close(w[0:2, 2 * net.width:], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("overrides", [[*L2P, "method.batchwise=train"], [*DUALPROMPT, "method.batchwise=train"], CODA],
                         ids=["l2p", "dualprompt", "coda_prompt"])
def test_prompt_methods_compute_each_test_images_query_once_and_score_as_without_the_cache(tmp_path, overrides):
    # (per-image prompt choice at test time: with the batchwise choice a prediction depends on its batch)
    from ltcil.evaluation.evaluator import predict_all

    exp = Experiment(tiny_config(*overrides, "train.epochs=1"), tmp_path)
    results = exp.run()
    cache = exp.method.query_cache
    assert cache.computed == sum(len(t.test_indices) for t in exp.tasks)  # each test image's query once
    assert cache.served == sum(len(t.test_indices) for t in exp.tasks[:2]) + len(exp.tasks[0].test_indices)
    test = np.concatenate([t.test_indices for t in exp.tasks])
    direct = predict_all(exp.method, exp.data, "test", test, exp.cfg.eval.batch_size)
    pred = direct["logits"].argmax(1)
    assert results["accuracy"][-1] == pytest.approx(100 * float((pred == direct["target"]).mean()), abs=1e-5)
