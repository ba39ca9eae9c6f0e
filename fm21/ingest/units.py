"""Synthetic ingest as work units: one output shard = one Ray task, resumable per shard.

Shard ``i`` holds scenes ``[i * samples_per_shard, (i + 1) * samples_per_shard)``, so a
task needs only its index. It renders the scenes and writes its tar under a temporary
name, then renames it into place: a shard file that exists is complete. A rerun (same
config and seed, same staging folder) submits only the shards that do not exist yet.
Folder and webdataset sources stay sequential: their shard boundaries depend on which
inputs are rejected, so units would change shard contents (see docs/data-plane.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import webdataset as wds

from fm21.config import IngestConfig, RayConfig
from fm21.faults import crash_point
from fm21.ingest.shards import _FIXED_MTIME, SHARD_PATTERN, synthetic_key, synthetic_sample
from fm21.ingest.synthetic import render_scene

log = logging.getLogger(__name__)

SCENE_SEED_STRIDE = 1_000_003  # scene i of run seed s is rendered with s * stride + i


def num_synthetic_shards(cfg: IngestConfig) -> int:
    return -(-cfg.synthetic.num_samples // cfg.samples_per_shard)


def write_synthetic_shard(cfg: dict[str, Any], *, seed: int, index: int, directory: str) -> dict[str, Any]:
    """Render and write shard ``index``; byte-identical to the sequential ShardWriter's."""
    icfg = IngestConfig.model_validate(cfg)
    syn = icfg.synthetic
    start = index * icfg.samples_per_shard
    stop = min(start + icfg.samples_per_shard, syn.num_samples)
    path = Path(directory) / SHARD_PATTERN.format(index)
    tmp = path.with_name(f".tmp-{path.name}")  # not matched by the shard-*.tar glob
    tar = wds.TarWriter(str(tmp), encoder=False, mtime=_FIXED_MTIME)
    try:
        for i in range(start, stop):
            scene = render_scene(seed * SCENE_SEED_STRIDE + i, icfg.image_size,
                                 min_objects=syn.min_objects, max_objects=syn.max_objects)
            tar.write(synthetic_sample(scene, key=synthetic_key(seed, i), index=i).as_wds())
            crash_point("ingest.in_shard")
    finally:
        tar.close()
    os.replace(tmp, path)
    crash_point("ingest.after_shard")
    return {"shard": index, "samples": stop - start, "node": _node_id()}


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def build_synthetic(cfg: IngestConfig, *, shards_dir: Path, seed: int, ray: RayConfig | None) -> dict[str, int]:
    """Write the shards that are missing; in Ray tasks when a Ray config is given."""
    shards_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(num_synthetic_shards(cfg)) if not (shards_dir / SHARD_PATTERN.format(i)).exists()]
    args = {"cfg": cfg.model_dump(mode="json"), "seed": seed, "directory": str(shards_dir)}
    if ray is None:
        results = [write_synthetic_shard(**args, index=i) for i in todo]
    else:
        results = _run_tasks(todo, args, cfg=cfg, ray_cfg=ray)
    log.info("ingest: wrote %d of %d synthetic shards", len(todo), num_synthetic_shards(cfg))
    return {"new_shards": len(todo), "nodes": len({r["node"] for r in results})}


def _run_tasks(todo: list[int], args: dict[str, Any], *, cfg: IngestConfig, ray_cfg: RayConfig) -> list[dict]:
    import ray

    from fm21.faults import arm, worker_env
    from fm21.ray_runtime import ensure_ray

    arm()
    ensure_ray(ray_cfg)
    env = worker_env()
    task = ray.remote(write_synthetic_shard).options(
        num_cpus=cfg.num_cpus, **({"runtime_env": {"env_vars": env}} if env else {}))
    # One small dict back per shard; the scenes never leave the task.
    return ray.get([task.remote(**args, index=i) for i in todo])
