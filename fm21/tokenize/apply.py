"""The tokens stage: apply the trained tokenizers to labels.lance as a Ray job over work
units (one labels.lance fragment each), writing tokens.lance with one row per
(sample key, crop).

Every modality of a sample is cut with the same crop window and flip (aligned
multi-crop, ``fm21.tokenize.crops``). A worker actor reads its fragment, tokenizes it
and writes the tokens fragment itself; the driver commits ``units_per_commit`` units
per Lance Append, recording the units in the transaction (``fm21.store.units``), so a
killed run resumes at the first uncommitted fragment without duplicates. A store made
with other tokenizers or labels is rebuilt.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fm21.config import TokensConfig
from fm21.faults import crash_point
from fm21.modalities import ModalitySpec
from fm21.store import fs
from fm21.store import labels as store
from fm21.store import tokens as token_store
from fm21.store import units as unit_store
from fm21.tokenize.crops import apply_crop, crop_window, is_val_key, key_hash
from fm21.tokenize.sequences import serialize
from fm21.tokenize.stage import TEXT_DIR

log = logging.getLogger("fm21")


class TokenizeActor:
    """Ray actor body: loads every tokenizer once, then tokenizes whole labels.lance
    fragments (:meth:`tokenize_unit`) in batches of label rows (:meth:`__call__`)."""

    def __init__(self, specs: dict[str, dict], tokenizers_dir: str, cfg: dict, schema: pa.Schema,
                 *, labels_uri: str = "", uri: str = "") -> None:
        import torch

        from fm21.tokenize.checkpoint import load_tokenizer
        from fm21.tokenize.text import TextTokenizer

        torch.set_grad_enabled(False)
        self.specs = {n: ModalitySpec(**{**s, "label_columns": tuple(s["label_columns"])}) for n, s in specs.items()}
        self.cfg = TokensConfig.model_validate(cfg)
        self.schema = schema
        root = Path(tokenizers_dir)
        self.image = {n: load_tokenizer(root / n) for n, s in self.specs.items() if s.is_image_like and s.kind != "pixels"}
        has_text = any(s.kind == "sequence" for s in self.specs.values())
        self.text = TextTokenizer.load(root / TEXT_DIR) if has_text else None
        self.labels_uri, self.uri = labels_uri, uri
        self.columns = sorted({"key", "rgb", *(c for s in self.specs.values() for c in s.label_columns)})

    def tokenize_unit(self, unit: dict[str, Any]) -> dict[str, Any]:
        """One labels fragment (at the planned labels version) -> its tokens fragment."""
        import lance

        fragment = lance.dataset(self.labels_uri, version=unit["version"]).get_fragment(unit["fragment"])
        tables = []
        for batch in fragment.to_batches(columns=self.columns, batch_size=self.cfg.batch_size):
            tables.append(self(pa.Table.from_batches([batch])))
            crash_point("tokens.in_unit")
        table = pa.concat_tables(tables) if tables else self.schema.empty_table()
        fragments = unit_store.write_unit(table, self.uri, self.schema)
        crash_point("tokens.after_write")
        return unit_store.UnitResult(unit["id"], fragments, table.num_rows).to_dict()

    def __call__(self, table: pa.Table) -> pa.Table:
        batch = {name: store.column_to_python(table.column(name), table.schema.field(name)) for name in table.column_names}
        keys = batch["key"]
        size = int(np.asarray(batch["rgb"]).shape[1])
        rows: dict[str, list] = {f.name: [] for f in self.schema}
        for index in range(self.cfg.num_crops):
            crops = [crop_window(size, key=k, index=index, seed=self.cfg.seed, min_scale=self.cfg.min_crop_scale) for k in keys]
            rows["key"] += keys
            rows["crop"] += [index] * len(keys)
            rows["split"] += ["val" if is_val_key(k, self.cfg.val_fraction) else "train" for k in keys]
            for name, spec in self.specs.items():
                rows[name] += self._modality(name, spec, batch, crops, index=index, size=size)
        return pa.table({f.name: pa.array(rows[f.name], type=f.type) for f in self.schema}, schema=self.schema)

    def _modality(self, name: str, spec: ModalitySpec, batch: dict, crops: list, *, index: int, size: int) -> list:
        column = spec.label_columns[0]
        if spec.is_image_like:
            maps = np.stack([
                apply_crop(m, c, kind=column, out_size=spec.resolution) for m, c in zip(batch[column], crops)
            ])
            if spec.kind == "pixels":
                return list(maps.reshape(len(maps), -1))
            return list(self.image[name].encode_labels(maps).astype(np.int16))  # (B, N)
        out = []
        for i, crop in enumerate(crops):
            row = {c: batch[c][i] for c in spec.label_columns}
            rng = np.random.default_rng([self.cfg.seed, index, key_hash(batch["key"][i])])
            text = serialize(name, row, crop, size=size, rng=rng)
            out.append(self._ids(text))
        return out

    def _ids(self, text: str | list[str] | None) -> list[int] | None:
        if text is None:
            return None
        if isinstance(text, list):  # metadata chunks: one field = exactly two ids
            return [i for chunk in text for i in self.text.encode(chunk)]
        return self.text.encode(text)


def _fingerprints(tokenizers_dir: Path, specs: dict[str, ModalitySpec]) -> dict[str, str]:
    import json

    out = {}
    for name, spec in specs.items():
        if spec.kind == "pixels":
            continue
        folder = tokenizers_dir / (TEXT_DIR if spec.kind == "sequence" else name)
        out[name] = json.loads((folder / "config.json").read_text())["fingerprint"]
    return out


def run_tokens(cfg: TokensConfig, ctx) -> dict:
    from fm21.store.manifest import read_manifest

    specs = ctx.specs
    uri, labels_uri = ctx.workdir.tokens_uri, ctx.workdir.labels_uri
    fps = _fingerprints(ctx.workdir.tokenizers_dir, specs)
    labels_fp = (read_manifest(ctx.workdir.manifest("pseudolabel")) or {})["fingerprint"]
    schema = token_store.tokens_schema(specs, tokenizers=fps, labels_fp=labels_fp)
    if unit_store.exists(uri) and token_store.read_store_metadata(uri) != token_store.read_schema_metadata(schema):
        log.info("tokens: %s was made with other tokenizers/labels/specs; rebuilding", uri)
        fs.remove_tree(uri)
    records = unit_store.read_records(uri)
    if unit_store.drop_if_unrecorded(uri, records):
        records = unit_store.Records({}, {})
    unit_store.ensure_store(uri, schema)
    done = records.units
    labels = store.open_dataset(labels_uri)
    # Unit = one labels fragment, read at this pinned version; fragment ids are stable
    # under Append and Merge, so the unit id names the same rows on every rerun.
    units = [{"id": f"labels-fragment-{f.fragment_id}", "fragment": f.fragment_id, "version": labels.version}
             for f in labels.get_fragments() if f"labels-fragment-{f.fragment_id}" not in done]
    counts = {"units": 0, "rows": 0, "failed": 0, "commits": 0, "nodes": 0}
    if units:
        actors = _actors(cfg, ctx, schema=schema)
        try:
            counts = unit_store.run_units(actors, lambda a, u: a.tokenize_unit.remote(u), units, uri=uri,
                                          units_per_commit=cfg.units_per_commit, stage="tokens")
        finally:
            _release(actors)
    return {**_summary(uri, num_new=counts["rows"] // max(cfg.num_crops, 1)), "new_units": counts["units"],
            "commits": counts["commits"], "nodes": counts["nodes"]}


def _actors(cfg: TokensConfig, ctx, *, schema: pa.Schema) -> list:
    import dataclasses

    import ray

    from fm21.faults import arm, worker_env
    from fm21.ray_runtime import ensure_ray

    arm()
    ensure_ray(ctx.ray)
    env = worker_env()
    options = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, **({"runtime_env": {"env_vars": env}} if env else {})}
    remote = ray.remote(TokenizeActor).options(**options)
    specs = {n: dataclasses.asdict(s) for n, s in ctx.specs.items()}
    return [remote.remote(specs, str(ctx.workdir.tokenizers_dir), cfg.model_dump(), schema,
                          labels_uri=str(ctx.workdir.labels_uri), uri=str(ctx.workdir.tokens_uri))
            for _ in range(cfg.concurrency)]


def _release(actors: list) -> None:
    """Free the actors' CPUs/GPUs for the next stage in this process."""
    import ray

    for actor in actors:
        ray.kill(actor)


def _summary(uri: Path, *, num_new: int) -> dict[str, Any]:
    from fm21.store.stats import token_store_stats

    # One streaming pass over the store: memory O(vocab), not O(rows).
    stats = token_store_stats(uri)
    return {"rows": stats["rows"], "samples": stats["samples"], "new_samples": num_new, "splits": stats["splits"],
            "bytes": stats["bytes"],
            "coverage": {n: round(m["coverage"], 4) for n, m in stats["modalities"].items()},
            "perplexity": {n: round(m["perplexity"], 2) for n, m in stats["modalities"].items() if "perplexity" in m}}
