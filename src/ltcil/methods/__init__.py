"""Methods, one per file; importing this package registers them all."""

from . import balanced_softmax, bic, decoupled, finetune, icarl, joint, ldam_drw, lwf, proto_lt, replay, sbcl  # noqa: F401
from .base import IncrementalNet, Method  # noqa: F401
