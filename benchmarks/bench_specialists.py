"""Network specialists: images/s through the pseudolabel Ray job vs the raw forward at the
same batch size, and peak memory; SAM's automatic masks at the default and faster settings.

    .venv/bin/python benchmarks/bench_specialists.py [--sizes tiny base] [--only clip dinov2]
        [--num 64] [--batch 8] [--device cpu|cuda] [--json out.json]

Weights are random init of the real architecture (speed does not depend on the values; the
outputs are tagged random and not looked at). For each specialist and size:

- raw: the specialist's ``__call__`` on batches of ``--batch`` synthetic scenes at the
  size's image side, what its pool actor runs, after one warm-up batch; in a fresh process,
  whose peak RSS is reported.
- job: ``run_stage("pseudolabel")`` on ``--num`` synthetic scenes with only the image
  specialist, the oracles it requires, and this specialist enabled, in its own pool (one
  actor, the same batch size, ``--device``); Ray is started before the clock. The job also
  reads shards, decodes and re-encodes the image, and writes Lance: that is what the ratio
  charges it for.
- SAM: seconds per image and masks per image at ``points_per_side`` 32 (the default), 16 and 8.

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIDE = {"tiny": 64, "base": 224}

# Options per specialist and size; "base" is the reference architecture (REFERENCE-size
# networks; ViT-H ones are slow on CPU). The registry's names; requires noted per entry.
SIZES: dict[str, dict[str, dict]] = {
    "clip": {"tiny": {"arch": "fm21-tiny-vit", "preprocess": {"input_size": 64}},
             "base": {}},
    "dinov2": {"tiny": {"size": "tiny", "preprocess": {"input_size": 56}}, "base": {}},
    "imagebind": {"tiny": {"arch": "fm21-tiny-vit", "preprocess": {"input_size": 56}}, "base": {}},
    "depth": {"tiny": {"size": "tiny"}, "base": {}},
    "normal": {"tiny": {"size": "tiny"}, "base": {}},
    "semseg": {"tiny": {"size": "tiny"}, "base": {}},
    "detection": {"tiny": {}, "base": {}},
    "sam": {"tiny": {"size": "tiny", "points_per_side": 8}, "base": {"model_type": "vit_b", "points_per_side": 16}},
    "human_pose": {"tiny": {"size": "tiny", "person_class": "cube", "min_score": 0.0},
                   "base": {"person_class": "cube", "min_score": 0.0}},
    "caption": {"tiny": {"size": "tiny", "max_new_tokens": 10}, "base": {"max_new_tokens": 20}},
    "t5": {"tiny": {"size": "tiny"}, "base": {"size": "base"}},
}
# Oracles / no-weights specialists whose columns a network reads (run in the unit worker).
NEEDS = {"human_pose": ["detection"], "t5": ["caption"], "metadata": []}


def _config(work: Path, name: str, size: str, *, num: int, batch: int, device: str, shard: int = 32):
    from fm21.config import load_config

    opts = SIZES[name][size]
    gpu = 1 if device == "cuda" else 0
    over = [f"workdir={work}", f"ingest.image_size={IMAGE_SIDE[size]}", f"ingest.synthetic.num_samples={num}",
            f"ingest.samples_per_shard={shard}", "modalities.enabled=[rgb]", "pseudolabel.concurrency=1",
            f"pseudolabel.specialists.{name}.weights=random", f"pseudolabel.specialists.{name}.own_pool=true",
            f"pseudolabel.specialists.{name}.batch_size={batch}", f"pseudolabel.specialists.{name}.num_gpus={gpu}",
            f"pseudolabel.specialists.{name}.options={json.dumps(opts)}"]
    keep = {"image", name, *NEEDS.get(name, [])}
    cfg = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml", overrides=over)
    for other, scfg in cfg.pseudolabel.specialists.items():  # only what this measurement needs
        if other not in keep:
            over.append(f"pseudolabel.specialists.{other}.enabled=false")
    return load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml", overrides=over)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _raw(name: str, size: str, num: int, batch: int, device: str, queue) -> None:
    """In a fresh process: build, load and call the specialist on synthetic scenes."""
    from fm21.ingest.synthetic import render_scene
    from fm21.pseudolabel.worker import build_specialist

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(Path(tmp), name, size, num=num, batch=batch, device=device)
    side = cfg.ingest.image_size
    scenes = [render_scene(cfg.ingest.synthetic, seed=0, index=i, size=side) for i in range(batch)]
    run = {n: build_specialist(n, cfg.pseudolabel.specialists[n], image_size=side)
           for n in ["image", *NEEDS.get(name, []), name]}
    for spec in run.values():
        spec.load()
    batch_in = _batch(scenes)
    for n, spec in run.items():  # requirements first; the measured specialist last
        if n != name:
            batch_in.update(spec(batch_in))
    spec = run[name]
    spec(batch_in)  # warm-up
    calls = max(1, num // batch)
    start = time.perf_counter()
    for _ in range(calls):
        spec(batch_in)
    elapsed = time.perf_counter() - start
    queue.put({"raw_images_per_s": calls * batch / elapsed, "raw_peak_rss_mb": _peak_rss_mb()})


def _batch(scenes) -> dict:
    import numpy as np

    return {"key": [f"s{i}" for i in range(len(scenes))], "rgb": np.stack([s.rgb for s in scenes]),
            "meta": [s.meta for s in scenes], "gt": [s.gt for s in scenes]}


def _job(name: str, size: str, num: int, batch: int, device: str, queue) -> None:
    from fm21.ray_runtime import ensure_ray
    from fm21.stages import run_stage

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(Path(tmp) / "work", name, size, num=num, batch=batch, device=device)
        ensure_ray(cfg.ray)
        run_stage(cfg, "ingest")
        start = time.perf_counter()
        manifest = run_stage(cfg, "pseudolabel")
        elapsed = time.perf_counter() - start
        queue.put({"job_images_per_s": manifest["counts"]["samples"] / elapsed, "job_samples": manifest["counts"]["samples"],
                   "job_failed": manifest["counts"]["failed_samples"]})


def _in_fresh_process(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=fn, args=(*args, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return {"error": f"exit code {proc.exitcode}"}
    return queue.get()


def _sam_settings(size: str, device: str, queue) -> None:
    """Seconds and masks per image of SAM's automatic masks at 32, 16 and 8 points per side."""
    from fm21.config import SpecialistConfig
    from fm21.ingest.synthetic import render_scene
    from fm21.pseudolabel.worker import build_specialist

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(Path(tmp), "sam", size, num=4, batch=1, device=device)
    side = cfg.ingest.image_size
    scenes = [render_scene(cfg.ingest.synthetic, seed=0, index=i, size=side) for i in range(2)]
    out = {}
    for points in (32, 16, 8):
        base = cfg.pseudolabel.specialists["sam"].model_dump()
        base["options"] = {**base["options"], "points_per_side": points}
        spec = build_specialist("sam", SpecialistConfig.model_validate(base), image_size=side)
        spec.load()
        start = time.perf_counter()
        masks = sum(len(m) for m in spec(_batch(scenes))["sam_instances"])
        out[points] = {"s_per_image": (time.perf_counter() - start) / len(scenes), "masks_per_image": masks / len(scenes)}
    queue.put(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=sorted(IMAGE_SIDE))
    parser.add_argument("--only", nargs="+", default=None, help="these specialists only")
    parser.add_argument("--num", type=int, default=64, help="images per measurement")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        for name in args.only or list(SIZES):
            row = {"specialist": name, "size": size, "image_side": IMAGE_SIDE[size], "batch": args.batch}
            row.update(_in_fresh_process(_raw, name, size, args.num, args.batch, args.device))
            row.update(_in_fresh_process(_job, name, size, args.num, args.batch, args.device))
            if "raw_images_per_s" in row and "job_images_per_s" in row:
                row["job_vs_raw"] = row["job_images_per_s"] / row["raw_images_per_s"]
            rows.append(row)
            print(row, flush=True)
    sam = {s: _in_fresh_process(_sam_settings, s, args.device) for s in args.sizes
           if args.only is None or "sam" in args.only}
    print("\n| specialist | size | side | raw img/s | job img/s | job / raw | raw peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['specialist']} | {r['size']} | {r['image_side']} | {r.get('raw_images_per_s', float('nan')):.1f} | "
              f"{r.get('job_images_per_s', float('nan')):.1f} | {r.get('job_vs_raw', float('nan')):.2f} | "
              f"{r.get('raw_peak_rss_mb', float('nan')):.0f} |")
    for size, settings in sam.items():
        print(f"\nSAM automatic masks ({size}, random init): " + "; ".join(
            f"{p} points/side: {v['s_per_image']:.2f} s/image, {v['masks_per_image']:.1f} masks"
            for p, v in settings.items() if isinstance(v, dict)))
    result = {"device": args.device, "num": args.num, "rows": rows, "sam": sam, "weights": "random"}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
