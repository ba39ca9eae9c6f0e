"""The evaluate stage: RGB -> depth / normals / semseg by generation, scored against truth.

For each task the trained 4M model generates the target's tokens from RGB pixels alone
(MaskGIT or ROAR), the task's tokenizer decodes them, and the result is scored against
the ground-truth labels of held-out samples beside two references:
- the tokenizer-only bound: ground truth -> tokens -> decode (what a perfect 4M could reach);
- a trivial baseline: per-image mean depth, the training set's mean normal, its majority class.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from fm21.config import EvaluateConfig
from fm21.evaluate.metrics import HEADLINE, task_metrics
from fm21.evaluate.report import write_report
from fm21.evaluate.sampler import generate, init_empty_target, init_full_input
from fm21.store import labels as label_store
from fm21.tokenize.crops import Crop, apply_crop
from fm21.train.checkpoint import load_checkpoint
from fm21.train.loader import read_split, row_to_sample

log = logging.getLogger("fm21")

TASKS = {"depth": "tok_depth", "normal": "tok_normal", "semseg": "tok_semseg"}
BATCH = 16


def ground_truth(uri, column: str, keys: list[str], *, out_size: int) -> np.ndarray:
    """Label maps of ``keys`` (in that order), crop 0, at the model's resolution."""
    data = label_store.read_maps(uri, [column], keys=keys)
    by_key = dict(zip(data["key"], data[column]))
    maps = [by_key[k] for k in keys]
    full = Crop(0, 0, maps[0].shape[0], maps[0].shape[0], False)
    return np.stack([apply_crop(m, full, kind=column, out_size=out_size) for m in maps]).astype(np.float32 if column != "semseg" else np.uint8)


def trivial_baseline(task: str, truth: np.ndarray, train: np.ndarray) -> np.ndarray:
    if task == "depth":  # the image's own mean depth everywhere
        return np.broadcast_to(truth.mean(axis=(1, 2), keepdims=True), truth.shape).copy()
    if task == "normal":  # the training set's mean normal everywhere
        mean = train.reshape(-1, 3).mean(0)
        return np.broadcast_to(mean / np.linalg.norm(mean), truth.shape).copy()
    counts = np.bincount(train.ravel().astype(np.int64))  # semseg: the majority class
    return np.full_like(truth, int(counts.argmax()))


def _generate(model, rows: list[dict], target: str, cfg: EvaluateConfig) -> np.ndarray:
    """Token ids of ``target`` generated from RGB pixels alone, (B, N)."""
    specs = model.specs
    gen = torch.Generator().manual_seed(cfg.seed)
    out = []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        pixels = np.stack([row_to_sample(r, {"rgb": specs["rgb"]})["rgb"] for r in chunk])
        md = {"rgb": {"tensor": torch.from_numpy(pixels)}}
        md = init_full_input(md, "rgb", specs)
        md = init_empty_target(md, target, specs)
        md = generate(model, md, target=target, scheme=cfg.scheme, num_steps=cfg.num_steps,
                      temperature=cfg.temperature, generator=gen)
        out.append(md[target]["tensor"].numpy())
    return np.concatenate(out)


def _train_keys(tokens_uri, limit: int) -> list[str]:
    return [r["key"] for r in read_split(tokens_uri, {}, split="train", limit=limit)]


def run_evaluate(cfg: EvaluateConfig, ctx) -> dict:
    from fm21.tokenize.checkpoint import load_tokenizer

    torch.manual_seed(cfg.seed)
    model, meta = load_checkpoint(ctx.workdir.checkpoints_dir / "latest")
    model.eval()
    tasks = [t for t in cfg.tasks if TASKS[t] in model.specs]
    rows = read_split(ctx.workdir.tokens_uri, model.specs, split="val", limit=cfg.num_samples)
    if not rows:
        raise ValueError(f"{ctx.workdir.tokens_uri} has no validation rows; raise tokens.val_fraction")
    keys = [r["key"] for r in rows]
    train_keys = _train_keys(ctx.workdir.tokens_uri, 256)
    results: dict[str, dict] = {}
    samples: dict[str, dict[str, np.ndarray]] = {}
    for task in tasks:
        target = TASKS[task]
        spec = model.specs[target]
        tok = load_tokenizer(ctx.workdir.tokenizers_dir / target)
        truth = ground_truth(ctx.workdir.labels_uri, task, keys, out_size=spec.resolution)
        train = ground_truth(ctx.workdir.labels_uri, task, train_keys, out_size=spec.resolution)
        predicted = tok.decode_labels(_generate(model, rows, target, cfg))
        bound = tok.decode_labels(np.stack([np.asarray(r[target], dtype=np.int64) for r in rows]))
        baseline = trivial_baseline(task, truth, train)
        kw = {"num_classes": tok.config.num_channels} if task == "semseg" else {}
        results[task] = {name: task_metrics(task, pred, truth, **kw)
                         for name, pred in (("4m", predicted), ("tokenizer_bound", bound), ("baseline", baseline))}
        metric, sign = HEADLINE[task]
        results[task]["beats_baseline"] = sign * (results[task]["4m"][metric] - results[task]["baseline"][metric]) > 0
        samples[task] = {"truth": truth[:cfg.num_grid_samples], "pred": predicted[:cfg.num_grid_samples],
                         "bound": bound[:cfg.num_grid_samples]}
        log.info("evaluate: %s %s", task, {k: v for k, v in results[task].items()})
    rgb = np.stack([np.asarray(r["rgb"], dtype=np.uint8).reshape(model.specs["rgb"].resolution, -1, 3)
                    for r in rows[:cfg.num_grid_samples]])
    summary = {"num_samples": len(rows), "checkpoint_step": meta.get("step"), "scheme": cfg.scheme,
               "num_steps": cfg.num_steps, "tasks": results, "random_parts": _random_parts(ctx)}
    out = ctx.workdir.reports_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    write_report(out, summary, rgb=rgb, samples=samples)
    return {"num_samples": len(rows), **{f"{t}_beats_baseline": r["beats_baseline"] for t, r in results.items()}}


def _random_parts(ctx) -> list[str]:
    """Specialists/tokenizers with random weights: their numbers are plumbing, not quality."""
    meta = label_store.store_metadata(ctx.workdir.labels_uri).get("specialists", {})
    return sorted(n for n, p in meta.items() if p.get("random"))
