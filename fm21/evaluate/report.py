"""Evaluation report: markdown tables + a labelled PNG sample grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fm21.evaluate.metrics import DIRECTION, HEADLINE
from fm21.tokenize.grid import labels_to_rgb, save_grid

ARROW = {+1: "↑", -1: "↓"}
SCOPE_NAME = {"all": "all pixels", "objects": "object pixels"}
GAP_TARGET = 0.5  # the share of the prior-to-bound gap a model that learned must close


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.0f} %"  # x != x: NaN


def verdict_table(summary: dict, kinds: dict[str, str]) -> list[str]:
    """Headline metric per task and scope: 4M vs the strongest image-blind baseline vs
    the tokenizer bound, and the share of the gap 4M closes. ``kinds``: task -> label kind."""
    lines = ["| task | pixels | metric | 4M (RGB→X) | strongest image-blind baseline | tokenizer bound "
             f"| gap closed | ≥ {GAP_TARGET:.0%} of gap |",
             "|---|---|---|---|---|---|---|---|"]
    for task, res in summary["tasks"].items():
        metric, sign = HEADLINE[kinds[task]]
        for scope in ("all", "objects"):
            s = res["scores"][scope]
            base = res["strongest_baseline"][scope]
            gap = res["gap_closed"][scope]
            ok = "**yes**" if gap >= GAP_TARGET else "no"
            lines.append(f"| {task} | {SCOPE_NAME[scope]} | {metric} {ARROW[sign]} | {s['4m'][metric]:.4f} | "
                         f"{s[base][metric]:.4f} ({base}) | {s['tokenizer_bound'][metric]:.4f} | {_pct(gap)} | {ok} |")
    return lines


def detail_table(task: str, res: dict) -> list[str]:
    names = ["4m", "tokenizer_bound", *res["baselines"]]
    header = {"4m": "4M (RGB→X)", "tokenizer_bound": "tokenizer bound"}
    lines = [f"| {task} | pixels | " + " | ".join(header.get(n, n) for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for scope in ("all", "objects"):
        s = res["scores"][scope]
        for metric in s["4m"]:
            if metric.startswith("num_"):
                continue
            vals = " | ".join(f"{s[n][metric]:.4f}" for n in names)
            lines.append(f"| {metric} {ARROW[DIRECTION[metric]]} | {SCOPE_NAME[scope]} | {vals} |")
    return lines


def sample_grid(rgb: np.ndarray, keys: list[str], samples: dict[str, dict[str, np.ndarray]], path: Path,
                kinds: dict[str, str]) -> None:
    """samples.png: a row per held-out sample (its key on the left), a labelled column per
    (task, truth / 4M / prior / bound) after the RGB input, coloured by label kind."""
    columns = ["RGB\ninput"] + [f"{task}\n{part}" for task, s in samples.items() for part in s]
    rows = []
    for i in range(len(rgb)):
        row = [rgb[i]]
        for task, s in samples.items():
            for part in s.values():
                img = part[i:i + 1]
                if kinds[task] == "depth":  # colour-map each depth map on its own range
                    img = (img - img.mean()) / (img.std() + 1e-6)
                row.append(labels_to_rgb(kinds[task], img)[0])
        rows.append(np.stack(row))
    save_grid(rows, path, col_labels=columns, row_labels=list(keys), scale=2)


def write_report(out: Path, summary: dict, *, rgb: np.ndarray, keys: list[str],
                 samples: dict[str, dict[str, np.ndarray]], kinds: dict[str, str]) -> None:
    """report.md (verdict table, per-task detail tables) and samples.png. ``kinds``: the
    label kind of each task, which picks its headline metric and colouring."""
    sample_grid(rgb, keys, samples, out / "samples.png", kinds)
    tag = ""
    if summary["random_parts"]:
        tag = f"\n> **random**: {', '.join(summary['random_parts'])} ran with random weights; their numbers are plumbing only.\n"
    details: list[str] = []
    for task, res in summary["tasks"].items():
        details += ["", *detail_table(task, res)]
        if "object_classes" in res:
            details.append(f"\nObject-pixel mIoU averages the object classes {res['object_classes']} "
                           "(classes whose training pixels lie mostly on instances).")
    text = "\n".join([
        "# fm21 evaluation report",
        "",
        f"RGB → X by generation ({summary['scheme']}, {summary['num_steps']} steps, temperature "
        f"{summary.get('temperature')}) on {summary['num_samples']} held-out samples, checkpoint step "
        f"{summary['checkpoint_step']}. Predictions are decoded by the task's tokenizer and scored against the "
        "synthetic ground truth, on all pixels and on object pixels only (instance id ≠ 0). Depth is aligned per "
        "image by least-squares scale and shift (on the whole image) before scoring.",
        tag,
        "Image-blind baselines never see the evaluated image; the per-pixel prior (mean map or majority class of "
        "the training split) is the strongest of them on these scenes. *Gap closed* = (4M − baseline) / "
        "(bound − baseline) on the headline metric: 0 % is the prior, 100 % the tokenizer bound.",
        "",
        *verdict_table(summary, kinds),
        "",
        "## Every metric",
        *details,
        "",
        "![samples](samples.png)  \nEach row: a held-out sample (key on the left), its RGB input, then per task the "
        "truth, the 4M prediction, the strongest image-blind prior and the tokenizer bound.",
        "",
    ])
    (out / "report.md").write_text(text)
