"""The tokens stage: apply the trained tokenizers to labels.lance as a Ray Data job,
writing tokens.lance with one row per (sample key, crop).

Every modality of a sample is cut with the same crop window and flip (aligned
multi-crop, ``fm21.tokenize.crops``). Rows are committed ``rows_per_commit`` label rows
at a time and keys already in the store are skipped, so a killed run resumes without
duplicates. A store made with other tokenizers or labels is rebuilt.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fm21.config import TokensConfig
from fm21.modalities import ModalitySpec
from fm21.store import labels as store
from fm21.store import tokens as token_store
from fm21.tokenize.crops import apply_crop, crop_window, is_val_key, key_hash
from fm21.tokenize.sequences import serialize
from fm21.tokenize.stage import TEXT_DIR

log = logging.getLogger("fm21")


class TokenizeActor:
    """Ray Data callable class: loads every tokenizer once, tokenizes batches of label rows."""

    def __init__(self, specs: dict[str, dict], tokenizers_dir: str, cfg: dict, schema: pa.Schema) -> None:
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
    import dataclasses

    import ray

    from fm21.ray_runtime import ensure_ray
    from fm21.store.manifest import read_manifest

    specs = ctx.specs
    uri, labels_uri = ctx.workdir.tokens_uri, ctx.workdir.labels_uri
    fps = _fingerprints(ctx.workdir.tokenizers_dir, specs)
    labels_fp = (read_manifest(ctx.workdir.manifest("pseudolabel")) or {})["fingerprint"]
    schema = token_store.tokens_schema(specs, tokenizers=fps, labels_fp=labels_fp)
    if uri.exists() and token_store.read_store_metadata(uri) != token_store.read_schema_metadata(schema):
        log.info("tokens: %s was made with other tokenizers/labels/specs; rebuilding", uri)
        shutil.rmtree(uri)
    done = store.committed_keys(uri)
    todo = sorted(store.committed_keys(labels_uri) - done)
    columns = sorted({"key", "rgb", *(c for s in specs.values() for c in s.label_columns)})
    for start in range(0, len(todo), cfg.rows_per_commit):
        group = todo[start:start + cfg.rows_per_commit]
        ensure_ray(ctx.ray)
        table = store.open_dataset(labels_uri).to_table(columns=columns, filter=_key_filter(group))
        ds = ray.data.from_arrow(table).map_batches(
            TokenizeActor,
            fn_constructor_kwargs={"specs": {n: dataclasses.asdict(s) for n, s in specs.items()},
                                   "tokenizers_dir": str(ctx.workdir.tokenizers_dir),
                                   "cfg": cfg.model_dump(), "schema": schema},
            batch_size=cfg.batch_size, batch_format="pyarrow", num_cpus=cfg.num_cpus,
            num_gpus=cfg.num_gpus or None, compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),
        )
        ds.write_lance(str(uri), schema=schema, mode="append" if uri.exists() else "create")
        log.info("tokens: committed %d samples x %d crops", len(group), cfg.num_crops)
    return _summary(uri, num_new=len(todo))


def _key_filter(keys: list[str]) -> str:
    return "key IN (" + ", ".join("'" + k.replace("'", "''") + "'" for k in keys) + ")"


def _summary(uri: Path, *, num_new: int) -> dict[str, Any]:
    from fm21.store.stats import token_store_stats

    stats = token_store_stats(uri)
    pairs = store.open_dataset(uri).to_table(columns=["key", "crop"]).to_pylist()
    if len({(p["key"], p["crop"]) for p in pairs}) != len(pairs):
        raise RuntimeError(f"{uri} holds duplicate (key, crop) rows; the store is corrupt")
    return {"rows": stats["rows"], "samples": stats["samples"], "new_samples": num_new, "splits": stats["splits"],
            "bytes": stats["bytes"],
            "coverage": {n: round(m["coverage"], 4) for n, m in stats["modalities"].items()},
            "perplexity": {n: round(m["perplexity"], 2) for n, m in stats["modalities"].items() if "perplexity" in m}}
