"""Stage artifacts: every key is one Prefect accepts, whatever the counts are named."""

from __future__ import annotations

import re

from fm21.pipelines import artifacts


def test_count_tables_get_valid_keys_even_for_task_names_with_spaces(monkeypatch):
    keys = []
    monkeypatch.setattr(artifacts, "create_table_artifact", lambda key, **_: keys.append(key))
    artifacts._counts_tables("evaluate", {"counts": {
        "num_samples": 96,
        "rgb from depth_gap_closed": {"all": -0.22, "objects": -0.1},  # a task named "rgb from depth"
        "dinov2_global_gap_closed": {"all": 0.13},
    }, "seconds": 49})
    assert keys == ["fm21-evaluate", "fm21-evaluate-rgb-from-depth-gap-closed", "fm21-evaluate-dinov2-global-gap-closed"]
    assert all(re.fullmatch(r"[a-z0-9-]+", k) for k in keys)  # Prefect's rule for artifact keys
