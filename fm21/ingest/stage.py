"""The ingest stage: a source (synthetic scenes, an image folder, webdataset shards) ->
``<workdir>/ingest/shards/shard-*.tar`` + ``<workdir>/ingest/rejects.jsonl``.

Every input ends up either in a shard or as one line of rejects.jsonl, so
``inputs == accepted + rejected`` always holds and the run completes whatever the inputs.
Every source runs as work units, one output shard each (``fm21.ingest.units``), as Ray
tasks when a Ray config is given (the same bytes without). They write into a hidden
staging folder named by the fingerprint of the config (and, for synthetic scenes, the
seed), swapped in at the end, so a killed run never leaves a half-written store that looks
complete and its rerun keeps the units it had finished. Staging leftovers of other configs
are removed on the next run. The workdir may be an object store (``s3://``): every write
goes through ``fm21.store.fs``, and the swap copies objects (no renames there).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fm21.config import IngestConfig, RayConfig
from fm21.ingest.shards import ShardSample, synthetic_key, synthetic_sample
from fm21.ingest.sources import Rejection, iter_folder, iter_webdataset
from fm21.ingest.synthetic import render_scene
from fm21.ingest.units import SCENE_SEED_STRIDE, build_inputs, build_synthetic, decode_input, num_synthetic_shards
from fm21.store import fs
from fm21.store.fs import Location
from fm21.store.layout import Workdir
from fm21.store.manifest import fingerprint_of

log = logging.getLogger(__name__)

_STAGING_PREFIX = ".staging-"
_RETIRED_PREFIX = ".retired-"  # where fs.replace_tree moves the old shards aside
__all__ = ["SCENE_SEED_STRIDE", "iter_samples", "run_ingest"]


def run_ingest(cfg: IngestConfig, *, workdir: Workdir, seed: int, ray: RayConfig | None = None) -> dict:
    """Build the shards and rejects for ``cfg``; return the counts for the manifest.

    ``seed`` names and seeds the synthetic scenes (keys ``syn{seed:04d}-{index:07d}``);
    folder and webdataset inputs do not depend on it. With ``ray``, units run as Ray
    tasks; without, in this process (the same bytes either way).
    """
    stage_dir = workdir.stage_dir("ingest")
    stage_dir.mkdir(parents=True, exist_ok=True)
    # resumable: the same inputs find the same staging folder (folder inputs do not use the seed)
    key = {"ingest": cfg.model_dump(mode="json")} | ({"seed": seed} if cfg.source == "synthetic" else {})
    staging = stage_dir / f"{_STAGING_PREFIX}{fingerprint_of(key)}"
    _remove_leftovers(stage_dir, keep=staging.name)
    staging.mkdir(exist_ok=True)
    if cfg.source == "synthetic":
        summary = _build_synthetic(cfg, staging=staging, seed=seed, ray=ray)
    else:
        summary = {"source": cfg.source, "path": cfg.path, **build_inputs(cfg, staging=staging, ray=ray),
                   "image_size": cfg.image_size}
    _publish(staging, workdir=workdir)
    if staging.exists():
        fs.remove_tree(staging)
    log.info(
        "ingest (%s): %d inputs, %d accepted, %d rejected %s, %d shards",
        summary["source"], summary["inputs"], summary["accepted"], summary["rejected"],
        summary["rejected_by_reason"], summary["shards"],
    )
    return summary


def iter_samples(cfg: IngestConfig, *, seed: int) -> Iterator[ShardSample | Rejection]:
    """Every input of the configured source, as a finished shard sample or a rejection."""
    if cfg.source == "synthetic":
        yield from _iter_synthetic(cfg, seed=seed)
        return
    if not cfg.path:
        raise ValueError(f"ingest.path is required for source {cfg.source!r}")
    raw_inputs = iter_folder(cfg.path) if cfg.source == "folder" else iter_webdataset(cfg.path)
    for item in raw_inputs:
        yield item if isinstance(item, Rejection) else decode_input(item, cfg)


def _iter_synthetic(cfg: IngestConfig, *, seed: int) -> Iterator[ShardSample]:
    syn = cfg.synthetic
    for index in range(syn.num_samples):
        scene = render_scene(
            seed * SCENE_SEED_STRIDE + index,
            cfg.image_size,
            **syn.scene_options(),
        )
        yield synthetic_sample(scene, key=synthetic_key(seed, index), index=index)


def _build_synthetic(cfg: IngestConfig, *, staging: Location, seed: int, ray: RayConfig | None) -> dict:
    """Missing shards only (a killed run's finished shards stay); scenes are never rejected."""
    units = build_synthetic(cfg, shards_dir=staging / "shards", seed=seed, ray=ray)
    fs.write_atomic(staging / "rejects.jsonl", b"")
    num = cfg.synthetic.num_samples
    return {"source": cfg.source, "path": cfg.path, "inputs": num, "accepted": num, "rejected": 0,
            "rejected_by_reason": {}, "shards": num_synthetic_shards(cfg), "image_size": cfg.image_size, **units}


def _publish(staging: Location, *, workdir: Workdir) -> None:
    """Swap the staged shards and rejects in. Locally the old shards are first moved aside,
    so a reader sees either no ``shards/`` or a complete one, never a partial one. On an
    object store the staged objects are copied in; the ingest manifest, written after,
    is what marks them complete (a killed swap is redone from the staging folder)."""
    fs.replace_tree(staging / "shards", workdir.shards_dir)
    fs.move(staging / "rejects.jsonl", workdir.rejects)


def _remove_leftovers(stage_dir: Location, *, keep: str) -> None:
    """Staging and retired folders of earlier runs that were killed (but the one to resume)."""
    for path in stage_dir.iterdir():
        if path.is_dir() and path.name != keep and path.name.startswith((_STAGING_PREFIX, _RETIRED_PREFIX)):
            fs.remove_tree(path)
