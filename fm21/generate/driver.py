"""One sample, a folder of images, or rows of the tokens store -> generated folders.

Targets are generated in the order given and chained: each finished target becomes a
full input of the next (the sampler leaves it in the mod_dict so), as 4M's any-to-any
chained generation does (apple/ml-4m `fourm/models/generate.py`, README "chained generation").
Batch modes stream their samples and group those with the same conditions (names and
shapes) into batches of up to ``batch_size``: one sampler call per target and batch, each
row stopping at its own end (:mod:`fm21.evaluate.autoregressive`). Memory holds at most
one open batch per condition layout; the index holds one small entry per sample.

Seeds: every sample draws from its own generator seeded with ``Settings.seed``, as a
sample generated alone does (per-row generators, :mod:`fm21.evaluate.sampling`), so a
sample's output depends on its conditions and the seed, never on its batch mates or its
place in the folder: batching changes speed, not results (greedy decoding gives identical
tokens; sampled ones agree up to the float rounding of a batched forward pass).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from fm21.evaluate.sampler import generate, init_empty_target, init_full_input
from fm21.generate.inputs import IMAGE_SUFFIXES, Condition, read_condition, read_label_map, pixels_condition, \
    stored_condition
from fm21.generate.outputs import TEXT_PARSERS, decode_output, tile_of, write_grid
from fm21.generate.run import GenerateError, TrainedRun

log = logging.getLogger("fm21")

DEFAULT_BATCH_SIZE = 16
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
    # a named preset (fm21.evaluate.presets.PRESETS: the reference's shipped defaults)
    # decodes every target its own way instead of the fields above, in the preset's order
    preset: str | None = None


def resolve_targets(run: TrainedRun, targets: list[str], conditions: list[str], settings: Settings) -> list[str]:
    """The targets to generate, in generation order, checked: as given, or with a preset
    its chain order (every target of its chain the model has, when none is given)."""
    if settings.preset is not None:
        from fm21.evaluate.presets import PRESETS

        if settings.preset not in PRESETS:
            raise GenerateError(f"unknown preset {settings.preset!r} (presets: {', '.join(PRESETS)})")
        chain = [s.target for s in PRESETS[settings.preset].steps]
        outside = [t for t in targets if t not in chain]
        if outside:
            raise GenerateError(f"preset {settings.preset!r} has no step for {outside} (its chain: {chain})")
        targets = [t for t in chain if t in targets] if targets else \
            [t for t in chain if t in run.specs and run.specs[t].can_be_target and t not in conditions]
        if not targets:
            raise GenerateError(f"preset {settings.preset!r}: the model generates none of {chain} beyond the conditions")
    check_targets(run, targets, conditions)
    return targets


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


def generate_tokens(model: Any, batch: list[list[Condition]], targets: list[str],
                    settings: Settings) -> dict[str, dict[str, torch.Tensor]]:
    """The chained ``targets`` of every sample of ``batch`` (each a list of conditions with
    the same names and shapes), one sampler call per target; row ``b`` of the returned
    mod_dict is sample ``b``, generated as it would be alone (its own seeded generator)."""
    specs = model.specs
    names = [c.name for c in batch[0]]
    md: dict[str, dict[str, torch.Tensor]] = {}
    for j, name in enumerate(names):
        md[name] = {"tensor": torch.cat([conds[j].tensor for conds in batch])}  # (B, ...)
        md = init_full_input(md, name, specs)
    gens = [torch.Generator().manual_seed(settings.seed) for _ in batch]
    if settings.preset is not None:
        from fm21.evaluate.presets import run_preset

        return run_preset(model, md, settings.preset, targets=targets, generator=gens)
    for target in targets:
        md = init_empty_target(md, target, specs, batch_size=len(batch))
        md = generate(model, md, target=target, scheme=settings.scheme, num_steps=settings.num_steps,
                      temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                      cfg_scale=settings.cfg_scale, generator=gens)
    return md


def generate_sample(run: TrainedRun, conditions: list[Condition], targets: list[str], settings: Settings,
                    out_dir: Path, *, title: str = "") -> dict[str, Any]:
    """Generate ``targets`` (chained) from ``conditions``; write every output, the grid and
    ``generation.json`` into ``out_dir``; return that summary."""
    targets = resolve_targets(run, targets, [c.name for c in conditions], settings)
    md = generate_tokens(run.model, [conditions], targets, settings)
    return write_sample(run, conditions, targets, settings, {t: md[t]["tensor"] for t in targets}, out_dir,
                        title=title)


def write_sample(run: TrainedRun, conditions: list[Condition], targets: list[str], settings: Settings,
                 generated: dict[str, torch.Tensor], out_dir: Path, *, title: str = "") -> dict[str, Any]:
    """One sample's generated ``(1, ...)`` tensors -> its output files, grid and
    ``generation.json`` in ``out_dir``; returns that summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = run.specs
    outputs = {t: decode_output(run, t, generated[t], out_dir) for t in targets}
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
                    out_dir: Path, *, batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Any]:
    """Every image of ``folder`` as the pixels condition (with the ``extra`` conditions),
    ``batch_size`` images per sampler call."""
    pixels = _pixels_name(run)
    targets = resolve_targets(run, targets, [pixels, *(c.name for c in extra)], settings)

    def samples() -> Iterator[tuple[str, list[Condition]]]:
        for path in folder_images(folder):
            rgb = read_label_map(path, "rgb", run.specs[pixels].resolution)
            yield path.stem, [pixels_condition(run.specs[pixels], rgb, source=str(path)), *extra]

    return _run_all(run, samples(), targets, settings, out_dir, batch_size=batch_size)


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
                        settings: Settings, out_dir: Path, *, where: str | None, limit: int,
                        batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Any]:
    """Condition each matching store row on its stored tokens of ``names`` (rows missing
    one of them form batches of their own), ``batch_size`` rows per sampler call."""
    for name in names:
        run.spec(name)
    targets = resolve_targets(run, targets, [*names, *(c.name for c in extra)], settings)

    def samples() -> Iterator[tuple[str, list[Condition]]]:
        for row in store_rows(run, names, where=where, limit=limit):
            conds = [stored_condition(run, n, row[n], source=f"tokens:{row['key']}/{row['crop']}")
                     for n in names if row.get(n) is not None]
            yield f"{row['key']}-crop{row['crop']}", [*conds, *extra]

    return _run_all(run, samples(), targets, settings, out_dir, batch_size=batch_size)


def _layout(conds: list[Condition]) -> tuple:
    """What samples must share to be batched: their condition names, order and shapes."""
    return tuple((c.name, tuple(c.tensor.shape[1:])) for c in conds)


def _batches(samples: Iterable[tuple[str, list[Condition]]], batch_size: int
             ) -> Iterator[list[tuple[int, str, list[Condition]]]]:
    """Stream (index, label, conditions) batches of up to ``batch_size`` samples with the
    same layout; a batch is released when full, the rest at the end."""
    pending: dict[tuple, list[tuple[int, str, list[Condition]]]] = {}
    for i, (label, conds) in enumerate(samples):
        key = _layout(conds)
        group = pending.setdefault(key, [])
        group.append((i, label, conds))
        if len(group) >= batch_size:
            yield pending.pop(key)
    yield from pending.values()


def _run_all(run: TrainedRun, samples: Iterator[tuple[str, list[Condition]]], targets: list[str],
             settings: Settings, out_dir: Path, *, batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Any]:
    if batch_size < 1:
        raise GenerateError(f"--batch-size must be at least 1, not {batch_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: dict[int, dict[str, Any]] = {}
    random_parts: set[str] = set()
    for batch in _batches(samples, batch_size):
        md = generate_tokens(run.model, [conds for _, _, conds in batch], targets, settings)
        for row, (i, label, conds) in enumerate(batch):
            folder = f"{i:05d}-{_safe(label)}"
            generated = {t: md[t]["tensor"][row:row + 1] for t in targets}
            summary = write_sample(run, conds, targets, settings, generated, out_dir / folder, title=label)
            entries[i] = {"sample": label, "folder": folder, "conditions": summary["conditions"],
                          "outputs": {n: o["files"] for n, o in summary["outputs"].items()}}
            random_parts.update(summary["random_parts"])
            log.info("generate: %s -> %s", label, out_dir / folder)
    if not entries:
        raise GenerateError("no sample to generate from (an empty folder, or no store row matches --where)")
    index = {"num_samples": len(entries), "targets": targets, "settings": asdict(settings),
             "batch_size": batch_size, "checkpoint_step": run.step, "random": bool(random_parts),
             "random_parts": sorted(random_parts), "samples": [entries[i] for i in sorted(entries)]}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return index


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:80]


def top_k_value(value: float | None) -> int | float | None:
    """``--top-k``: a count (>= 1) or a fraction of the vocabulary (< 1)."""
    if value is None:
        return None
    return int(value) if value >= 1 and float(value).is_integer() else float(value)
