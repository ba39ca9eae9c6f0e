"""Network specialists: images/s through the pseudolabel Ray job vs the raw forward at the
same batch size, and peak memory; SAM's automatic masks at the default and faster settings.

    .venv/bin/python benchmarks/bench_specialists.py [--sizes tiny base] [--only clip dinov2]
        [--num 64] [--batch 8] [--device cpu|cuda] [--json out.json]

Weights are random init of the real architecture (speed does not depend on the values; the
outputs are tagged random and not looked at). For each specialist and size:

- raw: the specialist's ``__call__`` on batches of ``--batch`` synthetic scenes at the
  size's image side, what its pool actor runs, after one warm-up batch; in a fresh process,
  whose peak RSS is reported.
- job: ``run_stage("pseudolabel")`` on ``--num`` synthetic scenes (one shard of ``--batch``
  per unit) with only the image specialist, the oracles it requires, and this specialist
  enabled, in its own pool (one actor, the same batch size, ``--device``); Ray is started
  before the clock. Reported twice: over the whole stage (actor start-up and weight loading
  included), and steady, between the first and the last unit's return (start-up paid). The
  job also reads shards, decodes and re-encodes the image, and writes and commits Lance
  fragments: that is what the steady ratio charges it for.
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
THREADS = 2  # torch threads of the measured forward, raw and in the job

# Options per specialist and size; "base" is the reference architecture (REFERENCE-size
# networks; ViT-H ones are slow on CPU). The registry's names; requires noted per entry.
TINY_DPT = {"preprocess": {"input_size": 64},
            "architecture": {"hybrid": False, "image_size": 64, "patch_size": 8, "hidden_size": 32,
                             "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
                             "backbone_out_indices": [0, 1, 2, 3], "neck_hidden_sizes": [8, 16, 32, 32],
                             "reassemble_factors": [4, 2, 1, 0.5], "fusion_hidden_size": 16}}
TINY_M2F = {"swin_embed_dim": 16, "swin_depths": [1, 1, 1, 1], "swin_num_heads": [1, 1, 2, 2], "swin_window_size": 4,
            "feature_size": 32, "mask_feature_size": 32, "hidden_dim": 32, "encoder_layers": 1,
            "encoder_feedforward_dim": 32, "decoder_layers": 2, "dim_feedforward": 32, "num_attention_heads": 2,
            "num_queries": 8}
# Options per specialist and size (they replace flows.yaml's): "tiny" is what the demo runs,
# "base" the reference architecture ({} = the specialist's defaults; ViT-H, T5-XXL, SAM ViT-H
# and HMR2 ViT-H are given smaller stand-ins or left out: minutes per image on CPU).
SIZES: dict[str, dict[str, dict]] = {
    "clip": {"tiny": {"arch": "fm21-tiny-vit", "preprocess": {"input_size": 64}}, "base": {}},  # ViT-B/16
    "dinov2": {"tiny": {"hidden_size": 64, "patch_size": 8, "num_layers": 2, "num_heads": 2, "mlp_ratio": 2,
                        "preprocess": {"input_size": 64}}, "base": {}},  # ViT-B/14
    "imagebind": {"tiny": {"arch": "fm21-tiny-vit", "preprocess": {"input_size": 64}},
                  "base": {"arch": "ViT-L-14", "preprocess": {"input_size": 224}}},  # ViT-H/14 stood in by L/14
    "depth": {"tiny": TINY_DPT, "base": {}},  # DPT-B-Hybrid, 384 px
    "normal": {"tiny": TINY_DPT, "base": {}},
    "semseg": {"tiny": {"architecture": TINY_M2F, "preprocess": {"input_size": 64}}, "base": {}},  # Swin-B
    "detection": {"tiny": {"preprocess": {"input_size": 64}}, "base": {}},  # YOLO26n at 640 px
    # caption is left out: synthetic scenes carry their captions, so BLIP never runs on them
    "t5": {"tiny": {"tokenizer": "byt5", "vocab_size": 384, "d_model": 64, "num_layers": 1, "num_heads": 2,
                    "d_kv": 32, "d_ff": 128},
           "base": {"tokenizer": "byt5", "vocab_size": 384, "d_model": 768, "num_layers": 12, "num_heads": 12,
                    "d_kv": 64, "d_ff": 2048}},  # T5-base size (XXL: 4.7B parameters)
    "sam": {"tiny": {"model_type": "tiny", "points_per_side": 8}},
    "human_pose": {"tiny": {"size": "tiny", "person_class": "cube", "min_score": 0.0}},
}
# Oracles / no-weights specialists whose columns a network reads (run in the unit worker).
NEEDS = {"human_pose": ["detection"], "t5": ["caption"], "metadata": []}


def _config(work: Path, name: str, size: str, *, num: int, batch: int, device: str, shard: int = 32):
    """The tiny recipe with only what ``name`` needs enabled, its options replaced by ``SIZES``
    (replaced, not merged: flows.yaml's tiny options must not leak into the base size)."""
    from fm21.config import FlowConfig, load_config

    gpu = 1 if device == "cuda" else 0
    over = [f"workdir={work}", f"ingest.image_size={IMAGE_SIDE[size]}", f"ingest.synthetic.num_samples={num}",
            f"ingest.samples_per_shard={shard}", "modalities.enabled=[rgb]", "pseudolabel.concurrency=1",
            f"pseudolabel.specialists.{name}.weights=random", f"pseudolabel.specialists.{name}.own_pool=true",
            f"pseudolabel.specialists.{name}.batch_size={batch}", f"pseudolabel.specialists.{name}.num_gpus={gpu}",
            # both paths compute on THREADS torch threads: the pool actor takes its num_cpus
            # rounded up, the unit worker (reading, PNG, Lance) fits beside it on 2 CPUs
            "pseudolabel.num_cpus=0.5", f"pseudolabel.specialists.{name}.num_cpus={THREADS - 0.5}"]
    data = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml", overrides=over).model_dump()
    keep = {"image", name, *NEEDS.get(name, [])}
    for other, scfg in data["pseudolabel"]["specialists"].items():  # only what this measurement needs
        scfg["enabled"] = other in keep
    data["pseudolabel"]["specialists"][name]["options"] = SIZES[name][size]
    return FlowConfig.model_validate(data)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _raw(name: str, size: str, num: int, batch: int, device: str, queue) -> None:
    """In a fresh process: the batch a pool actor receives (one shard, decoded as a unit
    worker decodes it, requirements labelled), then ``num / batch`` calls of the specialist."""
    import torch

    from fm21.ingest.stage import run_ingest
    from fm21.pseudolabel.worker import UnitRows, build_specialist, label_table, read_shard
    from fm21.store.layout import Workdir

    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(Path(tmp) / "work", name, size, num=batch, batch=batch, device=device, shard=batch)
        run_ingest(cfg.ingest, workdir=Workdir(Path(tmp) / "work"), seed=cfg.seed)
        table = read_shard(str(Workdir(Path(tmp) / "work").shard_paths()[0]))
    side = cfg.ingest.image_size
    run = {n: build_specialist(n, cfg.pseudolabel.specialists[n], image_size=side)
           for n in ["image", *NEEDS.get(name, []), name]}
    spec = run.pop(name)
    for s in [*run.values(), spec]:
        s.load()
    labelled, _ = label_table(table, run)
    batch_in = UnitRows(labelled).batch(0, batch, spec)
    spec(batch_in)  # warm-up
    calls = max(1, num // batch)
    start = time.perf_counter()
    for _ in range(calls):
        spec(batch_in)
    elapsed = time.perf_counter() - start
    queue.put({"raw_images_per_s": calls * batch / elapsed, "raw_peak_rss_mb": _peak_rss_mb()})


class _UnitTimes:
    """A ``fm21.progress`` listener: when each pseudolabel unit came back to the driver."""

    seen: list[tuple[float, int]] = []

    def start(self, stage, total, unit):
        self.stage = stage

    def update(self, done):
        if self.stage == "pseudolabel":
            _UnitTimes.seen.append((time.perf_counter(), done))

    def close(self):
        pass


def _job(name: str, size: str, num: int, batch: int, device: str, queue) -> None:
    """The pseudolabel stage, one shard of ``batch`` samples per unit. Besides the stage's
    overall rate (actor start-up and weight loading included), the steady rate between the
    first and the last unit's return: the job's throughput once start-up is paid."""
    from fm21.progress import add_listener
    from fm21.ray_runtime import ensure_ray
    from fm21.stages import run_stage

    add_listener(_UnitTimes)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(Path(tmp) / "work", name, size, num=num, batch=batch, device=device, shard=batch)
        ensure_ray(cfg.ray)
        run_stage(cfg, "ingest")
        start = time.perf_counter()
        manifest = run_stage(cfg, "pseudolabel")
        elapsed = time.perf_counter() - start
    times = _UnitTimes.seen
    steady = None
    if len(times) >= 2 and times[-1][1] > times[0][1]:
        steady = (times[-1][1] - times[0][1]) * batch / (times[-1][0] - times[0][0])
    queue.put({"job_images_per_s": manifest["counts"]["samples"] / elapsed, "job_steady_images_per_s": steady,
               "job_samples": manifest["counts"]["samples"], "job_failed": manifest["counts"]["failed_samples"]})


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
    from fm21.ingest.stage import run_ingest
    from fm21.pseudolabel.worker import UnitRows, build_specialist, read_shard
    from fm21.store.layout import Workdir

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(Path(tmp) / "work", "sam", size, num=4, batch=4, device=device, shard=4)
        run_ingest(cfg.ingest, workdir=Workdir(Path(tmp) / "work"), seed=cfg.seed)
        table = read_shard(str(Workdir(Path(tmp) / "work").shard_paths()[0]))
    side = cfg.ingest.image_size
    out = {}
    for points in (32, 16, 8):
        base = cfg.pseudolabel.specialists["sam"].model_dump()
        base["options"] = {**base["options"], "points_per_side": points, "pred_iou_thresh": 0.0,
                           "stability_score_thresh": 0.0}  # random init: keep what it finds
        spec = build_specialist("sam", SpecialistConfig.model_validate(base), image_size=side)
        spec.load()
        batch = UnitRows(table).batch(0, 4, spec)
        start = time.perf_counter()
        masks = sum(len(m) for m in spec(batch)["sam_instances"])
        out[points] = {"s_per_image": (time.perf_counter() - start) / 4, "masks_per_image": masks / 4}
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
            if size not in SIZES[name]:
                continue
            row = {"specialist": name, "size": size, "image_side": IMAGE_SIDE[size], "batch": args.batch}
            row.update(_in_fresh_process(_raw, name, size, args.num, args.batch, args.device))
            row.update(_in_fresh_process(_job, name, size, args.num, args.batch, args.device))
            if row.get("raw_images_per_s") and row.get("job_steady_images_per_s"):
                row["steady_vs_raw"] = row["job_steady_images_per_s"] / row["raw_images_per_s"]
            rows.append(row)
            print(row, flush=True)
    sam = {s: _in_fresh_process(_sam_settings, s, args.device) for s in args.sizes
           if s in SIZES["sam"] and (args.only is None or "sam" in args.only)}
    nan = float("nan")
    print("\n| specialist | size | side | raw img/s | job img/s (whole stage) | job img/s (steady) | steady / raw |"
          " raw peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['specialist']} | {r['size']} | {r['image_side']} | {r.get('raw_images_per_s') or nan:.1f} | "
              f"{r.get('job_images_per_s') or nan:.1f} | {r.get('job_steady_images_per_s') or nan:.1f} | "
              f"{r.get('steady_vs_raw') or nan:.2f} | {r.get('raw_peak_rss_mb') or nan:.0f} |")
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
