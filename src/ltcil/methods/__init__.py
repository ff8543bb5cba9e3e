"""Methods, one per file; importing this package registers them all."""

from . import (  # noqa: F401
    balanced_softmax, bic, ccsi, decoupled, finetune, icarl, joint, ldam_drw, lwf, proto_lt, replay, sbcl,
)
from .base import IncrementalNet, Method  # noqa: F401
