"""A 2-worker FSDP run on CPU (gloo) of the tiny Ray Train test recipe vs one process:
wall time, loss curve, final checkpoint step (the suite does not run FSDP; this is its check).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/train_fsdp_cpu.py
"""
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "train"))
from test_distributed import tiny_train, write_store, _losses
from fm21.config import RayConfig
from fm21.ray_runtime import ensure_ray
from fm21.train.loop import run_train
ensure_ray(RayConfig(num_cpus=2))
root = Path(tempfile.mkdtemp(prefix="fm21-fsdp-"))
out = {}
for name, ray in (("fsdp", {"num_workers": 2, "fsdp": True}), ("alone", {"num_workers": 0})):
    ctx = write_store(root / name)
    t = time.time()
    counts = run_train(tiny_train(ray=ray), ctx)
    out[name] = {"seconds": round(time.time() - t, 1), "losses": [round(x, 4) for x in _losses(ctx)],
                 "ckpt_step": json.loads((ctx.workdir.checkpoints_dir / "latest" / "config.json").read_text())["step"]}
    print(name, out[name], flush=True)
print(json.dumps(out))
