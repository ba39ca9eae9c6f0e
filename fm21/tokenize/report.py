"""``tokenizers/report.md``: every tokenizer's held-out result beside its cheap baseline.

One row per tokenizer of the run, from the reports the families return (``summary.json``).
The headline of a row is the first metric of :data:`HEADLINES` the report holds, so the
table follows whatever the family measured for its label kind (no per-modality names);
a target, where the project sets one, is checked in the row.
"""

from __future__ import annotations

from typing import Any

# metric key -> (label, direction: +1 higher is better, key of the image-blind baseline or None)
HEADLINES: dict[str, tuple[str, int, str | None]] = {
    "psnr": ("PSNR dB", +1, None),
    "abs_rel_aligned": ("AbsRel (aligned)", -1, None),
    "mean_angle_deg": ("mean angle °", -1, None),
    "miou": ("mIoU", +1, None),
    "f1_tol1": ("F1 (1-px tolerance)", +1, None),
    "cosine": ("cosine", +1, "cosine_of_mean"),
    "mask_iou": ("mask IoU", +1, None),
    "angle_error_deg": ("joint angle error °", -1, "angle_error_of_mean_deg"),
}

# Targets of the embedded default (issue: feature and global tokenizers cosine >= 0.9,
# the SAM mask tokenizer IoU >= 0.8); other metrics have none here.
TARGETS: dict[str, float] = {"cosine": 0.9, "mask_iou": 0.8}


def headline(report: dict[str, Any]) -> tuple[str, float] | None:
    """(metric key, value) of a tokenizer report, or None (e.g. the text tokenizer)."""
    for key in HEADLINES:
        if isinstance(report.get(key), (int, float)):
            return key, float(report[key])
    return None


def _meets(key: str, value: float) -> str:
    if key not in TARGETS:
        return ""
    ok = value >= TARGETS[key] if HEADLINES[key][1] > 0 else value <= TARGETS[key]
    return f"{'met' if ok else '**not met**'} (≥ {TARGETS[key]})"


def tokenizer_report(summary: dict[str, dict[str, Any]], random_inputs: dict[str, bool] | None = None) -> str:
    """Markdown of ``summary`` ({tokenizer: report}); ``random_inputs`` marks tokenizers whose
    labels come from random-init specialists (their numbers are plumbing, not quality)."""
    random_inputs = random_inputs or {}
    lines = [
        "# Tokenizers",
        "",
        "Held-out samples of each tokenizer (not trained on). *Baseline*: the training mean "
        "decoded for every sample, where the family measures it. PNGs: inputs over reconstructions.",
        "",
        "| tokenizer | family | metric | held-out | baseline | target | codebook usage | samples | PNG |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rep in summary.items():
        if "skipped" in rep:
            lines.append(f"| {name} | {rep.get('family', '')} | skipped: {rep['skipped']} | | | | | | |")
            continue
        head = headline(rep)
        if head is None:
            continue
        key, value = head
        label, _, base_key = HEADLINES[key]
        base = rep.get(base_key) if base_key else None
        usage = rep.get("codebook_usage")
        tag = " (random labels)" if random_inputs.get(name) else ""
        lines.append(
            f"| {name}{tag} | {rep.get('family', '')} | {label} | {value:.3f} | "
            f"{'' if base is None else f'{base:.3f}'} | {_meets(key, value)} | "
            f"{'' if usage is None else f'{usage:.2f}'} | {rep.get('num_samples', '')} | "
            f"[recon]({name}/recon.png) |"
        )
    return "\n".join(lines) + "\n"
