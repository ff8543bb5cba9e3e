"""Decoding processes die with the process that started them (Linux: PR_SET_PDEATHSIG), so a training process
that is killed, even with SIGKILL, leaves no decoders behind. Imported by the forkserver as its first preload
(the forkserver then dies with the training process) and run as every worker's initializer (a worker dies with
the forkserver). NumPy, Pillow and torch are not imported here."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown is all there is
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(0)
