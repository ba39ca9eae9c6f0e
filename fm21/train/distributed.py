"""The train stage on Ray Train: ``train.ray.num_workers`` ranks run the same loop.

``TorchTrainer`` starts the workers and their process group (gloo on CPU, NCCL on GPU);
each worker runs :func:`fm21.train.loop.train_worker` with :class:`RayRank` as its
data-parallel hooks: DDP through ``ray.train.torch.prepare_model`` (or FSDP with each
encoder/decoder block a shard unit, for L/XL), losses averaged over ranks for the log, and
checkpoints written by rank 0 into the workdir (local, shared filesystem or ``s3://``).

The fm21 checkpoint in the workdir is the one copy of the weights. Ray Train is told of
each one by a small pointer checkpoint (``fm21.json``: the step and where it is) under
``<workdir>/train/ray``, so its run state names the last checkpoint without copying the
weights. When a worker dies, ``FailureConfig(max_failures)`` restarts the worker group and
every rank resumes from the checkpoint the workdir's ``LATEST`` names (the run fingerprint ignores ``train.ray``,
so a run may also resume on another number of workers).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from fm21.config import TrainConfig
from fm21.store import fs
from fm21.store.fs import Location
from fm21.train.loop import Alone, _checkpoint, build_optimizer, train_worker

log = logging.getLogger("fm21")

POINTER = "fm21.json"  # the content of the checkpoints Ray Train keeps


def run_distributed(cfg: TrainConfig, ctx) -> dict:
    """Fit a TorchTrainer of ``cfg.ray.num_workers`` workers; -> rank 0's stage counts."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from fm21.ray_runtime import ensure_ray

    ensure_ray(ctx.ray)
    storage = ctx.workdir.stage_dir("train") / "ray"
    storage_path = str(storage) if fs.is_uri(storage) else str(Path(storage).resolve())
    log.info("train: %d Ray Train workers (%s, %s); Ray run state in %s", cfg.ray.num_workers,
             "GPU" if cfg.ray.use_gpu else "CPU", "FSDP" if cfg.ray.fsdp else "DDP", storage_path)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "ctx": ctx, "env": _worker_env()},
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker={"CPU": 1, **({"GPU": 1} if cfg.ray.use_gpu else {})}),
        run_config=RunConfig(
            name="fm21-train", storage_path=storage_path,
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    return {k: v for k, v in result.metrics.items() if k in COUNT_KEYS} | {"workers": cfg.ray.num_workers}


def _worker_env() -> dict[str, str]:
    """What the workers must see of the driver's environment: the object store's settings
    and the fault-injection switches (a Ray started earlier, or a cluster, lacks them)."""
    from fm21.faults import worker_env

    return worker_env() | {k: v for k, v in os.environ.items() if k in (KILL_ENV, "FM21_CRASH_DIR")}


COUNT_KEYS = ("steps", "resumed_from", "final_loss", "first_loss", "final_val_loss", "parameters",
              "tokens_per_second", "seconds_training")


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the loop, then the counts as its last report."""
    import ray.train

    os.environ.update(config["env"])
    cfg = TrainConfig.model_validate(config["cfg"])
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            pointer = json.loads((Path(d) / POINTER).read_text())
        log.info("train: Ray Train restart; its last checkpoint is step %d (%s)", pointer["step"], pointer["path"])
    rank = RayRank(cfg)
    counts = train_worker(cfg, config["ctx"], rank)
    # Ray Train's result carries the metrics of its last checkpoint: the counts go with a
    # pointer to the final one.
    final = config["ctx"].workdir.checkpoints_dir / f"step-{cfg.steps:07d}"
    rank.report_checkpoint({k: v for k, v in counts.items() if v is not None}, final, cfg.steps)


class RayRank(Alone):
    """The data-parallel hooks of one Ray Train worker (see :class:`fm21.train.loop.Alone`)."""

    def __init__(self, cfg: TrainConfig) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = str(ray.train.torch.get_device()) if cfg.ray.use_gpu else None
        self.cfg = cfg
        self.fsdp = cfg.ray.fsdp and self.world_size > 1  # one worker: nothing to shard

    # ------------------------------------------------------------------ model
    def wrap(self, model, opt):
        from ray.train.torch import prepare_model

        if self.fsdp:
            return _fsdp_wrap(model, opt, torch.device(self.device or "cpu"))
        # find_unused_parameters: a modality without targets in a rank's slice leaves its
        # output head out of that rank's graph. The pos tables are constant buffers.
        ddp = prepare_model(model, parallel_strategy="ddp",
                            parallel_strategy_kwargs={"find_unused_parameters": True, "broadcast_buffers": False})
        return ddp, opt

    def clip(self, model, max_norm: float) -> torch.Tensor:
        if self.fsdp:  # the norm over all shards
            return model.clip_grad_norm_(max_norm)
        return super().clip(model, max_norm)  # DDP: gradients are already averaged, equal on every rank

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        values = values.detach().clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world_size

    # ------------------------------------------------------------------ checkpoints
    def save(self, ckpt_dir: Location, model, opt, step: int, extra: dict, *, loader_layout: dict) -> None:
        import torch.distributed as dist

        if self.fsdp:
            _fsdp_save(self.cfg, self.rank, ckpt_dir, model, opt, step, extra, loader_layout)  # collective
        elif self.rank == 0:
            _checkpoint(ckpt_dir, getattr(model, "module", model), opt, step, extra,
                        loader_layout=loader_layout)  # 1 worker: no DDP
        dist.barrier()  # no rank runs ahead of a checkpoint that a restart would read

    def report(self, step: int, record: dict | None, checkpoint: Location | None) -> None:
        import ray.train

        _injected_exit(self.rank, step)
        if record is None and checkpoint is None:
            return  # every rank skips the same steps: a report is a barrier in Ray Train
        metrics = {"step": step, **(record or {})}
        if checkpoint is None:
            ray.train.report(metrics)
        else:
            self.report_checkpoint(metrics, checkpoint, step + 1)

    def report_checkpoint(self, metrics: dict, checkpoint: Location, step: int) -> None:
        """Report ``metrics`` with, from rank 0, a pointer to the fm21 checkpoint of ``step``."""
        import ray.train

        if self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / POINTER).write_text(json.dumps({"step": step, "path": str(checkpoint)}))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


# ---------------------------------------------------------------------- FSDP (L/XL)
def _fsdp_wrap(model, opt, device: torch.device):
    """FSDP with each encoder/decoder block a unit; the optimizer is rebuilt on the sharded
    parameters with the same groups and settings, and takes over the resumed state.

    Wrapped here rather than by ``ray.train.torch.prepare_model``, which refuses FSDP
    without CUDA; ``device_id`` is the worker's device (its GPU, or the CPU).
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_optimizer_state_dict)
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from fm21.train.blocks import DecoderBlock, EncoderBlock

    full = StateDictOptions(full_state_dict=True)
    state = get_optimizer_state_dict(model, opt, options=full)  # keyed by parameter name
    group_of = {id(p): i for i, g in enumerate(opt.param_groups) for p in g["params"]}
    names = {n: group_of[id(p)] for n, p in model.named_parameters() if id(p) in group_of}
    sharded = FullyShardedDataParallel(model, auto_wrap_policy=ModuleWrapPolicy({EncoderBlock, DecoderBlock}),
                                       use_orig_params=True, device_id=device)
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": []} for g in opt.param_groups]
    for name, p in sharded.named_parameters():  # the original names behind FSDP's prefixes
        groups[names[name.replace("_fsdp_wrapped_module.", "")]]["params"].append(p)
    new_opt = type(opt)(groups)  # each group carries all its settings (lr, betas, eps, decay)
    if state.get("state"):
        set_optimizer_state_dict(sharded, new_opt, state, options=full)
    return sharded, new_opt


def _fsdp_save(cfg: TrainConfig, rank: int, ckpt_dir: Location, model, opt, step: int, extra: dict,
               loader_layout: dict) -> None:
    """Gather the full weights and optimizer state (every rank), then rank 0 writes them as
    an ordinary fm21 checkpoint, so that resume, evaluation and 1-process runs read it."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict, set_optimizer_state_dict)

    from fm21.train.model import FourM

    gather = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=gather)
    optim = get_optimizer_state_dict(model, opt, options=gather)
    if rank != 0:
        return
    inner = model.module
    replica = FourM(inner.specs, cfg.model, num_input_tokens=cfg.num_input_tokens,
                    num_target_tokens=cfg.num_target_tokens)
    replica.load_state_dict(weights)
    plain = build_optimizer(replica, cfg)
    set_optimizer_state_dict(replica, plain, optim, options=StateDictOptions(full_state_dict=True))
    _checkpoint(ckpt_dir, replica, plain, step, extra, loader_layout=loader_layout)


# ---------------------------------------------------------------------- fault injection
KILL_ENV = "FM21_KILL_WORKER_AT"  # "<rank>:<step>": that worker exits at that step, once


def _injected_exit(rank: int, step: int) -> None:
    """``FM21_KILL_WORKER_AT=<rank>:<step>`` (tests): the worker of that rank dies with
    ``os._exit`` after that step, the first time only (a marker file in ``FM21_CRASH_DIR``),
    so that the restarted run goes past it."""
    spec = os.environ.get(KILL_ENV)
    if not spec or spec != f"{rank}:{step}":
        return
    marker = Path(os.environ.get("FM21_CRASH_DIR") or tempfile.gettempdir()) / f"kill-worker-{rank}-{step}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    log.warning("train: injected exit of worker %d at step %d", rank, step)
    os._exit(1)
