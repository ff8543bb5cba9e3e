"""Scenarios: pure functions over label arrays (class order, long-tail profile, tasks)."""

from .order import ICARL_CIFAR100_ORDER, class_order  # noqa: F401
from .tasks import Scenario, Task, build_scenario, task_sizes  # noqa: F401
