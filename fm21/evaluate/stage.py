"""The evaluate stage: X -> Y by generation, scored against truth.

The tasks come from the registry: every target modality of the trained model whose label
kind has metrics (``HEADLINE``) is a task, named by the label column it is scored against
(``evaluate.tasks`` picks among them; None: all). The label kind picks the evaluator
(``EVALUATORS``): dense maps (depth, normal, classes) below; boxes and text
(``sequence_tasks``), rgb (``rgb_task``: X -> RGB from each ``evaluate.rgb_from``) and
vector (``retrieval``). A requested target the run did not train is listed as skipped,
with the reason. Dense tasks, as before:
For each task the trained 4M model generates the target's tokens from RGB pixels alone
(MaskGIT or ROAR), the task's tokenizer decodes them, and the result is scored against
the ground-truth labels of held-out samples beside:
- the tokenizer-only bound: ground truth -> tokens -> decode (what a perfect 4M could reach);
- image-blind baselines (``fm21.evaluate.baselines``: the per-pixel prior of the training
  split and the like) and chance, the label of a random training sample; the verdict
  compares 4M with the strongest of them.
Every prediction is scored on all pixels and on object pixels only (instance id != 0),
and the report gives the fraction of the baseline-to-bound gap 4M closes in both.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from fm21.config import EvaluateConfig
from fm21.evaluate.baselines import BASELINES, object_classes
from fm21.evaluate.metrics import HEADLINE, gap_closed, headline_of, task_metrics
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
DENSE_KINDS = ("depth", "normal", "classes")  # RGB -> a dense map, scored per pixel


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


def summarise(kind: str, result: dict) -> dict:
    """Add to a task's ``result`` (``scores``: scope -> predictor -> metrics, ``baselines``)
    the strongest baseline per scope (by the headline metric), the share of the
    baseline-to-bound gap 4M closes, and whether 4M beats that baseline in every scope."""
    metric, sign = headline_of(result, kind)
    scores = result["scores"]
    result.update(kind=kind, strongest_baseline={}, gap_closed={})
    for scope, s in scores.items():
        # chance (a random training label) never sees the image either: on sparse labels
        # such as boxes it can beat every fixed prediction, and then it is the bar
        baselines = [*result["baselines"], *(["chance"] if "chance" in s else [])]
        best = max(baselines, key=lambda b: sign * np.nan_to_num(s[b][metric], nan=-sign * np.inf))
        result["strongest_baseline"][scope] = best
        result["gap_closed"][scope] = gap_closed(s["4m"][metric], s[best][metric], s["tokenizer_bound"][metric])
    result["beats_strongest_baseline"] = all(
        sign * (scores[sc]["4m"][metric] - scores[sc][result["strongest_baseline"][sc]][metric]) > 0 for sc in scores
    )
    return result


def score_task(kind: str, predictions: dict[str, np.ndarray], truth: np.ndarray, objects: np.ndarray,
               *, baselines: list[str], num_classes: int, classes: np.ndarray | None) -> dict:
    """Metrics (of label kind ``kind``) of every prediction on all pixels and on object
    pixels; the strongest baseline per scope (by the headline metric); the gap 4M closes
    toward the bound."""
    kw = {"num_classes": num_classes}
    scores = {
        "all": {n: task_metrics(kind, p, truth, **kw) for n, p in predictions.items()},
        "objects": {n: task_metrics(kind, p, truth, mask=objects, classes=classes, **kw)
                    for n, p in predictions.items()},
    }
    return summarise(kind, {"scores": scores, "baselines": baselines})


def plan_tasks(requested: list[str] | None, specs: dict[str, ModalitySpec]) -> tuple[dict[str, ModalitySpec], dict]:
    """(target name -> spec of the tasks to run, task name -> reason of those skipped).
    ``requested`` None: every evaluable target of the model."""
    evaluable = {n: s for n, s in specs.items() if s.can_be_target and label_kind(s) in HEADLINE}
    run, skipped = {}, {}
    for name in requested if requested is not None else list(evaluable):
        spec = specs.get(name) or MODALITIES[name]
        if name not in specs:
            skipped[task_name(spec)] = f"the run did not train {name} (not in modalities.enabled)"
        elif name not in evaluable:
            skipped[task_name(spec)] = f"{name} is not a target of the trained model"
        else:
            run[name] = spec
    return run, skipped


def task_name(spec: ModalitySpec) -> str:
    """A task is reported under the label column it is scored against (depth, det, ...)."""
    return spec.label_columns[0]


def _dense_task(task: str, spec: ModalitySpec, model, rows, cfg, ctx, *, keys, train_keys, res, objects) -> tuple:
    """RGB -> a dense map (depth, normal, classes): the result and its sample-grid columns."""
    from fm21.tokenize.checkpoint import load_tokenizer

    target, kind = spec.name, label_kind(spec)
    labels_uri = ctx.workdir.labels_uri
    tok = load_tokenizer(ctx.workdir.tokenizers_dir / target)
    truth = ground_truth(labels_uri, task, keys, out_size=res, kind=kind)
    train = ground_truth(labels_uri, task, train_keys, out_size=res, kind=kind)
    predictions = {
        "4m": tok.decode_labels(_generate(model, rows, target, cfg)),
        "tokenizer_bound": tok.decode_labels(np.stack([np.asarray(r[target], dtype=np.int64) for r in rows])),
    }
    for name, baseline in BASELINES[kind].items():
        predictions[name] = baseline(truth, train)
    predictions["chance"] = train[np.random.default_rng(cfg.seed).integers(len(train), size=len(truth))]
    classes = None
    if PREPROCESSORS[kind].categorical:  # mIoU on object pixels averages the object classes
        train_objects = ground_truth(labels_uri, OBJECT_COLUMN, train_keys, out_size=res, kind=OBJECT_KIND) > 0
        classes = object_classes(train, train_objects)
    result = score_task(kind, predictions, truth, objects, baselines=list(BASELINES[kind]),
                        num_classes=int(spec.num_channels), classes=classes)
    if classes is not None:
        result["object_classes"] = classes.tolist()
    n, baseline = cfg.num_grid_samples, result["strongest_baseline"]["all"]
    grid = {"truth": truth[:n], "4M": predictions["4m"][:n], "baseline": predictions[baseline][:n],
            "bound": predictions["tokenizer_bound"][:n]}
    return result, grid


def run_evaluate(cfg: EvaluateConfig, ctx) -> dict:
    from fm21.evaluate.retrieval import evaluate_retrieval
    from fm21.evaluate.rgb_features import load_scorers
    from fm21.evaluate.rgb_task import evaluate_rgb
    from fm21.evaluate.sequence_tasks import evaluate_caption, evaluate_det
    from fm21.tokenize.checkpoint import load_tokenizer
    from fm21.tokenize.stage import TEXT_DIR
    from fm21.tokenize.text import TextTokenizer

    torch.manual_seed(cfg.seed)
    model, meta = load_latest(ctx.workdir.checkpoints_dir)
    model.eval()
    specs = model.specs
    planned, skipped = plan_tasks(cfg.tasks, specs)
    rows = read_split(ctx.workdir.tokens_uri, specs, split="val", limit=cfg.num_samples)
    if not rows:
        raise ValueError(f"{ctx.workdir.tokens_uri} has no validation rows; raise tokens.val_fraction")
    keys = [r["key"] for r in rows]
    train_keys = _train_keys(ctx.workdir.tokens_uri, NUM_PRIOR_SAMPLES)
    source = input_modality(specs)
    res = specs[source].resolution
    labels_uri = ctx.workdir.labels_uri
    objects = ground_truth(labels_uri, OBJECT_COLUMN, keys, out_size=res, kind=OBJECT_KIND) > 0  # (B, R, R)
    need_train_rows = any(label_kind(s) not in DENSE_KINDS for s in planned.values())
    train_rows = read_split(ctx.workdir.tokens_uri, specs, split="train", limit=NUM_PRIOR_SAMPLES) \
        if need_train_rows else []
    text_dir = ctx.workdir.tokenizers_dir / TEXT_DIR
    results: dict[str, dict] = {}
    kinds: dict[str, str] = {}
    samples: dict[str, dict[str, np.ndarray]] = {}
    examples: dict[str, dict[str, list[str]]] = {}
    retrieval: dict[str, dict] = {}
    random_scorers: set[str] = set()  # feature specialists scoring X -> RGB with random weights
    for target, spec in tracked(list(planned.items()), "evaluate", unit="task"):
        task, kind = task_name(spec), label_kind(spec)
        if kind in DENSE_KINDS:
            results[task], samples[task] = _dense_task(task, spec, model, rows, cfg, ctx, keys=keys,
                                                       train_keys=train_keys, res=res, objects=objects)
            kinds[task] = kind
        elif kind in ("boxes", "text"):
            if not text_dir.exists():
                skipped[task] = f"no text tokenizer at {text_dir}"
                continue
            text_tok = TextTokenizer.load(text_dir)
            if kind == "boxes":
                out = evaluate_det(model, rows, train_rows, target=target, source=source, text_tok=text_tok,
                                   labels_uri=labels_uri, cfg=cfg)
            else:
                out = evaluate_caption(model, rows, train_rows, target=target, source=source, text_tok=text_tok,
                                       shard_paths=ctx.workdir.shard_paths(), cfg=cfg)
            if "skipped" in out:
                skipped[task] = out["skipped"]
                continue
            examples[task] = out.pop("examples")
            results[task], kinds[task] = summarise(kind, out), kind
        elif kind == "rgb":
            tok = load_tokenizer(ctx.workdir.tokenizers_dir / target)
            truth = np.stack([np.asarray(r[source], dtype=np.uint8).reshape(res, res, 3) for r in rows])
            train_rgb = np.stack([np.asarray(r[source], dtype=np.uint8).reshape(res, res, 3) for r in train_rows])
            conditions = [c for c in cfg.rgb_from if c in specs and c != target]
            if not conditions:
                skipped[task] = f"none of evaluate.rgb_from {cfg.rgb_from} was trained"
            scorers = load_scorers(getattr(ctx, "specialists", {}), image_size=res) if conditions else {}
            random_scorers |= {n for n, s in scorers.items() if s.is_random}
            for cond in conditions:
                name = f"{task} from {task_name(specs[cond])}"
                out = evaluate_rgb(model, rows, train_rows, train_rgb, target=target, condition=cond, tok=tok,
                                   truth=truth, objects=objects, cfg=cfg, scorers=scorers)
                samples[name], kinds[name] = out.pop("grid"), kind
                results[name] = summarise(kind, out)
        elif kind == "vector":
            tok = load_tokenizer(ctx.workdir.tokenizers_dir / target)
            conditions = [c for c in cfg.retrieval_from if c in specs and c != target]
            if task not in label_store.open_dataset(labels_uri).schema.names:
                skipped[task] = f"labels.lance has no {task} column to search"
                continue
            out = evaluate_retrieval(model, rows, train_rows, target=target, conditions=conditions, tok=tok,
                                     labels_uri=labels_uri, cfg=cfg)
            retrieval[task] = out
            from_rgb = f"{source} → {target}"
            if from_rgb in out["scores"]:  # the task row: RGB -> embedding, recall of the sample itself
                sc = out["scores"]
                results[task] = summarise(kind, {"scores": {"all": {
                    "4m": sc[from_rgb], "tokenizer_bound": sc["tokenizer_bound"],
                    "mean training embedding": sc["mean training embedding"], "chance": sc["chance"],
                    "true embedding": sc["true embedding"]}}, "baselines": ["mean training embedding"]})
                kinds[task] = kind
        log.info("evaluate: %s done", task)
    rgb = np.stack([np.asarray(r[source], dtype=np.uint8).reshape(res, res, 3) for r in rows[:cfg.num_grid_samples]])
    summary = {"num_samples": len(rows), "checkpoint_step": meta.get("step"), "scheme": cfg.scheme,
               "num_steps": cfg.num_steps, "temperature": cfg.temperature, "tasks": results,
               "skipped": skipped, "retrieval": retrieval, "examples": examples,
               "random_parts": sorted(set(_random_parts(ctx)) | random_scorers)}
    out_dir = ctx.workdir.reports_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    write_report(out_dir, summary, rgb=rgb, keys=keys[:cfg.num_grid_samples], samples=samples, kinds=kinds)
    log.info("evaluate: report at %s", out_dir / "report.md")
    return {"num_samples": len(rows), "report": str(out_dir / "report.md"),
            **{f"{t}_gap_closed": {k: round(v, 3) for k, v in r["gap_closed"].items()} for t, r in results.items()},
            **{f"{t}_beats_strongest_baseline": r["beats_strongest_baseline"] for t, r in results.items()},
            **({"skipped": skipped} if skipped else {})}


def _random_parts(ctx) -> list[str]:
    """Specialists with random weights behind the modalities 4M trained on (and so behind
    what is scored here): their numbers are plumbing, not quality. Random specialists of
    modalities outside the run (the demo's tiny CLIP, say) do not touch the report. And
    the 4M model itself (``4m``) when its checkpoint is tagged ``random_init``, as `fm21
    import 4m21` tags an import of a release-format folder made from random weights; and
    a tokenizer with random parts (``tokenizer <modality>``: an import of random weights,
    or a released DiVAE without decoder tensors)."""
    from fm21.tokenize.checkpoint import read_tokenizer_config
    from fm21.train.checkpoint import read_checkpoint_config, resolve_latest
    from fm21.train.released_run import tokenizer_random

    meta = label_store.store_metadata(ctx.workdir.labels_uri).get("specialists", {})
    used = {spec.specialist for spec in ctx.specs.values()}
    parts = [n for n, p in meta.items() if p.get("random") and n in used]
    latest = resolve_latest(ctx.workdir.checkpoints_dir)
    if latest is not None and (read_checkpoint_config(latest).get("extra") or {}).get("random_init"):
        parts.append("4m")
    for name in ctx.specs:
        folder = ctx.workdir.tokenizers_dir / name
        if (folder / "config.json").exists() and tokenizer_random(read_tokenizer_config(folder)):
            parts.append(f"tokenizer {name}")
    return sorted(parts)
