"""Imported only by the decoding processes' forkserver, before anything else (DecodePool): it dies with the
training process."""

from .worker_guard import die_with_parent

die_with_parent()
