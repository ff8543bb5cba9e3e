"""Methods, one per file. Importing this package imports every module in it, and each registers its method
(`@register_method`): adding a method is adding a file, with no list to edit."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from .base import IncrementalNet, Method  # noqa: E402,F401
