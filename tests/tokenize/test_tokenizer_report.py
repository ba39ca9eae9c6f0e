"""tokenizers/report.md: one row per tokenizer, headline by the metrics its family reported."""

from __future__ import annotations

from fm21.tokenize.report import headline, tokenizer_report


def test_rows_follow_the_reported_metrics_and_check_targets():
    summary = {
        "tok_rgb": {"family": "vqvae", "psnr": 24.0, "codebook_usage": 1.0, "num_samples": 10},
        "tok_clip": {"family": "vqvae", "cosine": 0.85, "mse": 0.2, "num_samples": 10},
        "tok_dinov2_global": {"family": "memcodes", "cosine": 0.95, "cosine_of_mean": 0.5, "num_samples": 10},
        "sam_instance": {"family": "sam_mask", "mask_iou": 0.9, "num_samples": 30},
        "human_poses": {"family": "memcodes", "skipped": "no row has 'human_poses'"},
        "text": {"fingerprint": "x", "vocab_size": 5000},
    }
    md = tokenizer_report(summary, {"tok_clip": True})
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "PSNR dB | 24.000" in rows["tok_rgb"] and "target" not in rows["tok_rgb"]
    assert "cosine | 0.850" in rows["tok_clip (random labels)"]
    assert "**not met** (≥ 0.9)" in rows["tok_clip (random labels)"]
    assert "0.950 | 0.500 | met (≥ 0.9)" in rows["tok_dinov2_global"]
    assert "mask IoU | 0.900 |  | met (≥ 0.8)" in rows["sam_instance"]
    assert "skipped: no row" in rows["human_poses"]
    assert "text" not in rows and headline(summary["text"]) is None  # no held-out metric: no row
