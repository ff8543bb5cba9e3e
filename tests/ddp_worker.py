"""Started by tests/test_distributed.py under torchrun: tiny runs of several methods in one process group.

Before rank 0's state is copied to the others at the end of each task, the ranks' parameters are compared:
if gradient averaging were wrong they would have drifted apart. Rank 0 writes the largest gap per method to
OUT/drift.json. Usage: torchrun --nproc_per_node=2 tests/ddp_worker.py OUT '{"icarl": ["key=value", ...]}'
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import tiny_config  # noqa: E402

from ltcil.engine import distributed  # noqa: E402
from ltcil.engine.runner import Experiment  # noqa: E402


def main() -> None:
    out, runs = Path(sys.argv[1]), json.loads(sys.argv[2])
    gaps: dict = {}
    share = Experiment._share_method_state

    def compare_then_share(self):
        flat = torch.cat([p.detach().reshape(-1).float().cpu() for p in self.method.model.parameters()])
        every = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(every, flat)
        gaps.setdefault(self.run_dir.name, []).append(max(float((g - every[0]).abs().max()) for g in every))
        share(self)

    Experiment._share_method_state = compare_then_share
    for name, overrides in runs.items():
        Experiment(tiny_config(*overrides), out / name).run()
    if distributed.world().is_main:
        (out / "drift.json").write_text(json.dumps(gaps))
    distributed.teardown()


if __name__ == "__main__":
    main()
