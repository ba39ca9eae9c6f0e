"""The ingest stage: a source (synthetic scenes, an image folder, webdataset shards) ->
``<workdir>/ingest/shards/shard-*.tar`` + ``<workdir>/ingest/rejects.jsonl``.

Every input ends up either in a shard or as one line of rejects.jsonl, so
``inputs == accepted + rejected`` always holds and the run completes whatever the inputs.
Shards and rejects are built in a hidden staging folder beside them and swapped in at the
end, so a killed run never leaves a half-written store that looks complete; staging
leftovers of killed runs are removed on the next run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from fm21.config import IngestConfig
from fm21.ingest.normalize import RejectedInput, normalize_image, reason_category
from fm21.ingest.shards import (
    ShardSample,
    ShardWriter,
    image_sample,
    synthetic_key,
    synthetic_sample,
)
from fm21.ingest.sources import RawInput, Rejection, iter_folder, iter_webdataset
from fm21.ingest.synthetic import render_scene
from fm21.store.layout import Workdir

log = logging.getLogger(__name__)

_STAGING_PREFIX = ".staging-"
_RETIRED_PREFIX = ".retired-"
SCENE_SEED_STRIDE = 1_000_003  # scene i of run seed s is rendered with s * stride + i


def run_ingest(cfg: IngestConfig, *, workdir: Workdir, seed: int) -> dict:
    """Build the shards and rejects for ``cfg``; return the counts for the manifest.

    ``seed`` names and seeds the synthetic scenes (keys ``syn{seed:04d}-{index:07d}``);
    folder and webdataset inputs do not depend on it.
    """
    stage_dir = workdir.stage_dir("ingest")
    stage_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(stage_dir)
    staging = stage_dir / f"{_STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        summary = _build(cfg, staging=staging, seed=seed)
        _publish(staging, workdir=workdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
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
        yield item if isinstance(item, Rejection) else _decode(item, cfg)


def _iter_synthetic(cfg: IngestConfig, *, seed: int) -> Iterator[ShardSample]:
    syn = cfg.synthetic
    for index in range(syn.num_samples):
        scene = render_scene(
            seed * SCENE_SEED_STRIDE + index,
            cfg.image_size,
            min_objects=syn.min_objects,
            max_objects=syn.max_objects,
        )
        yield synthetic_sample(scene, key=synthetic_key(seed, index), index=index)


def _decode(raw: RawInput, cfg: IngestConfig) -> ShardSample | Rejection:
    def reject(reason: str) -> Rejection:
        return Rejection(raw.source_path, reason, shard=raw.shard, key=raw.source_key)

    try:
        norm = normalize_image(
            raw.data, image_size=cfg.image_size, min_side=cfg.min_side, max_pixels=cfg.max_pixels
        )
    except RejectedInput as err:
        return reject(err.reason)
    except Exception as err:  # noqa: BLE001 - one bad input must not stop the run
        return reject(f"corrupt: unexpected {type(err).__name__}: {err}")
    return image_sample(raw, norm)


def _build(cfg: IngestConfig, *, staging: Path, seed: int) -> dict:
    reasons: Counter[str] = Counter()
    with (
        ShardWriter(staging / "shards", samples_per_shard=cfg.samples_per_shard) as writer,
        open(staging / "rejects.jsonl", "w", encoding="utf-8") as rejects,
    ):
        for item in iter_samples(cfg, seed=seed):
            if isinstance(item, Rejection):
                _write_reject(rejects, item)
                reasons[reason_category(item.reason)] += 1
            else:
                writer.write(item)
        accepted, num_shards = writer.num_samples, writer.num_shards
    rejected = sum(reasons.values())
    return {
        "source": cfg.source,
        "path": cfg.path,
        "inputs": accepted + rejected,
        "accepted": accepted,
        "rejected": rejected,
        "rejected_by_reason": dict(sorted(reasons.items())),
        "shards": num_shards,
        "image_size": cfg.image_size,
    }


def _write_reject(handle: IO[str], rejection: Rejection) -> None:
    handle.write(json.dumps(rejection.record(), ensure_ascii=False) + "\n")


def _publish(staging: Path, *, workdir: Workdir) -> None:
    """Swap the staged shards and rejects in. The old shards are first moved aside, so a
    reader sees either no ``shards/`` or a complete one, never a partial one."""
    stage_dir = workdir.stage_dir("ingest")
    retired = stage_dir / f"{_RETIRED_PREFIX}{uuid.uuid4().hex[:12]}"
    if workdir.shards_dir.exists():
        os.replace(workdir.shards_dir, retired)
    os.replace(staging / "shards", workdir.shards_dir)
    os.replace(staging / "rejects.jsonl", workdir.rejects)
    shutil.rmtree(retired, ignore_errors=True)


def _remove_leftovers(stage_dir: Path) -> None:
    """Staging and retired folders of earlier runs that were killed."""
    for path in stage_dir.iterdir():
        if path.is_dir() and path.name.startswith((_STAGING_PREFIX, _RETIRED_PREFIX)):
            shutil.rmtree(path, ignore_errors=True)
