"""Data sources. Importing this package registers every built-in source."""

from .base import Dataset, Split  # noqa: F401
from . import synthetic  # noqa: F401,E402
from . import digits  # noqa: F401,E402
