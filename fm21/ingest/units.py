"""Ingest as work units: one output shard = one Ray task, resumable per shard.

**Synthetic.** Shard ``i`` holds scenes ``[i * samples_per_shard, (i + 1) * samples_per_shard)``,
so a task needs only its index.

**Folder.** The driver streams the folder listing (sorted by relative path, see
``sources.iter_folder_paths``: memory O(depth x directory width), never the whole list)
and cuts it into units of ``samples_per_shard`` consecutive *inputs*; unit ``i`` writes
``shard-{i:06d}.tar``. Rejected inputs leave their shard short, so a shard holds at most
``samples_per_shard`` samples, and a unit whose inputs are all rejected writes no tar (the
shard numbers then have a gap). Each unit descriptor carries its relative paths plus a
digest of (path, size, mtime) of its inputs; only the units in flight are held.

**Webdataset.** Unit ``i`` is input tar ``i`` (in the expanded pattern's order) and writes
``shard-{i:06d}.tar``: the input sharding is kept (``samples_per_shard`` does not apply).
Keys are sanitised and de-duplicated inside the tar by the task. Keys repeated *across*
tars are found afterwards by a streaming k-way merge of the units' sorted key lists (memory
O(units)); every occurrence after the first becomes ``<key>-dup<n>`` (n = 1, 2, ... in tar
order, as the sequential reader did) and only the tars holding such a key are rewritten.

Every task streams its tar straight to the store (``fm21.store.fs.open_atomic``: locally
a temporary name renamed into place, on an object store one upload completed at the end),
then writes its unit record ``units/unit-{i:06d}.json`` (counts, rejects with reasons, the
input digest) the same way, so a shard or record that exists is complete. The record is
the unit's commit: a rerun (same config, same staging folder) skips units whose record
exists with the same input digest and redoes the rest.
``inputs == accepted + rejected`` holds per unit and in total. The tars are byte-identical
with or without Ray, and after a resume.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import logging
import stat
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import webdataset as wds

from fm21.config import IngestConfig, RayConfig
from fm21.faults import crash_point
from fm21.ingest.normalize import RejectedInput, normalize_image, reason_category
from fm21.ingest.shards import _FIXED_MTIME, SHARD_PATTERN, ShardSample, image_sample, synthetic_key, synthetic_sample
from fm21.ingest.sources import (
    KeyDeduper,
    RawInput,
    Rejection,
    expand_shard_pattern,
    folder_input,
    iter_folder_paths,
    iter_shard,
)
from fm21.ingest.synthetic import render_scene
from fm21.progress import progress
from fm21.store import fs
from fm21.store.fs import Location, as_location

log = logging.getLogger(__name__)

SCENE_SEED_STRIDE = 1_000_003  # scene i of run seed s is rendered with s * stride + i
UNIT_PATTERN = "unit-{:06d}.json"
KEYS_PATTERN = "keys-{:06d}.txt"  # a unit's keys before cross-tar renames, sorted, one a line
MAX_IN_FLIGHT_PER_CPU = 2  # tasks submitted ahead of the results, per cluster CPU


def num_synthetic_shards(cfg: IngestConfig) -> int:
    return -(-cfg.synthetic.num_samples // cfg.samples_per_shard)


def _tar_writer(stream) -> wds.TarWriter:
    return wds.TarWriter(stream, encoder=False, mtime=_FIXED_MTIME)


def write_synthetic_shard(cfg: dict[str, Any], *, seed: int, index: int, directory: str) -> dict[str, Any]:
    """Render and write shard ``index``; byte-identical to the sequential ShardWriter's."""
    icfg = IngestConfig.model_validate(cfg)
    syn = icfg.synthetic
    start = index * icfg.samples_per_shard
    stop = min(start + icfg.samples_per_shard, syn.num_samples)
    path = as_location(directory) / SHARD_PATTERN.format(index)
    with fs.open_atomic(path) as stream:
        tar = _tar_writer(stream)
        for i in range(start, stop):
            scene = render_scene(seed * SCENE_SEED_STRIDE + i, icfg.image_size,
                                 **syn.scene_options())
            tar.write(synthetic_sample(scene, key=synthetic_key(seed, i), index=i).as_wds())
            crash_point("ingest.in_shard")
        tar.close()  # the tar's end blocks; the stream is closed (committed) by open_atomic
    crash_point("ingest.after_shard")
    return {"shard": index, "samples": stop - start, "node": _node_id()}


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def build_synthetic(cfg: IngestConfig, *, shards_dir: Location, seed: int, ray: RayConfig | None) -> dict[str, int]:
    """Write the shards that are missing; in Ray tasks when a Ray config is given."""
    shards_dir.mkdir(parents=True, exist_ok=True)
    done = set(fs.list_names(shards_dir))  # one listing, not one request per shard
    todo = [i for i in range(num_synthetic_shards(cfg)) if SHARD_PATTERN.format(i) not in done]
    args = {"cfg": cfg.model_dump(mode="json"), "seed": seed, "directory": str(shards_dir)}
    units = ({**args, "index": i} for i in todo)
    results = list(_run(write_synthetic_shard, units, num_cpus=cfg.num_cpus, ray_cfg=ray, total=len(todo)))
    log.info("ingest: wrote %d of %d synthetic shards", len(todo), num_synthetic_shards(cfg))
    return {"new_shards": len(todo), "nodes": len({r["node"] for r in results})}


def _run(fn, units: Iterator[dict[str, Any]], *, num_cpus: float, ray_cfg: RayConfig | None,
         total: int | None = None) -> Iterator[dict]:
    """``fn(**unit)`` for every unit, with progress per finished unit (``total`` when known)."""
    with progress("ingest", total=total, unit="shard") as advance:
        for result in _results(fn, units, num_cpus=num_cpus, ray_cfg=ray_cfg):
            advance(1)
            yield result


def _results(fn, units: Iterator[dict[str, Any]], *, num_cpus: float, ray_cfg: RayConfig | None) -> Iterator[dict]:
    """In this process, or as Ray tasks with a bounded number in flight (the unit stream is
    consumed only as fast as tasks finish)."""
    if ray_cfg is None:
        yield from (fn(**u) for u in units)
        return
    import ray

    from fm21.faults import arm, worker_env
    from fm21.ray_runtime import ensure_ray

    arm()
    ensure_ray(ray_cfg)
    env = worker_env()
    task = ray.remote(fn).options(num_cpus=num_cpus, **({"runtime_env": {"env_vars": env}} if env else {}))
    limit = max(2, int(MAX_IN_FLIGHT_PER_CPU * ray.cluster_resources().get("CPU", 1) / max(num_cpus, 1e-3)))
    pending: list = []
    for unit in units:  # one small dict back per unit; the samples never leave the task
        if len(pending) >= limit:
            done, pending = ray.wait(pending, num_returns=1)
            yield from ray.get(done)
        pending.append(task.remote(**unit))
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield from ray.get(done)


# ------------------------------------------------------------------------------ folder / webdataset
def decode_input(raw: RawInput, cfg: IngestConfig) -> ShardSample | Rejection:
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


def _stat_token(path: Path) -> list:
    try:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns, stat.S_ISREG(st.st_mode)]
    except OSError as err:
        return [str(err)]


def _digest(items: list) -> str:
    return hashlib.sha1(json.dumps(items).encode()).hexdigest()[:16]


def plan_folder_units(root: Path, per_unit: int) -> Iterator[dict[str, Any]]:
    """Units of ``per_unit`` consecutive inputs of the sorted listing, streamed."""
    chunk: list[str] = []
    index = 0

    def unit() -> dict[str, Any]:
        digest = _digest([[rel, _stat_token(root / rel)] for rel in chunk])
        return {"index": index, "inputs": list(chunk), "digest": digest}

    for rel in iter_folder_paths(root):
        chunk.append(rel)
        if len(chunk) == per_unit:
            yield unit()
            index, chunk = index + 1, []
    if chunk:
        yield unit()


def plan_webdataset_units(pattern: str) -> Iterator[dict[str, Any]]:
    for index, path in enumerate(expand_shard_pattern(pattern)):
        yield {"index": index, "inputs": [str(path)], "digest": _digest([str(path), _stat_token(path)])}


def _unit_samples(cfg: IngestConfig, unit: dict[str, Any], renames: dict[str, str]) -> Iterator[ShardSample | Rejection]:
    if cfg.source == "folder":
        root = Path(cfg.path).expanduser()
        for rel in unit["inputs"]:
            item = folder_input(root, rel)
            yield item if isinstance(item, Rejection) else decode_input(item, cfg)
        return
    for item in iter_shard(Path(unit["inputs"][0]), KeyDeduper()):
        if isinstance(item, RawInput) and item.key in renames:
            item = RawInput(**{**item.__dict__, "key": renames[item.key]})
        yield item if isinstance(item, Rejection) else decode_input(item, cfg)


def write_input_shard(cfg: dict[str, Any], *, unit: dict[str, Any], directory: str,
                      renames: dict[str, str] | None = None) -> dict[str, Any]:
    """One folder/webdataset unit -> ``shards/shard-{i}.tar`` + ``units/unit-{i}.json``.

    ``renames`` (webdataset): in-tar keys that repeat a key of an earlier tar, and their
    new names. The record keeps the keys *before* these renames (``keys``, sorted), which
    is what the cross-tar merge reads, so a rerun plans the same renames.
    """
    icfg = IngestConfig.model_validate(cfg)
    renames = renames or {}
    index = unit["index"]
    root = as_location(directory)
    path = root / "shards" / SHARD_PATTERN.format(index)
    rejects: list[dict] = []
    keys: list[str] = []
    inverse = {v: k for k, v in renames.items()}
    with fs.open_atomic(path) as stream:
        tar = _tar_writer(stream)
        for item in _unit_samples(icfg, unit, renames):
            if isinstance(item, Rejection):
                rejects.append(item.record())
                continue
            tar.write(item.as_wds())
            keys.append(inverse.get(item.key, item.key))
            crash_point("ingest.in_shard")
        tar.close()
    if not keys:  # every input rejected: no shard (the empty tar has no record yet: a rerun redoes it)
        path.unlink(missing_ok=True)
    fs.write_atomic(_keys_path(root, index), "".join(k + "\n" for k in sorted(keys)))
    record = {"index": index, "digest": unit["digest"], "inputs": len(keys) + len(rejects),
              "accepted": len(keys), "rejected": len(rejects), "rejects": rejects, "renames": renames}
    _write_json(root / "units" / UNIT_PATTERN.format(index), record)  # last: the unit's commit
    crash_point("ingest.after_shard")
    return {"index": index, "node": _node_id(), "accepted": len(keys)}


def _write_json(path: Location, payload: dict) -> None:
    fs.write_atomic(path, json.dumps(payload, sort_keys=True))


def _key_stream(lines, index: int) -> Iterator[tuple[str, int]]:
    for line in lines:
        yield line.rstrip("\n"), index


def _keys_path(directory: Location, index: int) -> Location:
    return directory / "units" / KEYS_PATTERN.format(index)


def _open_keys(directory: Location, index: int) -> io.TextIOWrapper:
    """A unit's key file as text lines, streamed (not read whole)."""
    return io.TextIOWrapper(fs.open_input(_keys_path(directory, index)), encoding="utf-8")


def _read_record(directory: Location, index: int) -> dict | None:
    try:
        return json.loads(fs.read_bytes(directory / "units" / UNIT_PATTERN.format(index)))
    except FileNotFoundError:
        return None


def build_inputs(cfg: IngestConfig, *, staging: Location, ray: RayConfig | None) -> dict[str, Any]:
    """Folder/webdataset ingest as units into ``staging`` (``shards/``, ``units/``,
    ``rejects.jsonl``); units already recorded with the same input digest are kept."""
    if not cfg.path:
        raise ValueError(f"ingest.path is required for source {cfg.source!r}")
    if cfg.source == "folder":
        root = Path(cfg.path).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"ingest.path {str(root)!r} is not a directory")
        plan = plan_folder_units(root, cfg.samples_per_shard)
    else:
        plan = plan_webdataset_units(cfg.path)
    (staging / "shards").mkdir(parents=True, exist_ok=True)
    args = {"cfg": cfg.model_dump(mode="json"), "directory": str(staging)}
    counter = {"units": 0, "new": 0}

    def todo() -> Iterator[dict[str, Any]]:
        for unit in plan:
            counter["units"] += 1
            record = _read_record(staging, unit["index"])
            if record is None or record["digest"] != unit["digest"]:
                counter["new"] += 1
                yield {**args, "unit": unit}

    nodes = {r["node"] for r in _run(write_input_shard, todo(), num_cpus=cfg.num_cpus, ray_cfg=ray)}
    num_units = counter["units"]
    renamed = 0
    if cfg.source == "webdataset":
        renamed = _dedupe_across_units(cfg, staging, num_units, args=args, ray=ray, nodes=nodes)
    summary = _collect(staging, num_units)
    log.info("ingest: wrote %d of %d %s units", counter["new"], num_units, cfg.source)
    return {**summary, "units": num_units, "new_units": counter["new"], "renamed_keys": renamed,
            "nodes": len(nodes - {""})}


def _dedupe_across_units(cfg: IngestConfig, staging: Location, num_units: int, *, args: dict, ray, nodes: set) -> int:
    """Rename keys that an earlier tar already holds; rewrite only the tars holding them."""
    wanted: dict[int, dict[str, str]] = {}
    seen: dict[str, int] = {}  # a repeated key -> its occurrences so far (repeated keys only)
    previous: str | None = None
    with ExitStack() as stack:  # one open key file per unit: memory O(units), not O(samples)
        streams = [_key_stream(stack.enter_context(_open_keys(staging, i)), i) for i in range(num_units)]
        for key, index in heapq.merge(*streams):
            if key == previous:
                seen[key] = seen.get(key, 0) + 1
                wanted.setdefault(index, {})[key] = f"{key}-dup{seen[key]}"
            previous = key
    taken = {new for renames in wanted.values() for new in renames.values()}
    for i in range(num_units if taken else 0):  # a new name may exist already: never merged silently
        with _open_keys(staging, i) as lines:
            clash = taken & {line.rstrip("\n") for line in lines}
        if clash:
            raise ValueError(f"ingest: de-duplicated key(s) {sorted(clash)[:5]} already exist as sample keys "
                             f"in {cfg.path!r}; rename the inputs")
    redo = []
    for unit in plan_webdataset_units(cfg.path):
        renames = wanted.get(unit["index"], {})
        if _read_record(staging, unit["index"])["renames"] != renames:
            redo.append({**args, "unit": unit, "renames": renames})
    nodes.update(r["node"] for r in _run(write_input_shard, iter(redo), num_cpus=cfg.num_cpus, ray_cfg=ray))
    return sum(len(r) for r in wanted.values())


def _collect(staging: Location, num_units: int) -> dict[str, Any]:
    """Sum the unit records and write rejects.jsonl in unit order (streamed)."""
    reasons: Counter[str] = Counter()
    accepted = rejected = shards = 0
    with fs.open_atomic(staging / "rejects.jsonl") as stream, io.TextIOWrapper(stream, encoding="utf-8") as out:
        for i in range(num_units):
            record = _read_record(staging, i)
            accepted += record["accepted"]
            rejected += record["rejected"]
            shards += record["accepted"] > 0
            for reject in record["rejects"]:
                out.write(json.dumps(reject, ensure_ascii=False) + "\n")
                reasons[reason_category(reject["reason"])] += 1
    return {"inputs": accepted + rejected, "accepted": accepted, "rejected": rejected,
            "rejected_by_reason": dict(sorted(reasons.items())), "shards": shards}
