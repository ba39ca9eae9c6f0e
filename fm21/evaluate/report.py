"""Evaluation report: markdown table + PNG sample grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fm21.evaluate.metrics import DIRECTION, HEADLINE
from fm21.tokenize.grid import labels_to_rgb, save_grid

COLUMNS = (("4m", "4M (RGB→X)"), ("tokenizer_bound", "tokenizer bound"), ("baseline", "trivial baseline"))
BASELINE_NAME = {"depth": "per-image mean depth", "normal": "mean training normal", "semseg": "majority class"}
ARROW = {+1: "↑", -1: "↓"}


def _table(summary: dict) -> list[str]:
    lines = ["| task | metric | " + " | ".join(c[1] for c in COLUMNS) + " | 4M beats baseline |",
             "|---|---|" + "---|" * len(COLUMNS) + "---|"]
    for task, res in summary["tasks"].items():
        headline, _ = HEADLINE[task]
        for metric in res["4m"]:
            if metric.startswith("num_"):
                continue
            arrow = ARROW[DIRECTION[metric]]
            vals = " | ".join(f"{res[c][metric]:.4f}" for c, _ in COLUMNS)
            beats = ("**yes**" if res["beats_baseline"] else "no") if metric == headline else ""
            lines.append(f"| {task} | {metric} {arrow} | {vals} | {beats} |")
    return lines


def write_report(out: Path, summary: dict, *, rgb: np.ndarray, samples: dict[str, dict[str, np.ndarray]]) -> None:
    """report.md, plus samples.png: per sample, RGB then truth / 4M / tokenizer bound per task."""
    rows = []
    for i in range(len(rgb)):
        row = [rgb[i]]
        for task, s in samples.items():
            for part in ("truth", "pred", "bound"):
                img = s[part][i:i + 1]
                if task == "depth":  # colour-map each depth map on its own range
                    img = (img - img.mean()) / (img.std() + 1e-6)
                row.append(labels_to_rgb(task, img)[0])
        rows.append(np.stack(row))
    save_grid(rows, out / "samples.png")
    tag = ""
    if summary["random_parts"]:
        tag = f"\n> **random**: {', '.join(summary['random_parts'])} ran with random weights; their numbers are plumbing only.\n"
    cols = ", ".join(f"{t}: truth / 4M / tokenizer bound" for t in samples)
    text = "\n".join([
        "# fm21 evaluation report",
        "",
        f"RGB → X by generation ({summary['scheme']}, {summary['num_steps']} steps) on {summary['num_samples']} "
        f"held-out samples, checkpoint step {summary['checkpoint_step']}. Predictions are decoded by the task's "
        "tokenizer and scored against the synthetic ground truth. Depth is aligned per image by least-squares "
        "scale and shift before scoring (the depth tokenizer works on standardised depth).",
        tag,
        "Baselines: " + "; ".join(f"{t}: {BASELINE_NAME[t]}" for t in summary["tasks"]) + ".",
        "",
        *_table(summary),
        "",
        f"![samples](samples.png)  \nEach row: RGB, then {cols}.",
        "",
    ])
    (out / "report.md").write_text(text)
