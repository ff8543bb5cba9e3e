import pytest
import yaml

from ltcil.config import dump_config, from_dict, load_config, method_defaults_applied, shipped_configs
from ltcil.engine.runner import check_components
from ltcil.errors import ConfigError

QUICKSTART_PODNET_LR, QUICKSTART_PODNET_EPOCHS = 0.1, 60  # configs/quickstart_digits.yaml, by_method.podnet


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text,match",
    [
        ("train:\n  epoch: 3\n", r"unknown config key 'train.epoch'. Did you mean 'train.epochs'"),
        ("trian:\n  lr: 1\n", r"unknown config key 'trian'. Did you mean 'train'"),
        ("train:\n  epochs: three\n", r"train.epochs: expected int, got 'three'"),
        ("train:\n  lr: -1\n", r"train.lr: -1.0 must be"),
        ("train:\n  batch_size: 0\n", r"train.batch_size: 0 must be > 0"),
        ("train:\n  optimizer: rmsprop\n", r"train.optimizer: 'rmsprop' is not one of sgd, adam, adamw"),
        ("scenario:\n  order: random\n", r"scenario.order: 'random' is not valid"),
        ("scenario:\n  imbalance_factor: 0.5\n", r"scenario.imbalance_factor: 0.5 must be >= 1"),
        ("scenario:\n  val_fraction: 1.5\n", r"scenario.val_fraction"),
        ("scenario:\n  increment: [10, -2]\n", r"scenario.increment"),
        ("memory:\n  selection: kmeans\n", r"memory.selection: 'kmeans'"),
        ("device: tpu\n", r"device: 'tpu'"),
        ("train: 5\n", r"train: expected a mapping"),
        ("- a\n- b\n", r"must hold a mapping"),
        ("train:\n  lr: [\n", r"not valid YAML"),
        ("train:\n  flip: 1\n", r"train.flip: expected bool"),
        ("train:\n  color_jitter: [0.2, 0.1]\n", r"train.color_jitter: \[0.2, 0.1\] must be a strength"),
        ("train:\n  color_jitter: [0.2, 0, -1]\n", r"train.color_jitter"),
        ("train:\n  color_jitter: .nan\n", r"train.color_jitter: nan is not a finite number"),
        ("backbone:\n  shortcut: identity\n", r"backbone.shortcut: 'identity' is not one of conv, pad"),
        ("head:\n  init: normal\n", r"head.init: 'normal' is not one of uniform, kaiming_uniform, kaiming_normal"),
        ("scenario:\n  max_tasks: -1\n", r"scenario.max_tasks: -1 must be >= 0"),
    ],
)
def test_bad_configs_name_key_value_and_file(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    if "mapping of sections" not in str(info.value) and "YAML" not in str(info.value):
        assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "override,match",
    [
        ("method.name=icrl", r"unknown method 'icrl'.*Did you mean 'icarl'"),
        ("data.name=cifar1000", r"data.name: unknown dataset 'cifar1000'"),
        ("backbone.name=resnet33", r"backbone.name: unknown backbone 'resnet33'"),
        ("method.temperature=3", r"unknown config key 'method.temperature'"),
    ],
)
def test_bad_component_names_fail_before_data_loads(override, match):
    cfg = load_config(None, [override])
    with pytest.raises(ConfigError, match=match):
        check_components(cfg)


def test_overrides_and_yaml_values():
    cfg = load_config(None, ["train.epochs=2", "scenario.order=[3,1,2]", "train.flip=false", "train.lr=1e-3"])
    assert cfg.train.epochs == 2 and cfg.scenario.order == [3, 1, 2]
    assert cfg.train.flip is False and cfg.train.lr == pytest.approx(1e-3)


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])


def test_resolved_config_round_trips():
    cfg = load_config(None, ["train.epochs=3", "method.name=bic", "method.T=3.0"])
    again = from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_base_inheritance_and_method_switch(tmp_path):
    write(tmp_path, "method:\n  name: bic\n  T: 3.0\ntrain:\n  epochs: 7\n  lr: 0.5\n", "parent.yaml")
    child = write(tmp_path, "base: parent.yaml\nmethod:\n  name: lwf\ntrain:\n  epochs: 2\n")
    cfg = load_config(child)
    assert cfg.method == {"name": "lwf"}  # bic's options are not carried to another method
    assert cfg.train.epochs == 2 and cfg.train.lr == 0.5


def test_base_cycle_is_reported(tmp_path):
    write(tmp_path, "base: b.yaml\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_validates(name):
    cfg = load_config(name)
    check_components(cfg)


def test_missing_config_file_suggests_shipped_name():
    with pytest.raises(ConfigError, match="Did you mean the shipped config 'icarl_resnet32_cifar100_b0inc10'"):
        load_config("icarl_resnet32_cifar100_b0inc1")


def test_first_task_settings_and_the_deprecated_initial_keys(tmp_path):
    from ltcil.errors import LtcilWarning

    cfg = load_config(None, ["train.first_task.epochs=7", "train.first_task.milestones=[3]"])
    assert cfg.train.first_task.epochs == 7 and cfg.train.first_task.milestones == [3]
    old = write(tmp_path, "train:\n  initial_epochs: 7\n  initial_weight_decay: 0.001\n")
    with pytest.warns(LtcilWarning, match="train.initial_epochs is deprecated: use train.first_task.epochs"):
        cfg = load_config(old)
    assert cfg.train.first_task.epochs == 7 and cfg.train.first_task.weight_decay == 0.001
    both = write(tmp_path, "train:\n  initial_epochs: 7\n  first_task:\n    epochs: 8\n")
    with pytest.raises(ConfigError, match="train.initial_epochs and train.first_task.epochs are both set"):
        load_config(both)


def test_off_and_on_stay_words_for_string_keys_and_booleans_for_bool_keys(tmp_path):
    """YAML 1.1 reads on / off / yes / no as booleans, which made `train.compile: off` a type error; ltcil reads
    YAML 1.2 booleans (true / false) and lets bool keys take those words."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  compile: off\n  flip: off\n  amp: yes\n")
    cfg = load_config(str(path), ["log.report=never", "train.channels_last=no"])
    assert cfg.train.compile == "off" and cfg.train.flip is False and cfg.train.amp is True
    assert cfg.train.channels_last is False and cfg.log.report == "never"
    assert load_config(None, ["train.compile=off"]).train.compile == "off"


def test_fixed_channel_statistics_replace_the_training_splits(tmp_path):
    from helpers import tiny_config

    from ltcil.engine.runner import Experiment

    exp = Experiment(tiny_config("data.mean=[0.5, 0.4, 0.3]", "data.std=[0.2, 0.2, 0.25]"), tmp_path)
    assert exp.data.mean.flatten().tolist() == pytest.approx([0.5, 0.4, 0.3])
    assert exp.data.std.flatten().tolist() == pytest.approx([0.2, 0.2, 0.25])
    with pytest.raises(ConfigError, match="data.mean / data.std"):
        load_config(None, ["data.mean=[0.5, 0.4]", "data.std=[0.2]"])
    with pytest.raises(ConfigError, match="data.mean: 2 value"):
        Experiment(tiny_config("data.mean=[0.5, 0.4]", "data.std=[0.2, 0.2]"), tmp_path / "b")


def test_by_method_block_applies_to_the_run_method_and_overrides_win(tmp_path):
    path = write(tmp_path, "method:\n  name: icarl\ntrain:\n  epochs: 12\n  lr: 0.01\n"
                           "by_method:\n  podnet:\n    train:\n      epochs: 60\n      lr: 0.1\n"
                           "    method:\n      finetune_epochs: 5\n")
    icarl = load_config(path)
    assert icarl.method == {"name": "icarl"} and icarl.train.epochs == 12 and icarl.train.lr == 0.01
    podnet = load_config(path, ["method.name=podnet"])
    assert podnet.method == {"name": "podnet", "finetune_epochs": 5}
    assert podnet.train.epochs == 60 and podnet.train.lr == 0.1
    mine = load_config(path, ["method.name=podnet", "train.epochs=3"])  # the command line wins over the block
    assert mine.train.epochs == 3 and mine.train.lr == 0.1
    assert method_defaults_applied(path, ["method.name=podnet"]) == {"train.epochs": 60, "train.lr": 0.1,
                                                                    "method.finetune_epochs": 5}
    assert method_defaults_applied(path, []) == {}
    assert "by_method" not in dump_config(podnet)  # the resolved config holds the values, not the block


@pytest.mark.parametrize(
    "block,match",
    [
        ("by_method: 3\n", "by_method: expected a mapping of method names"),
        ("by_method:\n  podnet: 3\n", "by_method.podnet: expected a method name mapping"),
        ("by_method:\n  podnet:\n    train:\n      epoch: 60\n", r"by_method.podnet: unknown config key 'train.epoch'"),
        ("by_method:\n  podnet:\n    method:\n      name: bic\n", "names method 'bic'"),
    ],
)
def test_bad_by_method_block_is_named(tmp_path, block, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, "method:\n  name: icarl\n" + block))


def test_quickstart_gives_podnet_its_own_schedule_and_leaves_the_others_alone():
    icarl = load_config("quickstart_digits")
    podnet = load_config("quickstart_digits", ["method.name=podnet"])
    assert podnet.method["name"] == "podnet"
    assert (podnet.train.lr, podnet.train.epochs) == (QUICKSTART_PODNET_LR, QUICKSTART_PODNET_EPOCHS)
    assert (podnet.train.lr, podnet.train.epochs) != (icarl.train.lr, icarl.train.epochs)
    for name in ("finetune", "lwf", "bic"):  # the shared schedule is untouched for every other method
        other = load_config("quickstart_digits", [f"method.name={name}"])
        assert (other.train.lr, other.train.epochs) == (icarl.train.lr, icarl.train.epochs)
    assert load_config("quickstart_digits", ["method.name=podnet", "train.epochs=2"]).train.epochs == 2
