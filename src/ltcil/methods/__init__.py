"""Methods, one per file; importing this package registers them all."""

from . import bic, finetune, icarl, joint, lwf  # noqa: F401
from .base import IncrementalNet, Method  # noqa: F401
