"""Data sources, one module per format. Importing this package registers every built-in source."""

from . import arrays, cifar, digits, imagelist, medmnist, synthetic  # noqa: F401
from .base import Dataset, Split  # noqa: F401
