"""Exemplar memory (indices, never image copies) and exemplar selection strategies."""

from .buffer import ExemplarMemory, class_budgets  # noqa: F401
from .selection import closest_to_mean, herding, random_selection  # noqa: F401
