"""The 4M training stage: one readable loop over tokens.lance.

forward -> loss -> backward -> clip -> step -> log, top to bottom. Checkpoints carry the
model config, modality specs, tokenizer fingerprints, optimizer and RNG state; a re-run
resumes from the checkpoint `checkpoints/LATEST` names when it was made for the same run
(fingerprint), and follows the loss trajectory of an uninterrupted run (docs/training.md).
Ray Train runs this same loop on many workers (``fm21.train.distributed``): `train_worker`
is one rank, and one process is rank 0 of 1.
"""

from __future__ import annotations

import io
import json
import logging
import time

import numpy as np
import torch
from torch import nn

from fm21.config import TrainConfig
from fm21.progress import progress
from fm21.schedules import warmup_cosine
from fm21.store import fs
from fm21.store.fs import Location
from fm21.faults import crash_point
from fm21.train.checkpoint import (
    CONFIG_FILE, LEGACY_LATEST, IncompleteCheckpoint, init_weights, load_checkpoint, load_training_state,
    publish_latest, resolve_latest, rng_state, save_checkpoint, set_rng_state,
)
from fm21.train.loader import LanceTokenDataset, make_loader, row_to_sample
from fm21.train.masking import UnifiedMasking
from fm21.train.model import FourM
from fm21.train.parallelize import apply_parallelisms

log = logging.getLogger("fm21")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup from 0, then cosine decay to min_lr (apple/ml-4m `run_training_4m.py`, `cfgs/default/4m/`):
    the project's one schedule, ``fm21.schedules.warmup_cosine``.

    Counted in steps, unless ``train.warmup_tokens`` or ``train.total_tokens`` is set: then
    in tokens seen before ``step`` (``step * cfg.tokens_per_step``), the unset one derived
    from its steps value. The steps path is the one every steps-configured run had."""
    if cfg.warmup_tokens is None and cfg.total_tokens is None:
        return warmup_cosine(step, steps=cfg.steps, peak=cfg.lr, warmup=cfg.warmup_steps, floor=cfg.min_lr)
    per_step = cfg.tokens_per_step
    total = cfg.total_tokens if cfg.total_tokens is not None else cfg.steps * per_step
    warmup = cfg.warmup_tokens if cfg.warmup_tokens is not None else cfg.warmup_steps * per_step
    return warmup_cosine(step * per_step, steps=total, peak=cfg.lr, warmup=warmup, floor=cfg.min_lr)


NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._BatchNorm)


def no_decay(module: nn.Module, param_name: str) -> bool:
    """The reference's rule (apple/ml-4m `fourm/utils/optim_factory.py`, get_parameter_groups:
    no decay for names with ``norm.``/``.norm`` or ending in ``.bias``), stated on what a
    parameter is rather than on its path: a normalisation layer's parameters and every
    bias. Embeddings, mod_emb, mask_token and learned positions decay, as there. A path
    test would also hit a modality whose name contains "norm" (``normal``), and a shape
    test any parameter FSDP flattens."""
    return isinstance(module, NO_DECAY_MODULES) or param_name == "bias"


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (0.9, 0.95), eps 1e-8, ``cfg.weight_decay`` except on :func:`no_decay` parameters."""
    excluded = {id(p) for m in model.modules() for n, p in m.named_parameters(recurse=False) if no_decay(m, n)}
    decay, skip = [], []
    for p in model.parameters():  # each tensor once, tied ones included
        if p.requires_grad:
            (skip if id(p) in excluded else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": skip, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def weighted_loss(per_mod: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The 'mod' loss with per-modality weights: sum(w_m * loss_m) / number of modalities
    (all weights 1 gives FourM's own loss)."""
    return torch.stack([weights.get(m, 1.0) * v for m, v in per_mod.items()]).sum() / len(per_mod)


def _masking(cfg: TrainConfig, specs, seed: int) -> UnifiedMasking:
    return UnifiedMasking(specs, num_input_tokens=cfg.num_input_tokens, num_target_tokens=cfg.num_target_tokens,
                          mixture=list(cfg.mixture), seed=seed)


def _resume(ckpt_dir: Location, run_fp: str, model: FourM, opt: torch.optim.Optimizer, *, steps: int,
            loader_layout: dict) -> int:
    """Continue an unfinished run of the same configuration from its latest checkpoint:
    weights, optimizer moments, RNG states; the data stream is a function of the step
    (``LanceTokenDataset``). Anything else starts fresh. An incomplete checkpoint of this
    run is an error, not a silent fresh start or a resume without optimizer state."""
    latest = resolve_latest(ckpt_dir)
    if latest is None:
        return 0
    if not (latest / CONFIG_FILE).exists():  # LATEST is moved only after config.json: damaged by hand
        raise IncompleteCheckpoint(f"{latest}: named by LATEST but has no {CONFIG_FILE}; "
                                   f"delete {ckpt_dir} to train from scratch")
    meta = json.loads((latest / CONFIG_FILE).read_text())
    if meta.get("extra", {}).get("run_fingerprint") != run_fp or int(meta.get("step", steps)) >= steps:
        log.info("train: checkpoint in %s is from another or a finished run; starting fresh", ckpt_dir)
        return 0
    try:
        loaded, meta = load_checkpoint(latest)
        model.load_state_dict(loaded.state_dict())
        state = load_training_state(latest, opt)
    except IncompleteCheckpoint as err:
        raise IncompleteCheckpoint(f"{err}; delete {ckpt_dir} to train from scratch") from err
    set_rng_state(state["rng"])
    if state.get("loader") != loader_layout:
        log.warning("train: the data loader layout changed since the checkpoint (%s -> %s): the resumed run "
                    "sees other batches than an uninterrupted one", state.get("loader"), loader_layout)
    log.info("train: resumed from step %d", meta["step"])
    return int(meta["step"])


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> ``bf16`` where ``device`` runs bf16 matmuls natively, else ``fp32``."""
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if kind == "cpu":  # oneDNN's check: AVX512-BF16 or AMX; emulated bf16 is slower than fp32
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "fp32"


def autocast(precision: str, device: str):
    """The forward pass under ``precision`` (resolved): bf16 autocast on ``device``
    (weights, optimizer state and the cross-entropy stay fp32), or a no-op for fp32."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def token_stores(cfg: TrainConfig, default_uri) -> list[tuple[str, float]]:
    """``train.stores`` as ``(location, weight)``, each checked to exist (an error names its
    key); empty: the run's own tokens.lance, weight 1."""
    if not cfg.stores:
        return [(str(default_uri), 1.0)]
    out = []
    for i, store in enumerate(cfg.stores):
        key = f"train.stores[{i}].{'uri' if store.uri is not None else 'path'}"
        if not fs.exists(store.location):
            raise ValueError(f"{key}: no token store at {store.location}")
        out.append((store.location, store.weight))
    return out


def _train_dataset(cfg: TrainConfig, uri, specs, *, rank: int = 0, world_size: int = 1) -> LanceTokenDataset:
    """The training split as a stream of batches that is a pure function of (seed, step);
    this rank's part of each (``uri``: the run's tokens.lance, unless ``train.stores``)."""
    return LanceTokenDataset(token_stores(cfg, uri), specs, _masking(cfg, specs, cfg.seed),
                             batch_size=cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world_size,
                             num_streams=max(1, cfg.num_workers))


def _batches_from(dataset: LanceTokenDataset, start: int, cfg: TrainConfig):
    """An iterator over the batches of steps ``start``, ``start + 1``, ..."""
    dataset.start_step = start
    return iter(make_loader(dataset, num_workers=cfg.num_workers))


def _trim_history(path: Location, start: int) -> None:
    """Keep the records of steps before ``start``: a run killed after logging a step but
    before checkpointing it logs that step again when resumed."""
    if start == 0 or not path.exists():
        path.unlink(missing_ok=True)
        return
    lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] < start]
    fs.write_atomic(path, "".join(line + "\n" for line in lines))


def _to_device(mod_dict: dict, device: str) -> dict:
    return {m: {k: v.to(device) for k, v in d.items()} for m, d in mod_dict.items()}


def validation_batches(uri, specs, masking: UnifiedMasking, cfg: TrainConfig) -> list[dict]:
    """Held-out rows masked once with a fixed seed: the same inputs and targets at every
    evaluation, so the curve moves only with the model."""
    from fm21.train.loader import read_split
    from fm21.train.masking import collate_mod_dicts

    if cfg.val_every <= 0:
        return []
    rows = read_split(uri, specs, split="val", limit=cfg.val_samples)
    rng = np.random.default_rng(cfg.seed + 7919)
    samples = [masking(row_to_sample(r, specs, rng), rng) for r in rows]
    return [collate_mod_dicts(samples[i:i + cfg.batch_size]) for i in range(0, len(samples), cfg.batch_size)]


@torch.no_grad()
def validation_loss(model: FourM, batches: list[dict], device: str) -> dict[str, float]:
    """Mean total and per-modality loss over the fixed validation batches."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    for batch in batches:
        loss, per_mod = model(_to_device(batch, device))
        for key, value in {"val_loss": loss, **{f"val_loss/{m}": v for m, v in per_mod.items()}}.items():
            totals[key] = totals.get(key, 0.0) + float(value) / len(batches)
    model.train(was_training)
    return totals


class Alone:
    """The data-parallel hooks of a one-process run: nothing to wrap, reduce or report.

    ``fm21.train.distributed.RayRank`` implements the same methods for one rank of a Ray
    Train run (DDP or FSDP); the loop calls them at the same places either way, so one
    process is the loop as it always was.
    """

    rank, world_size = 0, 1
    device: str | None = None  # None: train.device; a Ray GPU rank has its own

    def wrap(self, model: FourM, opt: torch.optim.Optimizer) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        return model, opt

    def clip(self, model: torch.nn.Module, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over ranks (of the logged losses)."""
        return values

    def save(self, ckpt_dir: Location, model: torch.nn.Module, opt, step: int, extra: dict, *,
             loader_layout: dict) -> None:
        _checkpoint(ckpt_dir, model, opt, step, extra, loader_layout=loader_layout)

    def report(self, step: int, record: dict | None, checkpoint: Location | None) -> None:
        """A logged step (record) and/or a written checkpoint, for a supervisor to see."""


def run_train(cfg: TrainConfig, ctx) -> dict:
    """The train stage: in this process, or on ``train.ray.num_workers`` Ray Train workers."""
    if cfg.ray.num_workers > 0:
        from fm21.train.distributed import run_distributed

        return run_distributed(cfg, ctx)
    return train_worker(cfg, ctx)


def train_worker(cfg: TrainConfig, ctx, par: Alone | None = None) -> dict:
    """The training loop of one rank (``par``: its data-parallel hooks; None: one process).

    Every rank builds the same model, resumes from the same checkpoint and reads only its
    own disjoint part of the step's global batch of ``train.batch_size`` samples (the
    batch does not depend on the number of ranks): W ranks x B/W samples are one process x
    B samples (up to float reduction order and the per-rank mean of each modality's loss).
    Only rank 0 writes history, plots and checkpoint files.
    """
    from fm21.store.manifest import fingerprint_of, read_manifest
    from fm21.store.tokens import check_compatible, read_store_metadata

    par = par or Alone()
    device = par.device or cfg.device
    if cfg.batch_size % par.world_size:
        raise ValueError(f"train.batch_size {cfg.batch_size} is not divisible by {par.world_size} workers")
    uri = ctx.workdir.tokens_uri
    specs = cfg.select(ctx.specs)  # train.modalities: the subset 4M trains on
    check_compatible(uri, specs)
    store_meta = read_store_metadata(uri)
    torch.manual_seed(cfg.seed)
    model = FourM(specs, cfg.model, num_input_tokens=cfg.num_input_tokens, num_target_tokens=cfg.num_target_tokens)
    model.to(device)
    apply_parallelisms(model, cfg)  # activation checkpointing, compile: per block, from outside (before DDP)
    opt = build_optimizer(model, cfg)
    ckpt_dir = ctx.workdir.checkpoints_dir
    # The run's identity leaves out train.ray: the same run may resume on another cluster size.
    run_fp = fingerprint_of({"train": cfg.model_dump(mode="json", exclude={"ray"}),
                             "tokens": (read_manifest(ctx.workdir.manifest("tokens")) or {}).get("fingerprint")})
    # Each rank reads its part of the step's global batch (a pure function of seed and
    # step, whatever the number of ranks): the samples of one process at that batch.
    dataset = _train_dataset(cfg, uri, specs, rank=par.rank, world_size=par.world_size)
    start = _resume(ckpt_dir, run_fp, model, opt, steps=cfg.steps, loader_layout=dataset.layout())
    if start == 0 and cfg.init_from:  # fine-tuning: a fresh run from another checkpoint's weights
        source = init_weights(model, cfg.init_from)
        log.info("train: initialised from %s (step %s, %s)", cfg.init_from, source.get("step"),
                 source.get("extra", {}).get("weights", "fm21"))
    num_parameters = sum(p.numel() for p in model.parameters())
    model, opt = par.wrap(model, opt)
    batches = _batches_from(dataset, start, cfg)
    val_batches = validation_batches(uri, specs, _masking(cfg, specs, cfg.seed), cfg)
    extra = {"run_fingerprint": run_fp, "tokenizers": store_meta["tokenizers"], "train": cfg.model_dump(mode="json")}
    history_path = ctx.workdir.stage_dir("train") / "history.jsonl"
    writer = par.rank == 0
    if writer:
        _trim_history(history_path, start)
    precision = resolve_precision(cfg.precision, device)
    t0, tokens_seen = time.time(), 0
    model.train()
    with progress("train", total=cfg.steps - start, unit="step") as advance:
        for step in range(start, cfg.steps):
            mod_dict = _to_device(next(batches), device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            with autocast(precision, device):
                loss, per_mod = model(mod_dict)
            if cfg.loss_weights:
                loss = weighted_loss(per_mod, cfg.loss_weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = par.clip(model, cfg.grad_clip)
            opt.step()
            tokens_seen += cfg.batch_size * (cfg.num_input_tokens + cfg.num_target_tokens)
            last = step == cfg.steps - 1
            validate = bool(val_batches) and (step % cfg.val_every == 0 or last)
            record = None
            if step % cfg.log_every == 0 or validate or last:
                names = sorted(per_mod)  # the same order on every rank for the reduction
                values = torch.stack([loss.detach(), *(per_mod[m].detach() for m in names)])
                mean = dict(zip(["", *names], par.mean(values)))
                record = {"step": step, "loss": float(mean[""]), "lr": lr_at(step, cfg), "grad_norm": float(grad_norm),
                          **{f"loss/{m}": float(mean[m]) for m in per_mod}}
                if validate:  # every rank: an FSDP forward is collective
                    record.update(validation_loss(model, val_batches, device))
                if writer:
                    _append(history_path, record)
                    log.info("train: step %d loss %.4f%s lr %.2e", step, record["loss"],
                             f" val {record['val_loss']:.4f}" if "val_loss" in record else "", record["lr"])
            crash_point("train.after_step")  # a kill here: stepped and logged, not checkpointed
            saved = None
            if (step + 1) % cfg.checkpoint_every == 0 or step == cfg.steps - 1:
                par.save(ckpt_dir, model, opt, step + 1, extra, loader_layout=dataset.layout())
                saved = ckpt_dir / f"step-{step + 1:07d}"
            par.report(step, record, saved)
            advance(1)
    seconds = time.time() - t0
    history = [json.loads(line) for line in history_path.read_text().splitlines()] if history_path.exists() else []
    if writer:
        plot_losses(history, ctx.workdir.stage_dir("train") / "loss.png")
    return {
        "steps": cfg.steps,
        "resumed_from": start,
        "final_loss": history[-1]["loss"] if history else None,
        "first_loss": history[0]["loss"] if history else None,
        "final_val_loss": next((h["val_loss"] for h in reversed(history) if "val_loss" in h), None),
        "parameters": num_parameters,
        "precision": precision,
        "tokens_per_second": round(tokens_seen / seconds, 1) if seconds > 0 else None,
        "seconds_training": round(seconds, 1),
    }


def _append(path: Location, record: dict) -> None:
    fs.append_text(path, json.dumps(record) + "\n")


def _checkpoint(ckpt_dir: Location, model, opt, step: int, extra: dict, *, loader_layout: dict) -> None:
    """Write step-N completely (config.json last), then point `LATEST` at it (one atomic write)."""
    target = ckpt_dir / f"step-{step:07d}"
    trainer_state = {"step": step, "rng": rng_state(), "loader": loader_layout}
    save_checkpoint(target, model=model, step=step, optimizer=opt, trainer_state=trainer_state, extra=extra)
    crash_point("train.before_latest")
    publish_latest(target)
    if (ckpt_dir / LEGACY_LATEST).exists():  # an older run's copy: LATEST is the one truth now
        fs.remove_tree(ckpt_dir / LEGACY_LATEST)


def plot_losses(history: list[dict], path: Location) -> None:
    """loss.png: training loss (total and per modality) on the left, the validation loss
    on fixed held-out batches (total and per modality) on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, prefix, title in ((axes[0], "loss", "training loss (sampled masks; black: the optimised, weighted total)"),
                              (axes[1], "val_loss", "validation loss (held-out rows, fixed masks)")):
        rows = [h for h in history if prefix in h]
        if not rows:
            ax.set_title(f"{title}: not logged")
            continue
        steps = np.array([h["step"] for h in rows])
        ax.plot(steps, [h[prefix] for h in rows], color="black", lw=2, marker="o" if prefix == "val_loss" else None,
                ms=3, label="total: the optimised loss (train.loss_weights applied)" if prefix == "loss"
                else "total: mean over modalities (unweighted)")
        for key in sorted(k for k in rows[-1] if k.startswith(prefix + "/")):
            ax.plot(steps, [h.get(key, np.nan) for h in rows], lw=1, alpha=0.8, label=key.split("/", 1)[1])
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.set_title(title)
    axes[0].set_ylabel("cross-entropy")
    legend_ax = axes[1] if axes[1].get_legend_handles_labels()[0] else axes[0]  # no validation: the training side
    legend_ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.suptitle("fm21 4M training: loss per modality")
    fig.tight_layout()
    buf = io.BytesIO()  # bytes, so that ``path`` may be on an object store
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    fs.write_atomic(path, buf.getvalue())
