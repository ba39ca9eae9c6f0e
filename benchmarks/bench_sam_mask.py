"""Quality of the sam_mask tokenizer on the instance masks of synthetic scenes.

    python benchmarks/bench_sam_mask.py [--size 64] [--train-scenes 150] [--val-scenes 40]
        [--steps 300] [--batch-size 32] [--hidden-dim 64] [--png recon.png]

Masks come from ``render_scene(seed, size).instance`` (one mask per object), stored as
the sam specialist stores them (COCO RLE), then extracted by ``instance_masks`` (box
crops, 64 x 64). Train scenes and held-out scenes use disjoint seeds. Prints the held-out
``mask_iou`` (64 x 64 box crops, sigmoid > 0.5; the goal is >= 0.8), the IoU after pasting
back into the image (``decode_masks``) and codebook usage, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from fm21.ingest.synthetic import render_scene
from fm21.modalities import MODALITIES
from fm21.pseudolabel.specialists.sam import mask_instance
from fm21.tokenize import sam_mask
from fm21.tokenize.instances import decode_rle, is_tiny, mask_box, mask_iou


def scene_rows(seeds: range, size: int) -> list[list[dict]]:
    """The ``sam_instances`` column of one synthetic scene per seed."""
    rows = []
    for seed in seeds:
        inst = render_scene(seed, size).instance
        masks = [inst == k for k in range(1, int(inst.max()) + 1)]
        rows.append([r for m in masks if (r := mask_instance(m, score=1.0, stability_score=1.0)) is not None])
    return rows


def pasted_iou(tok: sam_mask.SamMaskTokenizer, rows: list[list[dict]], size: int) -> float:
    """IoU of the decoded masks pasted back into their boxes vs the full-image masks."""
    full = [decode_rle(i["rle"]) for r in rows for i in r]
    full = np.stack([m for m in full if not is_tiny(mask_box(m), size)])  # as instance_masks keeps them
    crops, boxes = sam_mask.instance_masks(rows, size)
    pasted = sam_mask.decode_masks(tok, tok.encode_labels(crops), boxes, size)
    return float(mask_iou(pasted, full).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train-scenes", type=int, default=150)
    parser.add_argument("--val-scenes", type=int, default=40)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--png", default=None, help="write masks over reconstructions here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_rows = scene_rows(range(args.train_scenes), args.size)
    val_rows = scene_rows(range(100_000, 100_000 + args.val_scenes), args.size)
    train, _ = sam_mask.instance_masks(train_rows, args.size)
    val, _ = sam_mask.instance_masks(val_rows, args.size)
    options = {"steps": args.steps, "batch_size": args.batch_size, "hidden_dim": args.hidden_dim}
    start, cpu = time.perf_counter(), time.process_time()
    tok, metrics = sam_mask.train(MODALITIES["sam_instance"], options, train, val, seed=0)
    result = {
        "size": args.size, "train_masks": int(len(train)), "val_masks": int(len(val)), **options,
        "mask_iou": round(metrics["mask_iou"], 4),
        "pasted_iou": round(pasted_iou(tok, val_rows, args.size), 4),
        "codebook_usage": round(metrics["codebook_usage"], 4), "perplexity": round(metrics["perplexity"], 1),
        "final_train_bce": round(metrics["train"]["final_recon_loss"], 4),
        "wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(time.process_time() - cpu, 1),
    }
    if args.png:
        sam_mask.save_recon_png(tok, val, args.png)
    print(f"held-out mask_iou {result['mask_iou']:.3f} (goal >= 0.8), pasted into the image "
          f"{result['pasted_iou']:.3f}; {result['val_masks']} masks, {args.steps} steps, {result['wall_s']} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
