"""Prefect flows: sequencing only. Each task calls the same ``run_stage`` the CLI calls.

A flow takes the *inputs* of a configuration, not a resolved one: a flows.yaml path, a
recipe and dotted overrides, plus the stages to force. The CLI (`fm21 run`) and a
deployment started from the Prefect UI therefore resolve and validate the run the same
way (``fm21.config.load_config``): a bad key fails the flow run at once with the one-line
reason. With no Prefect server configured (PREFECT_API_URL unset) Prefect runs against a
temporary local API. `fm21 serve` (``fm21.pipelines.serve``) makes the flows deployments.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

# Offline runs make no network attempt: the temporary Prefect server would otherwise send
# usage analytics (and log "Failed to send telemetry" with no network). Users may opt in.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, task  # noqa: E402 - after the environment default above

from fm21.config import ConfigError, FlowConfig, load_config  # noqa: E402
from fm21.pipelines.artifacts import ProgressArtifact, publish_stage  # noqa: E402
from fm21.progress import add_listener, remove_listener  # noqa: E402
from fm21.stages import GPU_STAGES, StageError, run_stage  # noqa: E402
from fm21.store.layout import STAGES  # noqa: E402

log = logging.getLogger("fm21")

DATASET_STAGES = ("ingest", "pseudolabel", "tokenizers", "tokens")
GPU_TAG = "fm21-gpu"  # `fm21 serve --gpu-slots N` puts a Prefect concurrency limit on it
TRANSIENT = (ConnectionError, TimeoutError, BrokenPipeError)  # retried with backoff


def _is_transient(task, task_run, state) -> bool:
    """Retry only errors that a rerun can fix (a lost connection, a timeout), never a bad
    config or bad data: the stage itself resumes from its last commit."""
    err = state.result(raise_on_failure=False)
    cause = err.__cause__ if isinstance(err, StageError) else err
    return isinstance(cause, TRANSIENT)


def _stage_task(name: str):
    tags = ["fm21", f"fm21-{name}"] + ([GPU_TAG] if name in GPU_STAGES else [])
    return task(
        name=name, tags=tags, retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=_is_transient,
        cache_policy=None, persist_result=False,
    )(_run_one)


def _run_one(config: dict[str, Any], name: str, force: bool = False) -> dict:
    cfg = FlowConfig.model_validate(config)
    add_listener(ProgressArtifact)
    try:
        manifest = run_stage(cfg, name, force=force)
    finally:
        remove_listener(ProgressArtifact)
    result = {"stage": name, "skipped": manifest.get("skipped", False), "counts": manifest.get("counts", {}),
              "seconds": manifest.get("seconds")}
    publish_stage(cfg, name, result)
    return result


STAGE_TASKS = {name: _stage_task(name) for name in STAGES}


def resolve(config_file: Optional[str], recipe: Optional[str], overrides: Optional[list[str]],
            force: Optional[list[str]]) -> tuple[FlowConfig, set[str]]:
    """The run's configuration and the stages to force, validated; one-line errors."""
    cfg = load_config(config_file, recipe=recipe, overrides=overrides)
    forced = set(force or ())
    if "all" in forced:
        forced = set(STAGES)
    unknown = sorted(forced - set(STAGES))
    if unknown:
        raise ConfigError(f"force: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)} or all")
    return cfg, forced


def _run(names: tuple[str, ...], config_file, recipe, overrides, force) -> list[dict]:
    cfg, forced = resolve(config_file, recipe, overrides, force)
    config = cfg.model_dump(mode="json")
    return [STAGE_TASKS[name](config, name, name in forced) for name in names]


# Every flow has the same parameters; the Prefect UI shows them as a form:
#   config_file  flows.yaml to load (default: ./flows.yaml, else the packaged default)
#   recipe       a configs/<name>.yaml overlay, by name or path
#   overrides    dotted key.path=value strings, as `--set`
#   force        stages to run even if up to date ("all" for every stage)


@flow(name="build_dataset", persist_result=False, log_prints=True)
def build_dataset(config_file: Optional[str] = None, recipe: Optional[str] = None,
                  overrides: Optional[list[str]] = None, force: Optional[list[str]] = None) -> list[dict]:
    """ingest -> pseudolabel -> tokenizers -> tokens."""
    return _run(DATASET_STAGES, config_file, recipe, overrides, force)


@task(name="train-job", tags=["fm21", "fm21-train"], cache_policy=None, persist_result=False)
def _train_job(config: dict[str, Any], address: str, force: bool = False) -> dict:
    """The train stage as a Ray job on the cluster at ``address`` (as `fm21 train --address`):
    its log goes to this task's log; a job that does not succeed fails the task."""
    from fm21.store.manifest import read_manifest
    from fm21.store.layout import Workdir
    from fm21.train import jobs

    cfg = FlowConfig.model_validate(config)
    client = jobs.client(address)
    job_id = jobs.submit(address, cfg, force=force, jobs=client)
    final = jobs.follow(client, job_id, echo=lambda text: log.info("%s", text.rstrip()))
    if final != "SUCCEEDED":
        raise RuntimeError(f"training job {job_id} on {address} ended {final}")
    manifest = read_manifest(Workdir(cfg.workdir).manifest("train")) or {}
    result = {"stage": "train", "skipped": bool(manifest.get("skipped", False)), "job_id": job_id,
              "counts": manifest.get("counts", {}), "seconds": manifest.get("seconds")}
    publish_stage(cfg, "train", result)
    return result


@flow(name="pretrain", persist_result=False, log_prints=True)
def pretrain(config_file: Optional[str] = None, recipe: Optional[str] = None,
             overrides: Optional[list[str]] = None, force: Optional[list[str]] = None,
             address: Optional[str] = None) -> list[dict]:
    """4M masked multimodal pretraining on tokens.lance: in this process, on
    ``train.ray.num_workers`` Ray Train workers, or, with ``address`` (a cluster's Jobs API,
    http://HEAD:8265), as a Ray job on that cluster (the path of `fm21 train --address`)."""
    if not address:
        return _run(("train",), config_file, recipe, overrides, force)
    cfg, forced = resolve(config_file, recipe, overrides, force)
    return [_train_job(cfg.model_dump(mode="json"), address, "train" in forced)]


@flow(name="evaluate", persist_result=False, log_prints=True)
def evaluate(config_file: Optional[str] = None, recipe: Optional[str] = None,
             overrides: Optional[list[str]] = None, force: Optional[list[str]] = None) -> list[dict]:
    """Generation-based evaluation against ground truth; the report becomes an artifact."""
    return _run(("evaluate",), config_file, recipe, overrides, force)


@flow(name="end_to_end", persist_result=False, log_prints=True)
def end_to_end(config_file: Optional[str] = None, recipe: Optional[str] = None,
               overrides: Optional[list[str]] = None, force: Optional[list[str]] = None) -> list[dict]:
    """The whole pipeline: build_dataset -> pretrain -> evaluate."""
    args = (config_file, recipe, overrides, force)
    return build_dataset(*args) + pretrain(*args) + evaluate(*args)


FLOWS = {"end_to_end": end_to_end, "build_dataset": build_dataset, "pretrain": pretrain, "evaluate": evaluate}


def run_flow(name: str, *, config_file: Optional[str] = None, recipe: Optional[str] = None,
             overrides: Optional[list[str]] = None, force: Optional[list[str]] = None) -> dict[str, str]:
    """Run a flow in this process; -> {stage: "ran in Ns" | "skipped (up to date)"}."""
    results = FLOWS[name](config_file=config_file, recipe=recipe, overrides=list(overrides or []) or None,
                          force=list(force or []) or None)
    return {
        r["stage"]: "skipped (up to date)" if r["skipped"] else f"ran in {r['seconds']}s"
        for r in results
    }
