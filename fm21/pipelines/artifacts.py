"""Prefect artifacts of each stage: what a user reads in the UI after a run.

Every stage publishes its counts and timing as a table (nested counts, such as ingest's
rejects by reason, as tables of their own). Some stages add what their outputs say:
pseudolabel the bytes per sample per column of labels.lance, tokens the `fm21 stats`
table, tokenizers the reconstruction PNGs, evaluate its report with the sample grid.
Images are embedded as ``data:`` URIs so they show in the UI without a file server, and
the artifact also names the file on disk. Keys are stable (``fm21-<stage>-...``), so the
UI's artifact page shows the latest of each across runs.
"""

from __future__ import annotations

import base64
import logging
import re
from typing import Any, Callable

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from fm21.config import FlowConfig
from fm21.store.fs import Location
from fm21.store.layout import Workdir

log = logging.getLogger("fm21")

MAX_INLINE_IMAGE_BYTES = 2_000_000  # larger PNGs are linked by path only


def _image(path: Location, alt: str) -> str:
    """``path`` a local path or a UriPath (an ``s3://`` workdir): read through its bytes."""
    data = path.read_bytes() if path.is_file() else b""
    if 0 < len(data) <= MAX_INLINE_IMAGE_BYTES:
        return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})\n\n`{path}`"
    return f"`{path}`"


def artifact_key(*parts: str) -> str:
    """``fm21-<parts>`` as Prefect accepts a key: lowercase letters, digits and dashes
    (a count named after a task, "rgb from depth_gap_closed", has spaces)."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(("fm21", *parts)).lower())).strip("-")


def _counts_tables(name: str, result: dict) -> None:
    counts = result.get("counts") or {}
    flat = [{"count": k, "value": v} for k, v in counts.items() if not isinstance(v, (dict, list))]
    state = "skipped (up to date)" if result.get("skipped") else f"ran in {result.get('seconds')} s"
    create_table_artifact(key=artifact_key(name), table=flat or [{"count": "-", "value": "-"}],
                          description=f"fm21 stage {name}: {state}")
    for key, value in counts.items():
        if isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values()):
            rows = [{"key": k, "value": v} for k, v in value.items()] or [{"key": "(none)", "value": 0}]
            create_table_artifact(key=artifact_key(name, key), table=rows,
                                  description=f"fm21 stage {name}: {key}")


def _pseudolabel(wd: Workdir) -> None:
    from fm21.store.stats import format_label_stats, label_store_stats

    text = format_label_stats(label_store_stats(wd.labels_uri))
    create_markdown_artifact(key="fm21-labels-stats", markdown=f"```\n{text}\n```",
                             description="labels.lance: bytes per sample per column")


def _tokens(wd: Workdir) -> None:
    from fm21.store.stats import format_stats, token_store_stats

    text = format_stats(token_store_stats(wd.tokens_uri))
    create_markdown_artifact(key="fm21-token-stats", markdown=f"```\n{text}\n```",
                             description="tokens.lance: fm21 stats")


def _tokenizers(wd: Workdir) -> None:
    parts = ["# Tokenizer reconstructions (held-out scenes: originals above, reconstructions below)\n"]
    for png in sorted(wd.tokenizers_dir.glob("*/recon.png")):
        parts.append(f"## {png.parent.name}\n\n{_image(png, png.parent.name)}\n")
    create_markdown_artifact(key="fm21-tokenizer-recon", markdown="\n".join(parts),
                             description="tokenizer reconstructions")


def _evaluate(wd: Workdir) -> None:
    report = wd.reports_dir / "report.md"
    if not report.exists():
        return
    text = report.read_text()
    for png in sorted(wd.reports_dir.glob("*.png")):
        text = text.replace(f"]({png.name})", f"](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})")
    loss = wd.stage_dir("train") / "loss.png"
    text += f"\n\n## Training loss\n\n{_image(loss, 'loss')}\n"
    create_markdown_artifact(key="fm21-report", markdown=text, description="fm21 evaluation report")


EXTRAS: dict[str, Callable[[Workdir], None]] = {
    "pseudolabel": _pseudolabel, "tokens": _tokens, "tokenizers": _tokenizers, "evaluate": _evaluate,
}


def publish_stage(cfg: FlowConfig, name: str, result: dict[str, Any]) -> None:
    """Publish the artifacts of one finished (or skipped) stage. An artifact that cannot be
    built is logged, never fails the stage: the stores are what count."""
    try:
        _counts_tables(name, result)
        if name in EXTRAS:
            EXTRAS[name](Workdir(cfg.workdir))
    except Exception as err:  # noqa: BLE001 - artifacts are a view, not an output
        log.warning("artifacts of stage %s not published: %s: %s", name, type(err).__name__, err)


class ProgressArtifact:
    """A ``fm21.progress`` listener: one Prefect progress artifact per progress block
    (``fm21-<stage>-progress``), updated as the stage advances. Failures to update are
    logged once and ignored: progress is a view."""

    def start(self, stage: str, total: int | None, unit: str) -> None:
        self.stage, self.total, self.unit, self.id = stage, total, unit, None
        try:
            self.id = create_progress_artifact(0.0, key=f"fm21-{stage}-progress",
                                               description=f"{stage}: 0 / {total or '?'} {unit}s")
        except Exception as err:  # noqa: BLE001
            log.warning("no progress artifact for %s: %s", stage, err)

    def update(self, done: int) -> None:
        if self.id is None or not self.total:
            return
        try:
            update_progress_artifact(self.id, min(100.0, 100.0 * done / self.total),
                                     description=f"{self.stage}: {done} / {self.total} {self.unit}s")
        except Exception as err:  # noqa: BLE001
            log.warning("progress artifact of %s not updated: %s", self.stage, err)
            self.id = None

    def close(self) -> None:
        pass
