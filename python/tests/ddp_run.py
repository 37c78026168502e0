"""One rank of a 2-process DDP Trainer run (CPU, gloo) with TsdCallback, for test_callback.py's
DDP test: ``python -m torch.distributed.run --nproc_per_node 2 ddp_run.py OUTPUT_DIR``. Each rank
writes ``rank-N.json`` with what its callback saw."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import TINY, make_trainer  # noqa: E402

from tsd.callback import TsdCallback  # noqa: E402

out = Path(sys.argv[1])
cb = TsdCallback(base=str(TINY), extra_args=["--no-null"])
trainer = make_trainer(out, [cb], max_steps=4, save_steps=2, ddp_backend="gloo")
trainer.train()
rank = int(os.environ.get("RANK", "0"))
(out / f"rank-{rank}.json").write_text(
    json.dumps(
        {
            "world_size": trainer.args.world_size,
            "tracks": len(cb.track_runs),
            "tsd_keys": sorted({k for e in trainer.state.log_history for k in e if k.startswith("tsd/")}),
        }
    )
)

# Tear the process group down before exit: a rank that exits with gloo's threads still running can
# abort in C++ ("terminate called without an active exception", SIGABRT), failing the launch.
import torch.distributed as dist  # noqa: E402

if dist.is_available() and dist.is_initialized():
    dist.barrier()
    dist.destroy_process_group()
