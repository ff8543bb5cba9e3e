"""The peer-parity harness's own logic (benchmarks/peers): recipe translation, records, the table and its
verdicts, argument handling. No peer toolkit is needed or imported."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

PEERS = Path(__file__).resolve().parents[1] / "benchmarks" / "peers"
sys.path.insert(0, str(PEERS))

import recipes  # noqa: E402
import run as harness  # noqa: E402

from ltcil.config import load_config  # noqa: E402
from ltcil.engine.runner import check_components  # noqa: E402
from ltcil.methods.base import Method  # noqa: E402
from ltcil.scenarios.order import ICARL_CIFAR100_ORDER  # noqa: E402


def test_class_order_is_pycils_and_ltcils_seeded_order():
    assert recipes.class_order(1993) == list(ICARL_CIFAR100_ORDER)
    cfg = load_config("icarl_resnet32_cifar100_b0inc10_pycil", ["scenario.order=seed:1"])
    from ltcil.scenarios.order import class_order

    assert class_order(cfg.scenario.order, 100).tolist() == recipes.class_order(1)


@pytest.mark.parametrize("key", sorted(recipes.RECIPES))
def test_every_recipe_config_takes_its_parity_overrides(key):
    rec = recipes.RECIPES[key]
    overrides = recipes.ltcil_overrides(rec, epochs=5, seed=1, tasks=4, data_root="/data", threads=2)
    cfg = load_config(rec.config, overrides)
    check_components(cfg)
    if rec.epoch_keys:
        # the first task trains as long as the others (FACIL-based recipes have no first-task section: 0 = same)
        assert cfg.train.epochs == 5 and cfg.train.first_task.epochs in ((5,) if rec.order_from_seed else (0, 5))
    else:  # LAMDA-PILOT's frozen-backbone recipes train nothing: no epoch count to set
        from ltcil import registry

        assert registry.get("method", cfg.method["name"]).trains is not Method.trains
    assert cfg.seed == 1 and cfg.scenario.max_tasks == 4
    if rec.order_from_seed:  # PyCIL / Avalanche: the seed is the class order
        assert cfg.scenario.order == "seed:1"
    else:  # FACIL-based: the scenario's own order, the seed draws the validation split
        assert cfg.scenario.order in ("seed:1993", "natural") and cfg.scenario.seed == 1
    assert cfg.data.root == "/data" and cfg.train.threads == 2 and cfg.log.report == "never"
    sched = recipes.short_schedule(rec, 5)
    assert cfg.train.first_task.milestones == sched["init"] and cfg.train.milestones == sched["later"]
    if rec.method == "bic":
        assert cfg.method["bias_epochs"] == 5  # PyCIL's stage 2 runs as many epochs as stage 1
        assert cfg.method["bias_milestones"] == sched["bias"]
    if rec.peer == "pilot":  # the shared random ViT at 32 px, no memory (DGR: 400 exemplars on both sides)
        assert (cfg.backbone.name, cfg.backbone.patch_size, cfg.backbone.input_size) == ("vit_tiny_patch16_224", 4, 32)
        assert not cfg.backbone.pretrained and not cfg.data.normalize
        assert cfg.memory.size == (400 if rec.method == "dgr" else 0)
        if rec.method == "dgr":
            assert rec.peer_args == ("--exp", "memory_size=400")
    if rec.peer in recipes.FACIL_PEERS:  # CIFAR-100-LT, 50 + 10 x 5 (GVAlign: 5 x 10), 20 exemplars per class
        increment = 10 if rec.peer == "gvalign" else 5
        assert (cfg.scenario.initial, cfg.scenario.increment, cfg.memory.per_class) == (50, increment, 20)
        assert rec.peer_args[rec.peer_args.index("--tasks") + 1] == str(1 + 50 // increment)
    elif rec.peer in ("ldam-drw", "balms"):  # plain long-tailed recognition: one task of 100 classes, no memory
        assert cfg.scenario.increment == 0 and cfg.scenario.imbalance_factor == 100 and cfg.memory.size == 0
    else:
        assert cfg.scenario.initial == 10 and cfg.scenario.increment == 10 and cfg.memory.size in (0, 400, 2000)


def test_pycil_icarl_recipe_sets_pycils_choices():
    cfg = load_config("icarl_resnet32_cifar100_b0inc10_pycil")
    assert cfg.method == {"name": "icarl", "loss": "ce_kd", "T": 2.0, "nme_flip": False}
    assert (cfg.backbone.shortcut, cfg.head.init) == ("pad", "kaiming_uniform")
    assert cfg.train.color_jitter == pytest.approx([63 / 255, 0, 0], abs=1e-6)
    first = cfg.train.first_task
    assert (cfg.train.lr, first.lr, cfg.train.weight_decay, first.weight_decay) == (0.1, 0.1, 2e-4, 5e-4)
    assert (cfg.train.milestones, first.milestones, first.epochs) == ([80, 120], [60, 120, 170], 200)
    lwf = load_config("lwf_resnet32_cifar100_b0inc10_pycil")
    assert lwf.method["ce_classes"] == "new" and lwf.method["lamb"] == 3.0 and lwf.memory.size == 0


def test_pycil_podnet_recipe_sets_pycils_choices():
    # PyCIL models/podnet.py: released NCA form with no effective margin, no hinge, no proxy imprinting, the
    # fine-tuning set of memory // old classes per class, cosine lr stepped per epoch, NME without flip
    cfg = load_config("podnet_resnet32_cifar100_b0inc10_pycil")
    m = cfg.method
    assert (m["nca_form"], m["margin"], m["hinge"], m["imprint"]) == ("released", 0.0, False, False)
    assert (m["finetune_set"], m["finetune_epochs"], m["finetune_lr"], m["nme_flip"]) == ("old_quota", 20, 0.005, False)
    assert (m["lambda_spatial"], m["lambda_flat"], m["proxies"]) == (5.0, 1.0, 10)
    assert (cfg.train.schedule, cfg.train.schedule_unit, cfg.backbone.last_relu) == ("cosine", "epoch", False)


@pytest.mark.parametrize("method", ["finetune", "lwf", "icarl", "bic", "wa", "der", "podnet"])
def test_pycil_recipes_build_the_network_pycil_builds(method):
    """PyCIL's exps/<method>.json names the extractor: resnet32 (convs/cifar_resnet.py, option A shortcuts:
    463,504 parameters, 186 state entries without its unused fc) for all but PODNet, whose cosine_resnet32
    (convs/ucir_cifar_resnet.py) has 1x1 conv + BN shortcuts (466,256 and 198) and no ReLU after the last
    block; counted from PyCIL at commit 87cc411. shared_start.py maps the two entry by entry."""
    from ltcil.backbones import build_backbone

    cfg = load_config(f"{method}_resnet32_cifar100_b0inc10_pycil")
    net = build_backbone(cfg.backbone, 3, 32)
    expected = (466_256, 198, False) if method == "podnet" else (463_504, 186, True)
    assert (sum(p.numel() for p in net.parameters()), len(net.state_dict()), cfg.backbone.last_relu) == expected


def test_avalanche_recipes_build_avalanches_network_and_init():
    icarl = load_config("icarl_resnet32_cifar100_b0inc10_avalanche")
    assert (icarl.backbone.shortcut, icarl.backbone.last_relu, icarl.backbone.conv_init) == ("pad", False, "fan_in")
    assert icarl.head.init == "kaiming_normal"  # initialize_icarl_net also ran on IcarlNet's 100-way classifier
    assert icarl.data.normalize is False  # ToTensor only: pixels in [0, 1]
    assert icarl.method == {"name": "icarl", "bce_unseen": True}  # IcarlNet's 100 outputs are all in its BCE
    assert (icarl.train.lr, icarl.train.milestones, icarl.train.gamma) == (2.0, [49, 63], 0.2)
    for name in ("finetune", "lwf"):
        cfg = load_config(f"{name}_resnet32_cifar100_b0inc10_avalanche")
        # the same initialised feature extractor; IncrementalClassifier is made after it: nn.Linear's init
        assert (cfg.backbone.conv_init, cfg.head.init, cfg.memory.size) == ("fan_in", "uniform", 0)
        assert cfg.data.normalize is False
        assert (cfg.train.lr, cfg.train.weight_decay) == (0.1, 2e-4)


def _results(headline, **series):
    return {"headline_classifier": headline, "accuracy": series[headline],
            "classifiers": {k: {"accuracy": v} for k, v in series.items()}}


def test_ltcil_record_reads_headline_and_named_classifiers():
    icarl = recipes.recipe("pycil", "icarl")
    rec = recipes.ltcil_record(_results("nme", nme=[50.0, 40.0], linear=[45.0, 30.0]), icarl, 1, 12.5)
    assert rec["accuracy"] == {"nme": [50.0, 40.0], "cnn": [45.0, 30.0]} and rec["wall_s"] == 12.5
    fine = recipes.recipe("pycil", "finetune")
    assert recipes.ltcil_record(_results("logits", logits=[60.0]), fine, 2, 1.0)["accuracy"] == {"cnn": [60.0]}
    with pytest.raises(KeyError, match="linear"):
        recipes.ltcil_record(_results("nme", nme=[1.0]), icarl, 1, 1.0)
    flat = {"headline_classifier": "nme", "accuracy": [50.0], "accuracy_linear": [45.0]}  # an older results.json
    assert recipes.ltcil_record(flat, icarl, 1, 1.0)["accuracy"] == {"nme": [50.0], "cnn": [45.0]}


def test_peer_record_keeps_the_compared_classifiers():
    raw = {"seed": 1993, "commit": "abc", "tasks": [{"cnn": 10.0, "nme": 20.0}, {"cnn": 5.0, "nme": 15.0}]}
    rec = recipes.peer_record(raw, recipes.recipe("pycil", "icarl"), 99.0)
    assert rec["accuracy"] == {"nme": [20.0, 15.0], "cnn": [10.0, 5.0]} and rec["toolkit"] == "pycil"


def _record(toolkit, seed, nme, wall):
    return {"toolkit": toolkit, "method": "icarl", "seed": seed, "accuracy": {"nme": nme}, "wall_s": wall}


def test_summary_gap_spread_tolerance_and_time_ratio():
    records = [_record("pycil", 1993, [60.0, 40.0], 100.0), _record("ltcil", 1993, [61.0, 41.0], 40.0),
               _record("pycil", 1, [56.0, 40.0], 120.0), _record("ltcil", 1, [58.0, 42.0], 50.0)]
    (row,) = recipes.summarise(records)
    assert row.peer == [50.0, 48.0] and row.ltcil == [51.0, 50.0]
    assert row.gap == pytest.approx(1.5)
    assert row.spread == pytest.approx(2.0)  # pycil's range 2.0, ltcil's 1.0
    assert row.tolerance == pytest.approx(2.0) and row.agrees
    assert row.time_ratio == pytest.approx(45.0 / 110.0)
    table = recipes.format_table([row], "pycil")
    assert "icarl" in table and "agrees" in table and "+1.50" in table and "0.41" in table


def test_summary_flags_a_gap_beyond_one_point_and_skips_unpaired_seeds():
    records = [_record("pycil", 1993, [60.0], 10.0), _record("ltcil", 1993, [58.0], 5.0),
               _record("pycil", 1, [70.0], 10.0)]  # seed 1 has no ltcil run yet
    (row,) = recipes.summarise(records)
    assert row.seeds == [1993] and row.tolerance == recipes.TOLERANCE and not row.agrees
    assert "GAP" in recipes.format_table([row], "pycil")


def test_milestones_scale_to_the_short_schedule():
    assert recipes.scale_milestones([60, 120, 170], 200, 5) == [2, 3, 4]  # 1.5, 3.0, 4.25: half up
    assert recipes.scale_milestones([80, 120], 170, 5) == [2, 4]
    assert recipes.scale_milestones([3], 200, 5) == [1]  # never 0
    icarl = recipes.recipe("pycil", "icarl")
    full = recipes.ltcil_overrides(icarl, 5, 1, 4, "/d", scaled=False)
    assert not any("milestones" in o for o in full)


def test_seed_list():
    assert recipes.seed_list(2) == [1993, 1]
    assert recipes.seed_list(0, [5, 7]) == [5, 7]
    with pytest.raises(ValueError, match="--seeds"):
        recipes.seed_list(0)


def test_harness_arguments_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        harness.parse_args(["--peer", "pycil", "--methods", "proto_lt", "--out", str(tmp_path)])
    assert "no pycil recipe for 'proto_lt'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        harness.parse_args(["--peer", "avalanche", "--out", str(tmp_path)])
    assert "--peer-python" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        harness.parse_args(["--peer", "pycil", "--peer-python", "python", "--pycil", str(tmp_path),
                            "--out", str(tmp_path)])
    assert "not a PyCIL checkout" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        harness.parse_args(["--peer", "pycil", "--only", "ltcil", "--epochs", "0", "--out", str(tmp_path)])
    args = harness.parse_args(["--peer", "avalanche", "--only", "ltcil", "--out", str(tmp_path)])
    assert args.methods == ["naive", "lwf", "icarl"] and args.seed_values == [1993, 1]


def test_dry_run_prints_both_commands_and_runs_nothing(tmp_path, capsys):
    harness.main(["--peer", "pycil", "--methods", "icarl", "--seeds", "1", "--epochs", "3", "--tasks", "2",
                  "--out", str(tmp_path / "out"), "--dry-run"])
    out = capsys.readouterr().out
    assert "pycil_adapter.py --method icarl --epochs 3 --tasks 2 --seed 1993" in out
    assert "--init-milestones 1 2 3 --milestones 1 2" in out  # 60/120/170 of 200 and 80/120 of 170, at 3 epochs
    assert "-m ltcil run icarl_resnet32_cifar100_b0inc10_pycil train.epochs=3 train.first_task.epochs=3" in out
    assert "scenario.max_tasks=2" in out and "train.first_task.milestones=[1, 2, 3]" in out
    assert not any((tmp_path / "out").iterdir())


def test_peer_models_are_saved_beside_the_peer_result_on_request(tmp_path, capsys):
    harness.main(["--peer", "pycil", "--methods", "wa", "--seed-list", "1", "--epochs", "5", "--tasks", "4",
                  "--out", str(tmp_path / "out"), "--dry-run", "--save-peer-models"])
    out = capsys.readouterr().out
    assert f"--save-models {tmp_path / 'out' / 'pycil_wa_s1_e5_t4_ms_models'}" in out
    with pytest.raises(SystemExit):  # the Avalanche adapter keeps no models
        harness.parse_args(["--peer", "avalanche", "--only", "ltcil", "--out", str(tmp_path), "--save-peer-models"])


def test_stored_records_are_reused(tmp_path, capsys):
    out, checkout = tmp_path / "out", tmp_path / "pycil"
    out.mkdir()
    checkout.mkdir()
    (checkout / "main.py").write_text("")
    tag = "icarl_s1993_e3_t2_ms"
    (out / f"pycil_{tag}.record.json").write_text(json.dumps(_record("pycil", 1993, [50.0, 30.0], 10.0)))
    (out / f"ltcil_pycil_{tag}.record.json").write_text(json.dumps(_record("ltcil", 1993, [50.5, 30.5], 4.0)))
    harness.main(["--peer", "pycil", "--methods", "icarl", "--seeds", "1", "--epochs", "3", "--tasks", "2",
                  "--out", str(out), "--peer-python", "python", "--pycil", str(checkout)])
    printed = capsys.readouterr().out
    assert "adapter" not in printed and "-m ltcil" not in printed  # nothing ran
    (summary,) = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert summary["gap"] == pytest.approx(0.5) and summary["agrees"] and summary["time_ratio"] == pytest.approx(0.4)
    assert len((out / "records.jsonl").read_text().splitlines()) == 2


def test_shared_start_maps_a_peer_state_by_position_kind_and_shape():
    import torch

    import shared_start

    ours = {"backbone.stem.0.weight": torch.zeros(4, 3, 3, 3), "backbone.stem.1.running_mean": torch.zeros(4),
            "head.weight": torch.zeros(10, 4), "head.bias": torch.zeros(10)}
    peer = {"convnet.conv_1_3x3.weight": torch.ones(4, 3, 3, 3), "convnet.bn_1.running_mean": torch.full((4,), 2.0),
            "convnet.fc.weight": torch.zeros(100, 4),  # PyCIL's unused standalone classifier: skipped
            "fc.weight": torch.full((10, 4), 3.0), "fc.bias": torch.full((10,), 4.0)}
    mapped = shared_start.map_state(peer, ours)
    assert list(mapped) == list(ours)
    assert [float(v.flatten()[0]) for v in mapped.values()] == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(SystemExit, match="entry mismatch: peer fc.weight"):
        shared_start.map_state({**peer, "fc.weight": torch.zeros(10, 5)}, ours)
    # PyCIL keeps PODNet's learned scale as a 1-element vector, ltcil as a 0-d tensor
    scaled = shared_start.map_state({**peer, "fc.sigma": torch.tensor([5.0])}, {**ours, "head.sigma": torch.tensor(1.0)})
    assert scaled["head.sigma"].shape == () and float(scaled["head.sigma"]) == 5.0
    swapped = dict(reversed(list(peer.items())))
    with pytest.raises(SystemExit, match="entry mismatch"):
        shared_start.map_state(swapped, ours)
    with pytest.raises(SystemExit, match="not the same network"):
        shared_start.map_state(dict(list(peer.items())[:4]), ours)


def test_shared_start_maps_pycils_dernet_after_the_first_task_onto_ltcils_der(tmp_path):
    """PyCIL's DERNet after task 0 holds its extractor (with resnet32's unused standalone `fc`), the classifier and
    the auxiliary classifier, which ltcil's DER makes only from the second task on: the unused entries are
    skipped and everything else lands on ltcil's DER network."""
    import torch
    from helpers import tiny_config

    import shared_start
    from ltcil.engine.runner import Experiment

    Experiment(tiny_config("method.name=der", "scenario.max_tasks=1"), tmp_path / "run").run()
    ours = torch.load(tmp_path / "run" / "checkpoints" / "task_000.pt", weights_only=True)["method"]["model"]
    assert not any(k.startswith("aux.") for k in ours)
    peer = {}
    for i, (k, v) in enumerate(ours.items()):
        if k.startswith("head.") and "convnets.0.fc.weight" not in peer:
            peer["convnets.0.fc.weight"] = torch.zeros(10, 3)
            peer["convnets.0.fc.bias"] = torch.zeros(10)
        name = k.replace("backbones.0.", "convnets.0.").replace("head.", "fc.")
        peer[name] = v + i + 1 if v.is_floating_point() else v
    peer["aux_fc.weight"], peer["aux_fc.bias"] = torch.zeros(3, 8), torch.zeros(3)
    mapped = shared_start.map_state(peer, ours)
    assert list(mapped) == list(ours)
    for i, (k, v) in enumerate(ours.items()):
        if v.is_floating_point():
            assert torch.equal(mapped[k], v + i + 1), k
    with pytest.raises(SystemExit, match="not the same network"):  # a second extractor is not skipped
        shared_start.map_state({**peer, "convnets.1.stage_1.0.conv_a.weight": torch.zeros(1)}, ours)


def test_shared_start_chooses_the_memory_again_with_the_model_it_was_given(tmp_path):
    """iCaRL's shared start: with the checkpoint's own model, choosing again gives the memory the task chose; with
    other weights, another memory and other class means."""
    import shutil

    import torch
    from helpers import tiny_config

    import shared_start
    from ltcil.engine.runner import Experiment

    Experiment(tiny_config("method.name=icarl", "scenario.max_tasks=1"), tmp_path / "run").run()
    ckpt = tmp_path / "run" / "checkpoints" / "task_000.pt"
    before = torch.load(ckpt, weights_only=True)["method"]
    shutil.copytree(tmp_path / "run", tmp_path / "same")
    shared_start.reselect_memory(tmp_path / "same", 0)
    same = torch.load(tmp_path / "same" / "checkpoints" / "task_000.pt", weights_only=True)["method"]
    def chosen(memory):
        return memory["classes"], [t.tolist() for t in memory["indices"]]

    assert chosen(same["memory"]) == chosen(before["memory"])
    assert torch.equal(same["class_means"], before["class_means"])

    shutil.copytree(tmp_path / "run", tmp_path / "other")
    path = tmp_path / "other" / "checkpoints" / "task_000.pt"
    state = torch.load(path, weights_only=True)
    gen = torch.Generator().manual_seed(0)
    state["method"]["model"] = {k: v + 0.5 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                                for k, v in state["method"]["model"].items()}
    torch.save(state, path)
    shared_start.reselect_memory(tmp_path / "other", 0)
    other = torch.load(path, weights_only=True)["method"]
    assert chosen(other["memory"]) != chosen(before["memory"])
    assert not torch.allclose(other["class_means"], before["class_means"])
    assert set(shared_start.seen_class_accuracy(tmp_path / "other")) == {"linear", "nme"}


def test_shared_start_takes_the_peers_own_exemplars_by_their_pixels(tmp_path):
    """--peer-memory: a peer's exemplars (pixels and labels, the peer's order within a class) become the
    checkpoint's memory as indices of ltcil's training split; an image the split lacks is named, not guessed."""
    import numpy as np
    import torch
    from helpers import tiny_config

    import shared_start
    from ltcil.engine.runner import Experiment

    exp = Experiment(tiny_config("method.name=dgr", "scenario.max_tasks=1"), tmp_path / "run")
    exp.run()
    images = np.ascontiguousarray(exp.dataset.train.images)
    labels = exp.data.labels["train"].cpu().numpy()
    chosen = {c: np.flatnonzero(labels == c)[::-1][:3] for c in (0, 1)}  # not the herding's choice or order
    picked = np.concatenate([chosen[0], chosen[1]])
    np.savez(tmp_path / "task_000_memory.npz", images=images[picked], labels=labels[picked])
    shared_start.peer_memory(tmp_path / "run", 0, tmp_path / "task_000_memory.npz")
    memory = torch.load(tmp_path / "run" / "checkpoints" / "task_000.pt", weights_only=True)["method"]["memory"]
    assert list(memory["classes"]) == [0, 1]
    assert [t.tolist() for t in memory["indices"]] == [chosen[0].tolist(), chosen[1].tolist()]

    foreign = images[picked].copy()
    foreign[0] = 255 - foreign[0]
    np.savez(tmp_path / "bad_memory.npz", images=foreign, labels=labels[picked])
    with pytest.raises(SystemExit, match="bad_memory.npz: an exemplar of class 0"):
        shared_start.peer_memory(tmp_path / "run", 0, tmp_path / "bad_memory.npz")
    with pytest.raises(SystemExit, match="no .*other/task_000_memory.npz"):  # named before anything is copied
        shared_start.main(["--peer-model", str(tmp_path / "other" / "task_000.pt"), "--ltcil-run",
                           str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--peer-memory"])
    assert not (tmp_path / "out").exists()


def test_dgr_replay_of_the_engines_own_task_ends_at_its_network(tmp_path, capsys):
    """pilot_dgr_steps.py --replay mirrors the engine: the batches, start and end of ltcil's own second task
    (recorded as pilot_adapter.py --record-task records PILOT's), replayed from the first task's checkpoint, give
    the engine's network exactly and its accuracy; so do the same images augmented again by --augment ltcil
    from the engine's augmentation generator."""
    import shutil

    import torch
    from helpers import tiny_config

    import pilot_dgr_steps
    from ltcil.engine.runner import Experiment
    from ltcil.engine.seed import task_seed

    Experiment(tiny_config("method.name=dgr", "scenario.max_tasks=1"), tmp_path / "one").run()
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    exp = Experiment(tiny_config("method.name=dgr", "scenario.max_tasks=2"), tmp_path / "two", progress=False,
                     log=lambda *_: None)
    exp.restore()
    method = exp.method
    record = {"epochs": [], "lr": [], "indices": []}  # and the task's raw images, to augment them again
    begin_task, begin_epoch, step = method.begin_task, method.begin_epoch, method.training_step
    batch = exp.data.batch

    def recording_batch(split, idx, augment=None, gen=None):
        if augment is not None:  # a training batch: its positions in the split
            record["indices"][-1].append(idx.clone())
        return batch(split, idx, augment, gen)

    def recording_begin_task(task, ctx):
        begin_task(task, ctx)
        record["start"] = {k: v.clone() for k, v in method.model.state_dict().items()}

    def recording_begin_epoch(epoch, epochs, ctx=None):
        record["epochs"].append([])
        record["indices"].append([])
        record["lr"].append(0.05)
        begin_epoch(epoch, epochs, ctx=ctx)

    def recording_step(x, y):
        record["epochs"][-1].append((x.clone(), y.clone()))
        return step(x, y)

    method.begin_task, method.begin_epoch, method.training_step = (recording_begin_task, recording_begin_epoch,
                                                                   recording_step)
    exp.data.batch = recording_batch
    exp.run()
    record["label_distribution"] = [int(c) for c in method.train_counts]
    # as PILOT's recording: the task's training images (its data and the memory), batches as positions in them
    used = torch.cat([idx for epoch in record["indices"] for idx in epoch]).unique()
    record["images"] = exp.data.images["train"][used].permute(0, 2, 3, 1).clone()
    record["labels"] = exp.data.labels["train"][used]
    record["indices"] = [[torch.searchsorted(used, idx) for idx in epoch] for epoch in record["indices"]]
    torch.save(record, tmp_path / "task_001_replay.pt")
    torch.save(method.model.state_dict(), tmp_path / "task_001.pt")
    assert sum(len(batches) for batches in record["epochs"]) > 0

    pilot_dgr_steps.main(["--replay", str(tmp_path / "task_001_replay.pt"), "--ltcil-run", str(tmp_path / "one"),
                          "--threads", str(torch.get_num_threads())])
    out = capsys.readouterr().out
    assert "after the task: parameters 0.0e+00 from PILOT's" in out
    scores = [line.split(":", 1)[1] for line in out.splitlines() if "'s network:" in line]
    assert len(scores) == 2 and scores[0] == scores[1], out

    # the same images in the same batches, augmented again by ltcil's pipeline from the engine's own augmentation
    # generator: the same batches, so the same network (what --augment ltcil feeds is what the engine feeds)
    pilot_dgr_steps.main(["--replay", str(tmp_path / "task_001_replay.pt"), "--ltcil-run", str(tmp_path / "one"),
                          "--threads", str(torch.get_num_threads()), "--augment", "ltcil",
                          "--aug-seed", str(task_seed(exp.cfg.seed, 1, 2))])
    out = capsys.readouterr().out
    assert "after the task: parameters 0.0e+00 from PILOT's" in out
    # a fresh stream (other order, rows and crops) ends elsewhere
    pilot_dgr_steps.main(["--replay", str(tmp_path / "task_001_replay.pt"), "--ltcil-run", str(tmp_path / "one"),
                          "--threads", str(torch.get_num_threads()), "--augment", "ltcil", "--stream-seed", "5"])
    out = capsys.readouterr().out
    assert "after the task: parameters 0.0e+00" not in out and "after the task: parameters" in out


def test_facil_peers_run_the_reference_script_and_seed_the_split_not_the_order(tmp_path):
    # Long-Tailed-CIL / imbalanced_cil fix the class order per scenario; the seed trains and draws the split
    repo = tmp_path / "imbalanced_cil"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "main_incremental.py").write_text("")
    args = harness.parse_args(["--peer", "imbalanced-cil", "--repo", str(repo), "--peer-python", "py",
                               "--methods", "dgr_lt", "--epochs", "5", "--tasks", "4", "--seed-list", "0",
                               "--out", str(tmp_path / "out")])
    rec = args.recipes[0]
    cmd = harness.peer_command(args, rec, 0, tmp_path / "r.json")
    assert cmd[cmd.index("--approach") + 1] == "DGR" and cmd[cmd.index("--scenario") + 1] == "lt"
    assert cmd[cmd.index("--stop-at") + 1] == "4" and cmd[cmd.index("--first") + 1] == "50"
    assert cmd[cmd.index("--milestones") + 1:cmd.index("--milestones") + 3] == ["3", "4"]  # 80, 120 of 160
    overrides = recipes.ltcil_overrides(rec, epochs=5, seed=0, tasks=4, data_root="/data")
    cfg = load_config(rec.config, overrides)
    assert cfg.scenario.order == "seed:1993" and cfg.scenario.seed == 0 and cfg.train.milestones == [3, 4]
    assert cfg.scenario.val_rule == "facil" and cfg.scenario.longtail_images == "ldam_drw"
    with pytest.raises(SystemExit):
        harness.parse_args(["--peer", "imbalanced-cil", "--repo", str(tmp_path), "--peer-python", "py",
                            "--out", str(tmp_path / "out")])


def test_facil_eeil_fine_tunes_for_the_parity_epochs_on_both_sides(tmp_path):
    # FACIL's EEIL fine-tunes 40 epochs whatever --nepochs says: the parity schedule sets both sides' to it,
    # with the task's lr steps (FACIL applies model.schedule_step in that loop too)
    repo = tmp_path / "Long-Tailed-CIL"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "main_incremental.py").write_text("")
    args = harness.parse_args(["--peer", "long-tailed-cil", "--repo", str(repo), "--peer-python", "py",
                               "--methods", "eeil_ltio", "--epochs", "5", "--tasks", "4", "--seed-list", "1",
                               "--out", str(tmp_path / "out")])
    rec = args.recipes[0]
    cmd = harness.peer_command(args, rec, 1, tmp_path / "r.json")
    assert cmd[cmd.index("--approach") + 1] == "eeil" and cmd[cmd.index("--scenario") + 1] == "ltio"
    assert cmd[cmd.index("--") + 1:] == ["--nepochs-finetuning", "5"]
    cfg = load_config(rec.config, recipes.ltcil_overrides(rec, epochs=5, seed=1, tasks=4, data_root="/data"))
    assert cfg.method["variant"] == "facil" and cfg.method["finetune_epochs"] == 5
    assert cfg.method["finetune_milestones"] == cfg.train.milestones == [3, 4]
    assert cfg.scenario.longtail_by == "class_id" and cfg.scenario.seed == 1


def test_facil_adapter_passes_the_reference_scripts_cifar100_settings():
    import argparse

    import facil_adapter

    a = argparse.Namespace(seed=1, scenario="ltio", tasks=11, epochs=5, approach="DGR", first=50, workers=0,
                           stop_at=4, milestones=[3, 4], save_models=None, extra=[])
    args = facil_adapter.script_args(a, "/tmp/results")
    value = {k: args[i + 1] for i, k in enumerate(args[:-1]) if k.startswith("--")}
    # script/main.sh (imbalanced_cil) and scripts/script_cifar100_no_gridsearch.sh (Long-Tailed-CIL), CIFAR-100
    assert value["--datasets"] == "cifar100_ltio" and value["--network"] == "resnet32"
    assert (value["--lr"], value["--lr-factor"], value["--momentum"], value["--weight-decay"]) == ("0.1", "10", "0.9",
                                                                                                   "5e-4")
    assert value["--batch-size"] == "128" and value["--num-exemplars-per-class"] == "20"
    assert value["--exemplar-selection"] == "herding" and value["--nc-first-task"] == "50"
    assert value["--stop-at-task"] == "4" and value["--nepochs"] == "5" and value["--seed"] == "1"
    assert args[args.index("--schedule_step") + 1:args.index("--schedule_step") + 3] == ["3", "4"]


@pytest.mark.parametrize("epochs", [5, 16, 200])
def test_ldam_drw_parity_runs_the_same_lr_and_reweighting_epochs_on_both_sides(tmp_path, epochs):
    # LDAM-DRW's cifar_train.py: lr * e/5 for 1-based e <= 5, x0.01 after 160, x0.0001 after 180, DRW from 160 of
    # 200; the adapter gives the reference that shape at the parity epochs, ltcil's overrides the same sequence
    import types

    import ldam_adapter

    from ltcil.engine.optim import lr_factor

    repo = tmp_path / "LDAM-DRW"
    repo.mkdir()
    (repo / "cifar_train.py").write_text("")
    args = harness.parse_args(["--peer", "ldam-drw", "--repo", str(repo), "--peer-python", "py", "--methods",
                               "ldam_drw", "--epochs", str(epochs), "--tasks", "1", "--seed-list", "0",
                               "--out", str(tmp_path / "out")])
    rec = args.recipes[0]
    cmd = harness.peer_command(args, rec, 0, tmp_path / "r.json")
    value = {k: cmd[i + 1] for i, k in enumerate(cmd[:-1]) if k.startswith("--")}
    assert (value["--loss"], value["--rule"]) == ("LDAM", "DRW")
    warmup, drw = int(value["--warmup"]), int(value["--drw"])
    milestones = [int(m) for m in cmd[cmd.index("--milestones") + 1:cmd.index("--milestones") + 3]]
    if epochs == 200:
        assert (warmup, milestones, drw) == (5, [160, 180], 160)  # the released constants
    # the adapter's schedule, on a stand-in module holding the released DRW expression
    source = tmp_path / "stand_in.py"
    source.write_text("def main_worker():\n    return [epoch // 160 for epoch in range(EPOCHS)]\n")
    module = types.ModuleType("stand_in")
    module.__file__ = str(source)
    exec(compile(source.read_text(), str(source), "exec"), module.__dict__)
    import linecache

    linecache.checkcache(str(source))
    ldam_adapter.short_schedule(module, 0.1, warmup, milestones, drw)
    module.EPOCHS = epochs
    reweighted = module.main_worker()
    cfg = load_config(rec.config, recipes.ltcil_overrides(rec, epochs=epochs, seed=0, tasks=1, data_root="/data"))
    assert cfg.scenario.longtail_images == "ldam_drw" and cfg.scenario.val_per_class == 0
    for epoch in range(epochs):
        group = {"lr": None}
        module.adjust_learning_rate(types.SimpleNamespace(param_groups=[group]), epoch, types.SimpleNamespace(lr=0.1))
        assert group["lr"] == pytest.approx(0.1 * lr_factor(cfg.train, epoch, epochs)), epoch
        assert bool(reweighted[epoch]) == (epoch >= cfg.method["drw_epoch"]), epoch


def _balms_lr(last_epoch: int, epochs: int, warmup: int, base: float = 0.05, peak: float = 0.1) -> float:
    """Balanced Softmax's released CosineAnnealingLRWarmup (utils.py) for one param group at its base lr 0.05,
    stepped at the start of 1-based epoch `last_epoch`: linear from 0.05 towards 0.1 below `warmup`, then a cosine
    from 0.1 reaching 0 at epoch `epochs`."""
    import math

    if last_epoch < warmup:
        return (peak - base) / (warmup - 1) * (last_epoch - 1) + base
    return peak * (1 + math.cos(math.pi * (last_epoch - warmup) / (epochs - warmup))) / 2


@pytest.mark.parametrize("epochs", [3, 6, 16, 591])
def test_balms_parity_runs_the_released_lr_sequence_on_both_sides(tmp_path, epochs):
    from ltcil.engine.optim import lr_factor

    repo = tmp_path / "BalancedMetaSoftmax"
    repo.mkdir()
    (repo / "run_networks.py").write_text("")
    for method, loss in (("balanced_softmax", "balanced_softmax"), ("softmax", "softmax")):
        args = harness.parse_args(["--peer", "balms", "--repo", str(repo), "--peer-python", "py", "--methods", method,
                                   "--epochs", str(epochs), "--tasks", "1", "--seed-list", "0",
                                   "--out", str(tmp_path / "out")])
        rec = args.recipes[0]
        cmd = harness.peer_command(args, rec, 0, tmp_path / "r.json")
        value = {k: cmd[i + 1] for i, k in enumerate(cmd[:-1]) if k.startswith("--")}
        assert value["--loss"] == loss and int(value["--epochs"]) == epochs
        warmup = int(value["--warmup"])
        assert warmup == (37 if epochs == 591 else 2)  # the released 800 iterations of 22 batches; at least 2
        cfg = load_config(rec.config, recipes.ltcil_overrides(rec, epochs=epochs, seed=0, tasks=1, data_root="/d"))
        assert cfg.method["name"] == ("balanced_softmax" if loss == "balanced_softmax" else "finetune")
        t = cfg.train
        assert (t.batch_size, t.drop_last, t.autoaugment, t.cutout, t.weight_decay) == (512, True, "cifar10", 16, 5e-4)
        assert cfg.scenario.longtail_images == "ldam_drw" and cfg.scenario.val_per_class == 0
        ours = [t.lr * lr_factor(t, e, epochs) for e in range(epochs)]
        assert ours == pytest.approx([_balms_lr(e + 1, epochs, warmup) for e in range(epochs)], abs=1e-12)
        assert ours[-1] == pytest.approx(0.0, abs=1e-12)


def test_balms_decoupled_parity_runs_kangs_stage_two_on_both_sides(tmp_path):
    import torch

    from ltcil.engine.optim import lr_factor

    repo = tmp_path / "BalancedMetaSoftmax"
    repo.mkdir()
    (repo / "run_networks.py").write_text("")
    args = harness.parse_args(["--peer", "balms", "--repo", str(repo), "--peer-python", "py", "--methods",
                               "decoupled", "--epochs", "6", "--tasks", "1", "--seed-list", "0",
                               "--out", str(tmp_path / "out")])
    rec = args.recipes[0]
    cmd = harness.peer_command(args, rec, 0, tmp_path / "r.json")
    value = {k: cmd[i + 1] for i, k in enumerate(cmd[:-1]) if k.startswith("--")}
    assert "--decouple" in cmd and value["--loss"] == "softmax"
    assert (value["--epochs"], value["--crt-epochs"], value["--lws-epochs"]) == ("6", "6", "6")
    cfg = load_config(rec.config, recipes.ltcil_overrides(rec, epochs=6, seed=0, tasks=1, data_root="/d"))
    m = cfg.method
    assert (m["name"], m["sampler"], m["epochs"], m["lws_epochs"], m["taus"]) == ("decoupled", "class_balanced", 6,
                                                                                   6, [1.0])
    assert (m["lr"], m["lws_lr"], m["weight_decay"], m["lws_weight_decay"], m["batch_size"]) == (0.2, 0.2, 5e-4,
                                                                                                 5e-4, 512)
    assert m["stage2_features"] == "augmented" and cfg.scenario.val_per_class == 0
    assert set(rec.classifiers.values()) == {"ce", "crt", "lws", "tau_norm"}
    # stage 2's lr per epoch: the released run_networks.train steps CosineAnnealingLR(T=epochs, eta_min=0) before
    # each epoch's batches
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 6, eta_min=0.0)
    released = []
    for _ in range(6):
        opt.step()
        sched.step()
        released.append(opt.param_groups[0]["lr"])
    stage = dataclasses.replace(cfg.train, schedule=m["stage2_schedule"], warmup_epochs=0)
    assert [m["lr"] * lr_factor(stage, e, 6) for e in range(6)] == pytest.approx(released, abs=1e-12)


def _tiny_cifar100_archive(folder: Path, per_class: int) -> np.ndarray:
    """A CIFAR-100 archive in the official layout with `per_class` images of each of 3 classes, interleaved;
    each image's first byte is its position in the archive. Returns the training labels."""
    import io
    import pickle
    import tarfile

    labels = np.tile(np.arange(3), per_class)
    data = np.zeros((len(labels), 3072), dtype=np.uint8)
    data[:, 0] = np.arange(len(labels))
    parts = {"meta": {"fine_label_names": ["a", "b", "c"]},
             "train": {"data": data, "fine_labels": labels.tolist()},
             "test": {"data": data[:3], "fine_labels": [0, 1, 2]}}
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "cifar-100-python.tar.gz", "w:gz") as tar:
        for name, obj in parts.items():
            raw = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return labels


def test_per_class_subset_keeps_the_first_images_of_every_class_for_both_sides(tmp_path):
    import per_class_subset as subset
    from pycil_adapter import read_cifar100

    from ltcil.config import DataConfig
    from ltcil.data.arrays import load

    labels = _tiny_cifar100_archive(tmp_path / "full", per_class=5)
    assert subset.keep_first(labels, 2).tolist() == [0, 1, 2, 3, 4, 5]
    assert subset.keep_first(np.array([4, 4, 4, 1]), 2).tolist() == [0, 1, 3]
    with pytest.raises(ValueError):
        subset.keep_first(labels, 0)
    out = subset.write_subset(tmp_path / "full", 2, tmp_path / "sub")
    train_x, train_y, test_x, _ = read_cifar100(out / subset.ARCHIVE)  # what the peers read
    assert train_y.tolist() == [0, 1, 2, 0, 1, 2] and train_x[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]
    ours = load(DataConfig(name="npz", root=str(out / subset.NPZ)))  # what ltcil reads
    assert np.array_equal(ours.train.images, train_x) and ours.train.labels.tolist() == train_y.tolist()
    assert np.array_equal(ours.test.images, test_x) and len(ours.test.labels) == 3


def test_harness_trains_both_sides_on_the_subset(tmp_path, capsys):
    _tiny_cifar100_archive(tmp_path / "data", per_class=4)
    harness.main(["--peer", "pilot", "--methods", "l2p", "--seed-list", "1", "--epochs", "2", "--tasks", "3",
                  "--train-per-class", "2", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                  "--dry-run"])
    out = capsys.readouterr().out
    subset = (tmp_path / "out" / "cifar100_train2").resolve()
    assert f"--data {subset} " in out and "--exp batchwise_prompt=false" in out and "method.batchwise=never" in out
    assert out.rstrip().endswith(f"data.name=npz data.root={subset / 'cifar100.npz'} --out "
                                 f"{tmp_path / 'out' / 'ltcil_pilot_l2p_s1_e2_t3_ms_n2'} --force --quiet")
    with pytest.raises(SystemExit):
        harness.parse_args(["--peer", "long-tailed-cil", "--only", "ltcil", "--train-per-class", "5",
                            "--out", str(tmp_path)])


def test_shared_start_continues_from_the_given_model_with_set_config_changes(tmp_path):
    """shared_start.py end to end on digits: ltcil's own first model stands in for the peer's; --set changes the
    later tasks' config (folder and checkpoint alike, or resume would refuse), a wrong key is named first."""
    import subprocess

    import torch

    run = tmp_path / "run"
    base = [sys.executable, "-m", "ltcil", "run", "quickstart_digits", "method.name=finetune", "memory.size=0",
            "train.epochs=1", "scenario.max_tasks=2", "log.report=never", "train.progress=false", "train.threads=1"]
    subprocess.run([*base, "--out", str(run), "--quiet"], check=True, capture_output=True)
    peer = tmp_path / "task_000.pt"
    torch.save(torch.load(run / "checkpoints" / "task_000.pt", weights_only=True)["method"]["model"], peer)
    script = [sys.executable, str(PEERS / "shared_start.py"), "--peer-model", str(peer), "--ltcil-run", str(run)]
    bad = subprocess.run([*script, "--out", str(tmp_path / "bad"), "--set", "train.crop_style=x"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "train.crop_style" in bad.stderr and not (tmp_path / "bad").exists()
    done = subprocess.run([*script, "--out", str(tmp_path / "shared"), "--set", "train.lr=0.002"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert load_config(tmp_path / "shared" / "config.yaml").train.lr == 0.002
    results = json.loads((tmp_path / "shared" / "results.json").read_text())
    own = json.loads((run / "results.json").read_text())
    assert results["accuracy"][0] == own["accuracy"][0]  # the same first model
    assert len(results["accuracy"]) == 2
