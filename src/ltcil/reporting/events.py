"""The machine log: one JSON object per line (epochs, tasks, stages), appended and flushed as it happens."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..files import write_failed


class EventLog:
    """Appends events to `path` (None: nowhere) and hands each to the `trackers` (TensorBoard, W&B)."""

    def __init__(self, path: Path | None, trackers=()):
        self.path = Path(path) if path is not None else None
        try:
            self._fh = open(self.path, "a", buffering=1) if self.path is not None else None
        except OSError as exc:
            raise write_failed(self.path, exc) from None
        self.trackers = list(trackers)

    def write(self, event: dict) -> None:
        if self._fh is not None:
            try:
                self._fh.write(json.dumps({"time": time.time(), **event}, default=_plain) + "\n")
            except OSError as exc:
                raise write_failed(self.path, exc, "The checkpoints written so far are intact; `ltcil resume` "
                                                   "the run once it can be written.") from None
        for tracker in self.trackers:
            tracker.write(event)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


def _plain(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
