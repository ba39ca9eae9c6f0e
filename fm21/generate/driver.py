"""One sample, a folder of images, or rows of the tokens store -> generated folders.

Targets are generated in the order given and chained: each finished target becomes a
full input of the next (the sampler leaves it in the mod_dict so), as 4M's any-to-any
chained generation does (apple/ml-4m `fourm/models/generate.py`, README "chained generation").
Batch modes stream their samples one at a time: memory does not grow with the folder or
the store, and the index holds one small entry per sample.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from fm21.evaluate.sampler import generate, init_empty_target, init_full_input
from fm21.generate.inputs import IMAGE_SUFFIXES, Condition, read_condition, read_label_map, pixels_condition, \
    stored_condition
from fm21.generate.outputs import TEXT_PARSERS, decode_output, tile_of, write_grid
from fm21.generate.run import GenerateError, TrainedRun

log = logging.getLogger("fm21")

GRID_FILE = "grid.png"
SUMMARY_FILE = "generation.json"
INDEX_FILE = "index.json"


@dataclass(frozen=True)
class Settings:
    """How each target is sampled (``fm21.evaluate.sampler.generate``'s arguments)."""

    scheme: str = "maskgit"
    num_steps: int = 8
    temperature: float = 1.0
    top_k: int | float | None = None
    top_p: float | None = None
    cfg_scale: float = 1.0
    seed: int = 0


def check_targets(run: TrainedRun, targets: list[str], conditions: list[str]) -> None:
    if not targets:
        raise GenerateError("give at least one --target")
    for name in targets:
        spec = run.spec(name)
        if not spec.can_be_target:
            raise GenerateError(f"{name} is input-only and cannot be generated")
        if name in conditions:
            raise GenerateError(f"{name} is both a condition and a target")
    if len(set(targets)) != len(targets):
        raise GenerateError(f"a target is given twice: {targets}")


def generate_sample(run: TrainedRun, conditions: list[Condition], targets: list[str], settings: Settings,
                    out_dir: Path, *, title: str = "") -> dict[str, Any]:
    """Generate ``targets`` (chained) from ``conditions``; write every output, the grid and
    ``generation.json`` into ``out_dir``; return that summary."""
    check_targets(run, targets, [c.name for c in conditions])
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = run.specs
    md: dict[str, dict[str, torch.Tensor]] = {}
    for cond in conditions:
        md[cond.name] = {"tensor": cond.tensor}
        md = init_full_input(md, cond.name, specs)
    gen = torch.Generator().manual_seed(settings.seed)
    for target in targets:
        md = init_empty_target(md, target, specs, batch_size=1)
        md = generate(run.model, md, target=target, scheme=settings.scheme, num_steps=settings.num_steps,
                      temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                      cfg_scale=settings.cfg_scale, generator=gen)
    outputs = {t: decode_output(run, t, md[t]["tensor"], out_dir) for t in targets}
    random_parts = run.random_parts([*targets, *(c.name for c in conditions)])
    background = next((c.labels for c in conditions if specs[c.name].label_kind == "rgb" and c.labels is not None),
                      None)
    tiles = []
    for cond in conditions:
        kind = specs[cond.name].label_kind
        parsed = TEXT_PARSERS[kind](cond.text) if cond.text and kind in TEXT_PARSERS else None
        tiles.append((f"in: {cond.name}", tile_of(kind, labels=cond.labels, text=cond.text or cond.source,
                                                   parsed=parsed, background=background)))
    for name, out in outputs.items():
        tiles.append((f"out: {name}" + (" [random]" if random_parts else ""),
                      tile_of(specs[name].label_kind, labels=out.labels, text=out.text, parsed=out.parsed,
                              background=background)))
    write_grid(out_dir / GRID_FILE, tiles)
    summary = {
        "title": title,
        "conditions": {c.name: c.source for c in conditions},
        "targets": targets,
        "settings": asdict(settings),
        "checkpoint": run.checkpoint,
        "checkpoint_step": run.step,
        "weights": run.weights,  # random | released | trained (the 4M model's)
        "random": bool(random_parts),  # made with random weights: plumbing, not quality
        "random_parts": random_parts,
        "outputs": {n: {"files": o.files, **({"text": o.text} if o.text is not None else {})}
                    for n, o in outputs.items()},
        "grid": GRID_FILE,
    }
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def given_conditions(run: TrainedRun, items: list[tuple[str, str]]) -> list[Condition]:
    """``--cond name=value`` pairs -> conditions (each read by its spec)."""
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise GenerateError(f"a condition is given twice: {names}")
    return [read_condition(run, name, value) for name, value in items]


# ------------------------------------------------------------------------------ batch modes
def _pixels_name(run: TrainedRun) -> str:
    names = [n for n, s in run.specs.items() if s.kind == "pixels"]
    if not names:
        raise GenerateError("the model has no pixels modality to condition images on")
    return names[0]


def folder_images(folder: Path) -> Iterator[Path]:
    if not folder.is_dir():
        raise GenerateError(f"--batch-dir {folder}: not a folder")
    yield from (p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES)


def generate_folder(run: TrainedRun, folder: Path, extra: list[Condition], targets: list[str], settings: Settings,
                    out_dir: Path) -> dict[str, Any]:
    """Every image of ``folder`` as the pixels condition (with the ``extra`` conditions)."""
    pixels = _pixels_name(run)
    check_targets(run, targets, [pixels, *(c.name for c in extra)])

    def samples() -> Iterator[tuple[str, list[Condition]]]:
        for path in folder_images(folder):
            rgb = read_label_map(path, "rgb", run.specs[pixels].resolution)
            yield path.stem, [pixels_condition(run.specs[pixels], rgb, source=str(path)), *extra]

    return _run_all(run, samples(), targets, settings, out_dir)


def store_rows(run: TrainedRun, names: list[str], *, where: str | None, limit: int) -> Iterator[dict]:
    """Up to ``limit`` rows of the tokens store matching the Lance filter ``where``,
    streamed in small batches (only ``key``, ``crop`` and the ``names`` columns)."""
    import lance

    uri = run.workdir.tokens_uri
    try:
        ds = lance.dataset(str(uri))
    except (ValueError, OSError) as err:
        raise GenerateError(f"cannot open the tokens store {uri}: {err}") from None
    missing = [n for n in names if n not in ds.schema.names]
    if missing:
        raise GenerateError(f"the tokens store has no column {missing} (it has: {ds.schema.names})")
    seen = 0
    try:
        batches = ds.to_batches(columns=["key", "crop", *names], filter=where, batch_size=16)
        for batch in batches:
            for row in batch.to_pylist():
                if seen >= limit:
                    return
                seen += 1
                yield row
    except (ValueError, OSError) as err:
        raise GenerateError(f"--where {where!r}: {str(err).splitlines()[0].split(', /')[0]}") from None


def generate_from_store(run: TrainedRun, names: list[str], extra: list[Condition], targets: list[str],
                        settings: Settings, out_dir: Path, *, where: str | None, limit: int) -> dict[str, Any]:
    """Condition each matching store row on its stored tokens of ``names``."""
    for name in names:
        run.spec(name)
    check_targets(run, targets, [*names, *(c.name for c in extra)])

    def samples() -> Iterator[tuple[str, list[Condition]]]:
        for row in store_rows(run, names, where=where, limit=limit):
            conds = [stored_condition(run, n, row[n], source=f"tokens:{row['key']}/{row['crop']}")
                     for n in names if row.get(n) is not None]
            yield f"{row['key']}-crop{row['crop']}", [*conds, *extra]

    return _run_all(run, samples(), targets, settings, out_dir)


def _run_all(run: TrainedRun, samples: Iterator[tuple[str, list[Condition]]], targets: list[str],
             settings: Settings, out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, random_parts = [], set()
    for i, (label, conds) in enumerate(samples):
        folder = f"{i:05d}-{_safe(label)}"
        summary = generate_sample(run, conds, targets, settings, out_dir / folder, title=label)
        entries.append({"sample": label, "folder": folder, "conditions": summary["conditions"],
                        "outputs": {n: o["files"] for n, o in summary["outputs"].items()}})
        random_parts.update(summary["random_parts"])
        log.info("generate: %s -> %s", label, out_dir / folder)
    if not entries:
        raise GenerateError("no sample to generate from (an empty folder, or no store row matches --where)")
    index = {"num_samples": len(entries), "targets": targets, "settings": asdict(settings),
             "checkpoint_step": run.step, "random": bool(random_parts), "random_parts": sorted(random_parts),
             "samples": entries}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return index


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:80]


def top_k_value(value: float | None) -> int | float | None:
    """``--top-k``: a count (>= 1) or a fraction of the vocabulary (< 1)."""
    if value is None:
        return None
    return int(value) if value >= 1 and float(value).is_integer() else float(value)
