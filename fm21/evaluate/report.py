"""Evaluation report: markdown tables, a bar chart per task (4M vs the strongest
image-blind baseline vs the tokenizer bound vs chance) and a labelled PNG sample grid."""

from __future__ import annotations

import io

from pathlib import Path

import numpy as np

from fm21.evaluate.metrics import DIRECTION, headline_of
from fm21.store import fs
from fm21.tokenize.grid import labels_to_rgb, save_grid

ARROW = {+1: "↑", -1: "↓"}
# What a metric that is not self-explanatory measures, printed under a table that has it
METRIC_NOTES = {
    "object_auc": "*object_auc*, *colour_auc*: per class or colour word, the ROC AUC of the mentions (or of the "
                  "share of K sampled captions naming it) against the scene, averaged over the words. Anything "
                  "image-blind scores 0.5, the truth 1.0 (docs/evaluation.md).",
    "structure_auc": "*structure_auc*: over pairs of evaluated scenes, how often a generated image is closer to its "
                     "own scene than to the other (grey-level gradient magnitude: edges, not colours). Anything "
                     "image-blind scores 0.5, the truth 1.0 (docs/evaluation.md).",
}
SCOPE_NAME = {"all": "all pixels", "objects": "object pixels"}
GAP_TARGET = 0.5  # the share of the prior-to-bound gap a model that learned must close


def _arrow(metric: str) -> str:
    return ARROW.get(DIRECTION.get(metric, 0), "")


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.0f} %"  # x != x: NaN


def verdict_table(summary: dict, kinds: dict[str, str]) -> list[str]:
    """Headline metric per task and scope: 4M vs the strongest image-blind baseline vs
    the tokenizer bound vs chance, and the share of the gap 4M closes. ``kinds``: task -> label kind."""
    lines = ["| task | pixels | metric | 4M | strongest image-blind baseline | tokenizer bound | chance "
             f"| gap closed | ≥ {GAP_TARGET:.0%} of gap |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, res in summary["tasks"].items():
        metric, sign = headline_of(res, kinds[task])
        for scope in res["scores"]:
            s = res["scores"][scope]
            base = res["strongest_baseline"][scope]
            gap = res["gap_closed"][scope]
            ok = "**yes**" if gap >= GAP_TARGET else "no"
            chance = f"{s['chance'][metric]:.4f}" if "chance" in s else "n/a"
            lines.append(f"| {task} | {SCOPE_NAME[scope]} | {metric} {ARROW[sign]} | {s['4m'][metric]:.4f} | "
                         f"{s[base][metric]:.4f} ({base}) | {s['tokenizer_bound'][metric]:.4f} | {chance} | "
                         f"{_pct(gap)} | {ok} |")
    return lines


def detail_table(task: str, res: dict) -> list[str]:
    extra = [n for n in res["scores"]["all"] if n not in ("4m", "tokenizer_bound", *res["baselines"])]
    names = ["4m", "tokenizer_bound", *res["baselines"], *extra]
    header = {"4m": "4M", "tokenizer_bound": "tokenizer bound"}
    lines = [f"| {task} | pixels | " + " | ".join(header.get(n, n) for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for scope in res["scores"]:
        s = res["scores"][scope]
        for metric in s["4m"]:
            if metric.startswith("num_"):
                continue
            vals = " | ".join(f"{s[n][metric]:.4f}" for n in names)
            tag = " (**random**)" if metric in res.get("random_metrics", ()) else ""
            lines.append(f"| {metric} {_arrow(metric)}{tag} | {SCOPE_NAME[scope]} | {vals} |")
    return lines


def retrieval_table(column: str, res: dict) -> list[str]:
    """recall@k per query (4M from each condition, the bounds, the baseline, chance)."""
    metrics = ["recall@1", "recall@5", "recall@10", "cosine"]
    lines = [f"| {column}: query | " + " | ".join(f"{m} {_arrow(m)}" for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for name, s in res["scores"].items():
        lines.append(f"| {name} | " + " | ".join("n/a" if s[m] != s[m] else f"{s[m]:.3f}" for m in metrics) + " |")
    return lines


def bar_chart(task: str, res: dict, kind: str, path: Path) -> None:
    """One bar group per scope: 4M, the strongest baseline, the tokenizer bound, chance,
    on the task's headline metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, sign = headline_of(res, kind)
    scopes = list(res["scores"])
    parts = [("4M", "4m"), ("baseline", None), ("bound", "tokenizer_bound"), ("chance", "chance")]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(scopes), 2.6), dpi=100)
    width = 0.8 / len(parts)
    for j, (label, key) in enumerate(parts):
        vals = []
        for scope in scopes:
            name = key or res["strongest_baseline"][scope]
            vals.append(res["scores"][scope].get(name, {}).get(metric, float("nan")))
        ax.bar(np.arange(len(scopes)) + (j - 1.5) * width, np.nan_to_num(vals), width, label=label)
    ax.set_xticks(np.arange(len(scopes)), [SCOPE_NAME[s] for s in scopes])
    ax.set_title(f"{task}: {metric} {ARROW[sign]}", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()  # bytes, then one atomic write: ``path`` may be an object-store UriPath
    fig.savefig(buf, format="png")
    plt.close(fig)
    fs.write_atomic(path, buf.getvalue())


def bar_file(task: str) -> str:
    return "bars_" + "".join(c if c.isalnum() else "_" for c in task) + ".png"


def sample_grid(rgb: np.ndarray, keys: list[str], samples: dict[str, dict[str, np.ndarray]], path: Path,
                kinds: dict[str, str]) -> None:
    """samples.png: a row per held-out sample (its key on the left), a labelled column per
    (task, truth / 4M / baseline / bound) after the RGB input, coloured by label kind."""
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
    """report.md (verdict table, bar charts, per-task detail tables, retrieval, skipped
    tasks) and samples.png. ``kinds``: the label kind of each task, which picks its
    headline metric and colouring."""
    for stale in out.glob("bars_*.png"):  # charts of tasks an earlier run had
        stale.unlink()
    if samples:
        sample_grid(rgb, keys, samples, out / "samples.png", kinds)
    for task, res in summary["tasks"].items():
        bar_chart(task, res, kinds[task], out / bar_file(task))
    tag = ""
    if summary["random_parts"]:
        tag = f"\n> **random**: {', '.join(summary['random_parts'])} ran with random weights; their numbers are plumbing only.\n"
    details: list[str] = []
    for task, res in summary["tasks"].items():
        details += ["", f"### {task}", "", f"![{task}]({bar_file(task)})", "", *detail_table(task, res)]
        reported = {m for scope in res["scores"].values() for p in scope.values() for m in p}
        details += [f"\n{note}" for metric, note in METRIC_NOTES.items() if metric in reported]
        if "object_classes" in res:
            details.append(f"\nObject-pixel mIoU averages the object classes {res['object_classes']} "
                           "(classes whose training pixels lie mostly on instances).")
        for name, texts in summary.get("examples", {}).get(task, {}).items():
            if name in ("4m", "tokenizer_bound"):
                details.append(f"\n{name} on the first samples: " + " · ".join(f"`{t[:120]}`" for t in texts))
    retrieval: list[str] = []
    for column, res in summary.get("retrieval", {}).items():
        retrieval += ["", f"Among the {res['num_candidates']} evaluated samples ({column}; chance = k / N):", "",
                      *retrieval_table(column, res)]
    skipped = [f"- {task}: skipped, {reason}" for task, reason in summary.get("skipped", {}).items()]
    text = "\n".join([
        "# fm21 evaluation report",
        "",
        f"X → Y by generation ({summary['scheme']}, {summary['num_steps']} steps, temperature "
        f"{summary.get('temperature')}) on {summary['num_samples']} held-out samples, checkpoint step "
        f"{summary['checkpoint_step']}. Dense maps, det and captions are generated from RGB; RGB from the "
        "condition its task names. Predictions are decoded by the task's tokenizer and scored against the "
        "synthetic ground truth, on all pixels and on object pixels only (instance id ≠ 0) where pixels apply. "
        "Depth is aligned per image by least-squares scale and shift (on the whole image) before scoring.",
        tag,
        "Image-blind baselines never see the evaluated image; the per-pixel prior (mean map or majority class of "
        "the training split) is the strongest of them on these scenes. *Chance* is the label of a random training "
        "sample (k / N for retrieval), image-blind too: where it scores highest (boxes, class maps), it is the "
        "verdict's baseline. *Gap closed* = (4M − baseline) / (bound − baseline) on the headline "
        "metric: 0 % is the baseline, 100 % the tokenizer bound.",
        "",
        *verdict_table(summary, kinds),
        *(["", "## Skipped", "", *skipped] if skipped else []),
        *(["", "## Retrieval", "", "Global embeddings generated from each condition, decoded by their Memcodes "
           "tokenizer and searched (cosine, the store's vector index) among the evaluated samples' true "
           "embeddings; a hit is the query's own sample.", *retrieval] if retrieval else []),
        "",
        "## Every metric",
        *details,
        "",
        *(["![samples](samples.png)  \nEach row: a held-out sample (key on the left), its RGB input, then per task "
           "the truth, the 4M prediction, the strongest image-blind baseline and the tokenizer bound.", ""]
          if samples else []),
    ])
    (out / "report.md").write_text(text)
