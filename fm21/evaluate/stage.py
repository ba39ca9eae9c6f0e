"""The evaluate stage: RGB -> X by generation, scored against truth.

The tasks come from the registry: every target modality of the trained model whose label
kind has metrics (``HEADLINE``: depth, normal, classes) is a task, named by the label
column it is scored against (``evaluate.tasks`` picks among them: depth, normal, semseg).
For each task the trained 4M model generates the target's tokens from RGB pixels alone
(MaskGIT or ROAR), the task's tokenizer decodes them, and the result is scored against
the ground-truth labels of held-out samples beside:
- the tokenizer-only bound: ground truth -> tokens -> decode (what a perfect 4M could reach);
- image-blind baselines (``fm21.evaluate.baselines``), the strongest being the per-pixel
  prior of the training split; the verdict compares 4M with the strongest of them.
Every prediction is scored on all pixels and on object pixels only (instance id != 0),
and the report gives the fraction of the prior-to-bound gap 4M closes in both.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from fm21.config import EvaluateConfig
from fm21.evaluate.baselines import BASELINES, object_classes
from fm21.evaluate.metrics import HEADLINE, gap_closed, task_metrics
from fm21.evaluate.report import write_report
from fm21.evaluate.sampler import generate, init_empty_target, init_full_input
from fm21.modalities import MODALITIES, ModalitySpec
from fm21.progress import tracked
from fm21.store import labels as label_store
from fm21.tokenize.crops import Crop, apply_crop
from fm21.tokenize.preprocess import PREPROCESSORS
from fm21.train.checkpoint import load_latest
from fm21.train.loader import read_split, row_to_sample

log = logging.getLogger("fm21")

OBJECT_COLUMN = "instance"  # labels.lance column of instance ids; 0 = no object (floor, wall, sky, stuff)
OBJECT_KIND = "classes"  # instance ids are categorical: resized by nearest neighbour
BATCH = 16
NUM_PRIOR_SAMPLES = 1024  # training rows the per-pixel prior is estimated from
SCOPES = ("all", "objects")


def label_kind(spec: ModalitySpec) -> str | None:
    """The spec's label kind; a spec from a checkpoint written before the field existed
    takes the registry's."""
    if spec.label_kind is None and spec.name in MODALITIES:
        return MODALITIES[spec.name].label_kind
    return spec.label_kind


def evaluable_targets(specs: dict[str, ModalitySpec]) -> dict[str, ModalitySpec]:
    """task -> target spec: every target token modality whose label kind has metrics,
    named by the label column it is scored against."""
    return {s.label_columns[0]: s for s in specs.values()
            if s.kind == "image_tokens" and s.can_be_target and label_kind(s) in HEADLINE}


def input_modality(specs: dict[str, ModalitySpec]) -> str:
    """The pixels modality every task is generated from (RGB -> X)."""
    pixels = [n for n, s in specs.items() if s.kind == "pixels"]
    if len(pixels) != 1:
        raise ValueError(f"evaluate generates from one pixels modality; the model has {pixels}")
    return pixels[0]


def ground_truth(uri, column: str, keys: list[str], *, out_size: int, kind: str) -> np.ndarray:
    """Label maps of ``keys`` (in that order), crop 0, at the model's resolution, resized
    as their label kind ``kind`` needs."""
    data = label_store.read_maps(uri, [column], keys=keys)
    by_key = dict(zip(data["key"], data[column]))
    maps = [by_key[k] for k in keys]
    full = Crop(0, 0, maps[0].shape[0], maps[0].shape[0], False)
    out = np.stack([apply_crop(m, full, kind=kind, out_size=out_size) for m in maps])
    return out if out.dtype == np.uint8 else out.astype(np.float32)


def _generate(model, rows: list[dict], target: str, cfg: EvaluateConfig) -> np.ndarray:
    """Token ids of ``target`` generated from the pixels modality alone, (B, N)."""
    specs = model.specs
    source = input_modality(specs)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        pixels = np.stack([row_to_sample(r, {source: specs[source]})[source] for r in chunk])
        md = {source: {"tensor": torch.from_numpy(pixels)}}
        md = init_full_input(md, source, specs)
        md = init_empty_target(md, target, specs)
        md = generate(model, md, target=target, scheme=cfg.scheme, num_steps=cfg.num_steps,
                      temperature=cfg.temperature, generator=gen)
        out.append(md[target]["tensor"].numpy())
    return np.concatenate(out)


def _train_keys(tokens_uri, limit: int) -> list[str]:
    return [r["key"] for r in read_split(tokens_uri, {}, split="train", limit=limit)]


def score_task(kind: str, predictions: dict[str, np.ndarray], truth: np.ndarray, objects: np.ndarray,
               *, baselines: list[str], num_classes: int, classes: np.ndarray | None) -> dict:
    """Metrics (of label kind ``kind``) of every prediction on all pixels and on object
    pixels; the strongest baseline per scope (by the headline metric); the gap 4M closes
    toward the bound."""
    metric, sign = HEADLINE[kind]
    kw = {"num_classes": num_classes}
    scores = {
        "all": {n: task_metrics(kind, p, truth, **kw) for n, p in predictions.items()},
        "objects": {n: task_metrics(kind, p, truth, mask=objects, classes=classes, **kw)
                    for n, p in predictions.items()},
    }
    result: dict = {"scores": scores, "baselines": baselines, "strongest_baseline": {}, "gap_closed": {}}
    for scope in SCOPES:
        s = scores[scope]
        best = max(baselines, key=lambda b: sign * np.nan_to_num(s[b][metric], nan=-sign * np.inf))
        result["strongest_baseline"][scope] = best
        result["gap_closed"][scope] = gap_closed(s["4m"][metric], s[best][metric], s["tokenizer_bound"][metric])
    result["beats_strongest_baseline"] = all(
        sign * (scores[sc]["4m"][metric] - scores[sc][result["strongest_baseline"][sc]][metric]) > 0 for sc in SCOPES
    )
    return result


def run_evaluate(cfg: EvaluateConfig, ctx) -> dict:
    from fm21.tokenize.checkpoint import load_tokenizer

    torch.manual_seed(cfg.seed)
    model, meta = load_latest(ctx.workdir.checkpoints_dir)
    model.eval()
    targets = evaluable_targets(model.specs)
    tasks = [t for t in cfg.tasks if t in targets]
    rows = read_split(ctx.workdir.tokens_uri, model.specs, split="val", limit=cfg.num_samples)
    if not rows:
        raise ValueError(f"{ctx.workdir.tokens_uri} has no validation rows; raise tokens.val_fraction")
    keys = [r["key"] for r in rows]
    train_keys = _train_keys(ctx.workdir.tokens_uri, NUM_PRIOR_SAMPLES)
    source = input_modality(model.specs)
    res = model.specs[source].resolution
    labels_uri = ctx.workdir.labels_uri
    objects = ground_truth(labels_uri, OBJECT_COLUMN, keys, out_size=res, kind=OBJECT_KIND) > 0  # (B, R, R)
    results: dict[str, dict] = {}
    kinds: dict[str, str] = {}
    samples: dict[str, dict[str, np.ndarray]] = {}
    for task in tracked(tasks, "evaluate", unit="task"):
        spec = targets[task]
        target, kind = spec.name, label_kind(spec)
        kinds[task] = kind
        tok = load_tokenizer(ctx.workdir.tokenizers_dir / target)
        truth = ground_truth(labels_uri, task, keys, out_size=res, kind=kind)
        train = ground_truth(labels_uri, task, train_keys, out_size=res, kind=kind)
        predictions = {
            "4m": tok.decode_labels(_generate(model, rows, target, cfg)),
            "tokenizer_bound": tok.decode_labels(np.stack([np.asarray(r[target], dtype=np.int64) for r in rows])),
        }
        for name, baseline in BASELINES[kind].items():
            predictions[name] = baseline(truth, train)
        classes = None
        if PREPROCESSORS[kind].categorical:  # mIoU on object pixels averages the object classes
            train_objects = ground_truth(labels_uri, OBJECT_COLUMN, train_keys, out_size=res, kind=OBJECT_KIND) > 0
            classes = object_classes(train, train_objects)
        results[task] = score_task(kind, predictions, truth, objects, baselines=list(BASELINES[kind]),
                                   num_classes=int(spec.num_channels), classes=classes)
        if classes is not None:
            results[task]["object_classes"] = classes.tolist()
        n, prior = cfg.num_grid_samples, results[task]["strongest_baseline"]["all"]
        samples[task] = {"truth": truth[:n], "4M": predictions["4m"][:n], "prior": predictions[prior][:n],
                         "bound": predictions["tokenizer_bound"][:n]}
        log.info("evaluate: %s gap closed %s", task, results[task]["gap_closed"])
    rgb = np.stack([np.asarray(r[source], dtype=np.uint8).reshape(res, res, 3) for r in rows[:cfg.num_grid_samples]])
    summary = {"num_samples": len(rows), "checkpoint_step": meta.get("step"), "scheme": cfg.scheme,
               "num_steps": cfg.num_steps, "temperature": cfg.temperature, "tasks": results,
               "random_parts": _random_parts(ctx)}
    out = ctx.workdir.reports_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    write_report(out, summary, rgb=rgb, keys=keys[:cfg.num_grid_samples], samples=samples, kinds=kinds)
    return {"num_samples": len(rows),
            **{f"{t}_gap_closed": {k: round(v, 3) for k, v in r["gap_closed"].items()} for t, r in results.items()},
            **{f"{t}_beats_strongest_baseline": r["beats_strongest_baseline"] for t, r in results.items()}}


def _random_parts(ctx) -> list[str]:
    """Specialists with random weights behind the modalities 4M trained on (and so behind
    what is scored here): their numbers are plumbing, not quality. Random specialists of
    modalities outside the run (the demo's tiny CLIP, say) do not touch the report."""
    meta = label_store.store_metadata(ctx.workdir.labels_uri).get("specialists", {})
    used = {spec.specialist for spec in ctx.specs.values()}
    return sorted(n for n, p in meta.items() if p.get("random") and n in used)
