"""Property-based tests (hypothesis) of the scenario builder and the config parser."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ltcil.config import ScenarioConfig, load_config
from ltcil.errors import ConfigError
from ltcil.scenarios import build_scenario
from ltcil.scenarios.longtail import exponential_profile


@st.composite
def scenarios(draw):
    num_classes = draw(st.integers(2, 12))
    per_class = draw(st.lists(st.integers(2, 40), min_size=num_classes, max_size=num_classes))
    increment = draw(st.integers(1, num_classes))
    initial = draw(st.integers(0, num_classes))
    cfg = ScenarioConfig(
        order=draw(st.sampled_from(["natural", "seed:1993", "seed:7"])),
        initial=initial,
        increment=increment,
        imbalance_factor=draw(st.sampled_from([1.0, 2.0, 10.0, 100.0])),
        longtail_by=draw(st.sampled_from(["class_id", "arrival"])),
        longtail_profile=draw(st.sampled_from(["exp", "step"])),
        val_fraction=draw(st.sampled_from([0.0, 0.1, 0.3])),
        seed=draw(st.integers(0, 5)),
    )
    labels = np.repeat(np.arange(num_classes), per_class)
    return cfg, labels


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_scenario_invariants(case):
    cfg, labels = case
    num_classes = int(labels.max()) + 1
    try:
        sc = build_scenario(cfg, labels, labels, num_classes)
    except ConfigError as exc:
        # only impossible splits may fail, and they say why
        assert "scenario." in str(exc)
        return
    arrival = np.concatenate([t.classes for t in sc.tasks])
    assert arrival.tolist() == list(range(num_classes))  # every class exactly once, in arrival order
    assert sorted(sc.order.tolist()) == list(range(num_classes))
    train = np.concatenate([t.train_indices for t in sc.tasks])
    val = np.concatenate([t.val_indices for t in sc.tasks])
    assert len(np.unique(train)) == len(train)
    assert not np.intersect1d(train, val).size  # validation never overlaps training
    mapped = sc.label_maps["train"]
    for t in sc.tasks:
        assert set(mapped[t.train_indices].tolist()) <= set(t.classes.tolist())
    counts = np.bincount(mapped[train], minlength=num_classes)
    assert (counts == sc.train_counts).all() and (counts >= 1).all()
    if cfg.imbalance_factor == 1 and cfg.val_fraction == 0:
        assert (sc.train_counts == np.bincount(labels)[sc.order]).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 200), st.integers(5, 1000), st.floats(1.0, 500.0))
def test_exponential_profile_is_monotone_and_bounded(num_classes, n_max, imbalance):
    counts = exponential_profile(n_max, num_classes, imbalance)
    assert counts[0] == n_max and (np.diff(counts) <= 0).all()
    assert counts[-1] == int(n_max / imbalance) or abs(counts[-1] - n_max / imbalance) <= 1


def _config_keys() -> list[str]:
    """Every dotted key of the config, and the options of a few methods (method.name set beside them)."""
    import dataclasses

    from ltcil import registry
    from ltcil.config import Config

    keys = []
    for section in dataclasses.fields(Config):
        if dataclasses.is_dataclass(section.type) or isinstance(section.default_factory, type):
            sub = section.default_factory() if section.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(sub):
                keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(sub)]
                continue
        keys.append(section.name)
    for method in ("icarl", "bic", "lwf", "ldam_drw", "ccsi"):
        options = registry.get("method", method).Options
        keys += [f"method@{method}.{f.name}" for f in dataclasses.fields(options)]
    return keys


CONFIG_KEYS = _config_keys()
NASTY = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**30, -10**30, 2**63, -1, 0, 1e308, -0.0]),
    st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(max_size=8), st.lists(st.one_of(st.integers(-3, 300), st.floats(-1, 2), st.text(max_size=3)), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2), st.none(),
)


def _yaml_value(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CONFIG_KEYS), NASTY)
def test_every_config_key_takes_nasty_values_as_a_config_or_an_error_naming_it(key, value):
    # NaN, inf, huge, negative, wrong-typed and unicode values through the CLI's override parser and the checks
    # made before data loads: a valid config, or a ConfigError naming the key; never another exception
    from ltcil.engine.runner import check_components

    overrides = []
    if key.startswith("method@"):
        method, _, option = key[len("method@"):].partition(".")
        overrides += [f"method.name={method}", f"memory.size={0 if method == 'ccsi' else 20}"]
        key = f"method.{option}"
    text = f"{key}={_yaml_value(value)}"
    try:
        cfg = load_config(None, [*overrides, text])
        check_components(cfg)
    except ConfigError as exc:
        message = str(exc)
        names_key = key in message or text in message or key.rsplit(".", 1)[-1] in message
        assert names_key, (text, message)


@given(st.dictionaries(st.integers(0, 50), st.integers(0, 600), min_size=1, max_size=30), st.integers(1, 3000))
@settings(max_examples=200, deadline=None)
def test_memory_budgets_never_starve_a_class(available, total):
    from ltcil.memory.buffer import class_budgets

    budgets = class_budgets(available, total, 0)
    assert sum(budgets.values()) <= total
    for c, n in available.items():
        assert min(n, total // len(available)) <= budgets[c] <= n
