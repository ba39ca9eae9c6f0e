"""``fm21 weights list`` and ``fm21 weights fetch``: the enabled specialists' weights.

Cluster workers are often air-gapped: ``fetch`` downloads every enabled network's
pretrained weights once, on a machine with network, into the weights cache
(``FM21_WEIGHTS_CACHE``, a folder every node reads); ``list`` shows what each enabled
specialist loads and whether a worker could load it offline now.
"""

from __future__ import annotations

from typing import Any

from fm21.config import FlowConfig
from fm21.pseudolabel.specialists import specialist_class
from fm21.pseudolabel.specialists.base import Specialist
from fm21.pseudolabel.specialists.weights import NetworkSpecialist, cache_dir


def enabled_specialists(cfg: FlowConfig) -> dict[str, Specialist]:
    """Every enabled specialist, built (not loaded) with its configuration."""
    size = cfg.ingest.image_size
    return {name: specialist_class(name, c.weights)(c, image_size=size)
            for name, c in cfg.pseudolabel.specialists.items() if c.enabled}


def status_rows(cfg: FlowConfig) -> list[dict[str, Any]]:
    rows = []
    for name, spec in enabled_specialists(cfg).items():
        network = isinstance(spec, NetworkSpecialist)
        if network:
            source, cached = spec.describe_source(), ("yes" if spec.is_cached() else "no")
        else:
            source, cached = ("synthetic ground truth" if spec.oracle else "no weights"), "-"
        rows.append({"specialist": name, "class": type(spec).__name__, "weights": spec.cfg.weights,
                     "source": source, "cached": cached, "random": spec.is_random, "oracle": spec.oracle})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = ["specialist", "class", "weights", "source", "cached", "tag"]
    body = [[r["specialist"], r["class"], r["weights"], r["source"], r["cached"],
             "random" if r["random"] else ("oracle" if r["oracle"] else "")] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *body]]
    return "\n".join([*lines, f"weights cache: {cache_dir()}"])


def fetch_all(cfg: FlowConfig, *, names: list[str] | None = None) -> list[str]:
    """Download the pretrained weights of the enabled networks (or ``names``) into the cache;
    returns the specialists fetched. Already-cached weights are not downloaded again."""
    fetched = []
    for name, spec in enabled_specialists(cfg).items():
        if names and name not in names:
            continue
        if isinstance(spec, NetworkSpecialist) and spec.cfg.weights == "pretrained" and not spec.is_cached():
            spec.fetch()
            fetched.append(name)
    return fetched
