"""The stage runner: the one place that maps a stage name to its function and decides
whether to run it. The CLI (`fm21 stage ...`, `make <stage>`) and the Prefect tasks both
call :func:`run_stage`, so skipping and manifests behave the same everywhere.

A stage function takes only its own config slice and a small :class:`RunContext`; it
knows nothing of Prefect. The runner computes the stage fingerprint (its slice + the
context it depends on + upstream fingerprints); a stage whose manifest carries the same
fingerprint is skipped unless forced.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import fm21
from fm21.config import FlowConfig, RayConfig, SpecialistConfig
from fm21.modalities import ModalitySpec
from fm21.store.layout import STAGES, Workdir
from fm21.store.manifest import fingerprint_of, library_versions, read_manifest, write_json_atomic

log = logging.getLogger("fm21")


class StageError(RuntimeError):
    """A stage failed: one line naming the stage and the cause (the CLI prints it, a Prefect
    task run ends Failed with it). The original exception is ``__cause__``."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        super().__init__(f"stage {stage} failed: {type(cause).__name__}" + (f": {reason}" if reason else ""))
        self.stage = stage

# Stages that run models and may hold GPUs: Prefect tags them so a concurrency limit can
# keep them from sharing a GPU machine (`fm21 serve --gpu-slots N`).
GPU_STAGES = ("pseudolabel", "tokenizers", "tokens", "train", "evaluate")

UPSTREAM: dict[str, tuple[str, ...]] = {
    "ingest": (),
    "pseudolabel": ("ingest",),
    "tokenizers": ("pseudolabel",),
    "tokens": ("pseudolabel", "tokenizers"),
    "train": ("tokens",),
    "evaluate": ("tokenizers", "tokens", "train"),
}


@dataclass(frozen=True)
class RunContext:
    """What every stage may know about the run besides its own slice."""

    workdir: Workdir
    seed: int
    specs: dict[str, ModalitySpec]
    ray: RayConfig
    # the run's specialists (pseudolabel.specialists): evaluate embeds X -> RGB images with
    # the run's own DINOv2 / CLIP for its feature distance (fm21/evaluate/rgb_features.py)
    specialists: dict[str, SpecialistConfig] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: FlowConfig) -> RunContext:
        return cls(workdir=Workdir(cfg.workdir), seed=cfg.seed, specs=cfg.specs(), ray=cfg.ray,
                   specialists=dict(cfg.pseudolabel.specialists))


def _stage_fn(name: str) -> Callable[[Any, RunContext], dict]:
    # Imported lazily: `fm21 config show` must not pay for torch/ray imports.
    if name == "ingest":
        from fm21.ingest.stage import run_ingest

        return lambda c, ctx: run_ingest(c, workdir=ctx.workdir, seed=c.seed, ray=ctx.ray)
    if name == "pseudolabel":
        from fm21.pseudolabel.job import run_pseudolabel

        return run_pseudolabel
    if name == "tokenizers":
        from fm21.tokenize.stage import run_tokenizers

        return run_tokenizers
    if name == "tokens":
        from fm21.tokenize.apply import run_tokens

        return run_tokens
    if name == "train":
        from fm21.train.loop import run_train

        return run_train
    if name == "evaluate":
        from fm21.evaluate.stage import run_evaluate

        return run_evaluate
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")


def stage_slice(cfg: FlowConfig, name: str) -> Any:
    return getattr(cfg, name)


def upstream_manifests(workdir: Workdir, name: str) -> dict[str, dict]:
    """The manifests of the stages ``name`` reads from ({} where one is missing)."""
    return {dep: read_manifest(workdir.manifest(dep)) or {} for dep in UPSTREAM[name]}


# A stage's code version: bump it when the stage's outputs change for the same config and
# inputs (a new metric in the report, a fixed bug in a store), so that existing workdirs
# re-run that stage and the stages after it, and no other. Absent: version 1, which adds
# nothing to the fingerprint (the fingerprints of the stores built before it stay valid).
CODE_VERSIONS: dict[str, int] = {
    "evaluate": 2,  # 2: caption mention AUCs and K-sample words, X -> RGB structure_auc
}


def stage_fingerprint(cfg: FlowConfig, name: str, upstream: dict[str, dict] | None = None) -> str:
    if upstream is None:
        upstream = upstream_manifests(Workdir(cfg.workdir), name)
    payload = {
        "stage": name,
        "config": stage_slice(cfg, name).model_dump(mode="json"),
        "upstream": {dep: m.get("fingerprint") for dep, m in upstream.items()},
        "fm21": fm21.__version__,
    }
    if CODE_VERSIONS.get(name, 1) > 1:
        payload["code_version"] = CODE_VERSIONS[name]
    if name != "ingest":  # ingest does not depend on the modality set
        payload["modalities"] = cfg.modalities.model_dump(mode="json")
        payload["seed"] = cfg.seed
    return fingerprint_of(payload)


def apply_threads(threads: int | None) -> None:
    """Set torch/OpenMP intra-op threads for this process (before or after torch loads)."""
    if not threads:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def run_stage(cfg: FlowConfig, name: str, *, force: bool = False) -> dict:
    """Run one stage unless its manifest already matches its inputs; returns the manifest."""
    apply_threads(cfg.threads)
    ctx = RunContext.from_config(cfg)
    path = ctx.workdir.manifest(name)
    upstream = upstream_manifests(ctx.workdir, name)
    fp = stage_fingerprint(cfg, name, upstream)
    old = read_manifest(path)
    if not force and old and old.get("status") == "complete" and old.get("fingerprint") == fp:
        log.info("stage %s: up to date (fingerprint %s), skipped", name, fp)
        return {**old, "skipped": True}
    missing = [d for d, m in upstream.items() if m.get("status") != "complete"]
    if missing:
        raise RuntimeError(f"stage {name} needs {', '.join(missing)} to have run first (no complete manifest in {ctx.workdir.root})")
    log.info("stage %s: running (fingerprint %s)", name, fp)
    start = time.time()
    try:
        counts = _stage_fn(name)(stage_slice(cfg, name), ctx)
    except Exception as err:  # noqa: BLE001 - re-raised with the stage named
        raise StageError(name, err) from err
    manifest = {
        "stage": name,
        "status": "complete",
        "fingerprint": fp,
        "upstream": {d: m.get("fingerprint") for d, m in upstream.items()},
        "counts": counts,
        "seconds": round(time.time() - start, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "libraries": library_versions(),
        "config": cfg.model_dump(mode="json"),
    }
    write_json_atomic(path, manifest)
    log.info("stage %s: done in %.1fs %s", name, manifest["seconds"], _short(counts))
    return {**manifest, "skipped": False}


def _short(counts: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items() if isinstance(v, (int, float, str)))
