"""Prefect flows: sequencing only. Each task calls the same ``run_stage`` the CLI calls.

Flows take the resolved configuration as a plain dict parameter, so a deployment started
from the Prefect UI can be given any flows.yaml/recipe/overrides. With no Prefect server
configured (PREFECT_API_URL unset) Prefect runs against a temporary local API.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

# Offline runs make no network attempt: the temporary Prefect server would otherwise send
# usage analytics (and log "Failed to send telemetry" with no network). Users may opt in.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, task  # noqa: E402 - after the environment default above
from prefect.artifacts import create_markdown_artifact

from fm21.config import FlowConfig
from fm21.stages import run_stage

log = logging.getLogger("fm21")

DATASET_STAGES = ("ingest", "pseudolabel", "tokenizers", "tokens")


@task(name="stage", task_run_name="{name}", retries=0, cache_policy=None, persist_result=False)
def stage_task(config: dict[str, Any], name: str, force: bool = False) -> dict:
    cfg = FlowConfig.model_validate(config)
    manifest = run_stage(cfg, name, force=force)
    return {"stage": name, "skipped": manifest.get("skipped", False), "counts": manifest.get("counts", {}),
            "seconds": manifest.get("seconds")}


def _publish(name: str, result: dict) -> None:
    if result["skipped"]:
        return
    body = f"## fm21 {name}\n\n```json\n{json.dumps(result['counts'], indent=2, default=str)}\n```\n"
    create_markdown_artifact(key=f"fm21-{name}", markdown=body, description=f"fm21 stage {name}")


def _run(config: dict, names: tuple[str, ...], force: bool) -> list[dict]:
    results = []
    for name in names:
        result = stage_task(config, name, force)
        _publish(name, result)
        results.append(result)
    return results


@flow(name="build_dataset", persist_result=False, log_prints=True)
def build_dataset(config: dict[str, Any], force: bool = False) -> list[dict]:
    """ingest -> pseudolabel -> tokenizers -> tokens."""
    return _run(config, DATASET_STAGES, force)


@flow(name="pretrain", persist_result=False, log_prints=True)
def pretrain(config: dict[str, Any], force: bool = False) -> list[dict]:
    """4M masked multimodal pretraining on tokens.lance."""
    return _run(config, ("train",), force)


@flow(name="evaluate", persist_result=False, log_prints=True)
def evaluate(config: dict[str, Any], force: bool = False) -> list[dict]:
    """Generation-based evaluation against ground truth; the report becomes an artifact."""
    results = _run(config, ("evaluate",), force)
    cfg = FlowConfig.model_validate(config)
    from fm21.store.layout import Workdir
    from pathlib import Path

    report = Workdir(Path(cfg.workdir)).reports_dir / "report.md"
    if report.exists() and not results[0]["skipped"]:
        create_markdown_artifact(key="fm21-report", markdown=report.read_text(), description="fm21 evaluation report")
    return results


@flow(name="end_to_end", persist_result=False, log_prints=True)
def end_to_end(config: dict[str, Any], force: bool = False) -> list[dict]:
    """The whole pipeline: build_dataset -> pretrain -> evaluate."""
    return build_dataset(config, force) + pretrain(config, force) + evaluate(config, force)


FLOWS = {"end_to_end": end_to_end, "build_dataset": build_dataset, "pretrain": pretrain, "evaluate": evaluate}


def run_flow(name: str, cfg: FlowConfig, *, force: bool = False) -> dict[str, str]:
    results = FLOWS[name](cfg.model_dump(mode="json"), force)
    return {
        r["stage"]: "skipped (up to date)" if r["skipped"] else f"ran in {r['seconds']}s"
        for r in results
    }
