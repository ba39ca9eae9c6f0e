"""The tokens stage: apply the trained tokenizers to labels.lance as a Ray job over work
units (one labels.lance fragment each), writing tokens.lance with one row per
(sample key, crop).

Every modality of a sample is cut with the same crop window and flip (aligned
multi-crop, ``fm21.tokenize.crops``). A worker actor reads its fragment, tokenizes it
and writes the tokens fragment itself; the driver commits ``units_per_commit`` units
per Lance Append, recording the units in the transaction (``fm21.store.units``), so a
killed run resumes at the first uncommitted fragment without duplicates.

Enabling a modality on an existing store adds only its column, and a modality whose
inputs changed (its tokenizer's fingerprint, its spec, the specialist that made its labels)
gets only its column tokenized again (``plan_store``). Worker actors holding only those
tokenizers each take one tokens fragment, tokenize the rows of the labels fragment it was
made from (same crops: they are drawn from the key hash) and write, per fragment, one new
data file for the added columns (``LanceFragment.merge_columns``: new field ids) and one
for the re-tokenized columns (``_replace_columns``: written under the columns' existing
field ids; the fragment's older files keep their paths and bytes and list those ids as
tombstoned, -2, the Lance format's mark for a field whose data moved to another file).
The driver commits every fragment as one Lance ``Merge`` against the version it read,
whose schema carries the new specs and fingerprints (``fm21.inputs``). That single commit
is the crash-safety argument: a kill before it leaves the old column under the old
fingerprints (the files written are orphans, and a rerun redoes them); after it the store
holds the new column under the new fingerprints; no version has one without the other.
Alternatives weighed (pylance 4.0.2): ``DataReplacement`` swaps a data file only for one
with exactly the same fields (a column sharing its file with others cannot be swapped
alone) and cannot change schema metadata, so the fingerprints would need a second commit;
``drop_columns`` + ``add_columns`` is two commits with a window where the store has no
column (or must first be marked stale) and moves the column to a new field id and the end
of the schema. A re-tokenized column keeps its field id and position, so its Arrow type
must not change (``plan_store`` rebuilds then). A store made from other labels (another
ingest) or with another crop layout, or with a removed modality, is rebuilt whole.

Feature-map modalities (``feature_tokens``: CLIP, DINOv2, ImageBind) are tokenized from
the stored feature map where labels.lance has one (crop 0: the features of the full
image), and otherwise from features the actor computes itself on the rgb crop with the
modality's feature specialist (``FeatureMapSpecialist``), as the reference's
``save_vq_tokens.py`` (apple/ml-4m) does. Global embeddings (``global_tokens``) likewise:
crop 0 from the stored vector, other crops from the specialist's global column of the crop.

Every tokenizer is loaded by its family (``fm21.tokenize.checkpoint.load_tokenizer``). A
sequence whose serialisation embeds a tokenizer's ids (``human_poses``, ``sam_instance``)
gets its ``encode_labels`` in the row (``fm21.tokenize.sequences.ENCODER_KEYS``); when the
tokenizers stage trained none (labels.lance has no person / instance) a row needing ids
fails naming the modality. Embeddings (``t5_caption``) are copied as stored: they do not
depend on the crop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from fm21.config import TokensConfig
from fm21.faults import crash_point
from fm21.modalities import ModalitySpec
from fm21.progress import tracked
from fm21.store import fs
from fm21.store.manifest import fingerprint_of
from fm21.store import labels as store
from fm21.store import tokens as token_store
from fm21.store import units as unit_store
from fm21.tokenize.crops import apply_crop, crop_window, is_val_key, key_hash
from fm21.tokenize.families import trains_tokenizer
from fm21.tokenize.sequences import ENCODER_KEYS, serialize
from fm21.tokenize.stage import TEXT_DIR, label_inputs

PROP_ADDED = "fm21.added_modalities"  # on the Merge that adds columns ...
PROP_RETOKENIZED = "fm21.retokenized_modalities"  # ... and that replaces them

log = logging.getLogger("fm21")


class TokenizeActor:
    """Ray actor body: loads every tokenizer once, then tokenizes whole labels.lance
    fragments (:meth:`tokenize_unit`) in batches of label rows (:meth:`__call__`)."""

    def __init__(self, specs: dict[str, dict], tokenizers_dir: str, cfg: dict, schema: pa.Schema,
                 *, labels_uri: str = "", uri: str = "", features: dict[str, dict] | None = None) -> None:
        import torch

        from fm21.tokenize.checkpoint import load_tokenizer
        from fm21.tokenize.text import TextTokenizer

        torch.set_grad_enabled(False)
        self.specs = {n: ModalitySpec(**{**s, "label_columns": tuple(s["label_columns"])}) for n, s in specs.items()}
        self.cfg = TokensConfig.model_validate(cfg)
        self.schema = schema
        root = fs.as_location(tokenizers_dir)  # a local path or a URI (s3:// workdir)
        # every family's tokenizer of these modalities; an embedded one the stage had no data for is absent
        self.tokenizers = {n: load_tokenizer(root / n) for n, s in self.specs.items() if trains_tokenizer(s)
                           and (s.embedded_tokenizer is None or (root / n / "config.json").exists())}
        has_text = any(s.kind == "sequence" for s in self.specs.values())
        self.text = TextTokenizer.load(root / TEXT_DIR) if has_text else None
        self.labels_uri, self.uri = labels_uri, uri
        self.columns = sorted({"key", "rgb", *(c for s in self.specs.values() for c in s.label_columns)})
        # Feature specialists (by name) for feature maps labels.lance does not hold.
        self.features = _load_feature_specialists(features or {})
        self.feature_columns = {s.label_columns[0] for s in self.specs.values() if s.kind == "feature_tokens"}

    def _read_columns(self, dataset) -> list[str]:
        return [c for c in self.columns if c in dataset.schema.names]  # a feature map may not be stored

    def tokenize_unit(self, unit: dict[str, Any]) -> dict[str, Any]:
        """One labels fragment (at the planned labels version) -> its tokens fragment."""
        table = self._tokenize_fragment(unit["fragment"], unit["version"], point="tokens.in_unit")
        fragments = unit_store.write_unit(table, self.uri, self.schema)
        crash_point("tokens.after_write")
        return unit_store.UnitResult(unit["id"], fragments, table.num_rows).to_dict()

    def _tokenize_fragment(self, fragment_id: int, version: int, *, point: str) -> pa.Table:
        """Every row of one labels fragment, in batches of ``batch_size`` label rows."""
        import lance

        labels = lance.dataset(self.labels_uri, version=version)
        fragment = labels.get_fragment(fragment_id)
        tables = []
        for batch in fragment.to_batches(columns=self._read_columns(labels), batch_size=self.cfg.batch_size):
            tables.append(self(pa.Table.from_batches([batch])))
            crash_point(point)
        return pa.concat_tables(tables) if tables else self.schema.empty_table()

    def write_columns(self, task: dict[str, Any]) -> dict[str, Any]:
        """This actor's modalities as new data files of one committed tokens fragment.

        The fragment's rows came from one labels fragment (its unit): those label rows are
        tokenized again for this actor's modalities only, with the same batches and crops as
        a full build, and matched to the fragment's rows by (key, crop). Modalities in
        ``task["added"]`` become one new data file with new fields
        (``LanceFragment.merge_columns``); those in ``task["replaced"]`` one new data file
        under their existing field ids (:func:`_replace_columns`). Returns the fragment's
        new metadata and, when columns were added, the merged Lance schema. Nothing is
        committed here.
        """
        import lance

        new = self._tokenize_fragment(task["labels_fragment"], task["labels_version"], point="tokens.in_add")
        dataset = lance.dataset(self.uri, version=task["version"])
        fragment = dataset.get_fragment(task["fragment"])
        where = {(k, c): i for i, (k, c) in enumerate(zip(new.column("key").to_pylist(), new.column("crop").to_pylist()))}

        def rows(keys: pa.Array, crops: pa.Array) -> pa.Array:
            return pa.array([where[(k, c)] for k, c in zip(keys.to_pylist(), crops.to_pylist())], type=pa.int64())

        metadata, schema = fragment.metadata, None
        added = [f.name for f in self.schema if f.name in task["added"]]
        if added:
            values = new.select(added)

            def column_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
                # Stateless (Lance may call it more than once per batch): rows found by (key, crop).
                part = values.take(rows(batch.column("key"), batch.column("crop")))
                return pa.RecordBatch.from_arrays([part.column(c).combine_chunks() for c in added], schema=values.schema)

            metadata, schema = fragment.merge_columns(column_batch, columns=["key", "crop"])
            crash_point("tokens.after_add")
        replaced = [f.name for f in self.schema if f.name in task["replaced"]]
        if replaced:
            if fragment.metadata.deletion_file is not None:  # the new file holds one value per physical row
                raise RuntimeError(f"{self.uri}: fragment {task['fragment']} has deleted rows; rebuild the store")
            order = fragment.to_table(columns=["key", "crop"])  # the fragment's physical row order
            values = new.select(replaced).take(rows(order.column("key"), order.column("crop")))
            metadata = _replace_columns(metadata, values, dataset)
            crash_point("tokens.after_replace")
        return {"fragment": json.dumps(metadata.to_json()), "schema": schema}

    def __call__(self, table: pa.Table) -> pa.Table:
        from fm21.pseudolabel.specialists.feature import decode_feature_maps

        batch = {name: (decode_feature_maps if name in self.feature_columns else store.column_to_python)(
            table.column(name), table.schema.field(name)) for name in table.column_names}
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
        if spec.kind == "feature_tokens":
            maps = self._feature_maps(spec, batch, crops, index=index)
            return list(self.tokenizers[name].encode_labels(maps).astype(np.int16))  # (B, N)
        if spec.kind == "global_tokens":
            vectors = self._global_vectors(spec, batch, crops, index=index)
            return list(self.tokenizers[name].encode_labels(vectors).astype(np.int16))  # (B, N)
        if spec.kind == "embedding":
            return self._embeddings(spec, batch[column])
        if spec.is_image_like:
            maps = np.stack([  # resized and flipped as the label kind needs
                apply_crop(m, c, kind=spec.label_kind, out_size=spec.resolution) for m, c in zip(batch[column], crops)
            ])
            if spec.kind == "pixels":
                return list(maps.reshape(len(maps), -1))
            return list(self.tokenizers[name].encode_labels(maps).astype(np.int16))  # (B, N)
        out = []
        encoder = self._encoder(name, spec) if spec.embedded_tokenizer is not None else None
        for i, crop in enumerate(crops):
            row = {c: batch[c][i] for c in spec.label_columns}
            if encoder is not None:
                row[ENCODER_KEYS[spec.serialization]] = encoder
            rng = np.random.default_rng([self.cfg.seed, index, key_hash(batch["key"][i])])
            text = serialize(spec.serialization, row, crop, size=size, rng=rng)
            ids = self._ids(text)
            if spec.label_kind == "palette" and ids is not None:
                _check_palettes(ids, len(text))
            out.append(ids)
        return out

    def _feature_maps(self, spec: ModalitySpec, batch: dict, crops: list, *, index: int) -> np.ndarray:
        """``(B, g, g, C)`` feature maps of one crop: stored ones where labels.lance holds
        the features of exactly this crop (crop 0, the full image, at the token grid);
        the others computed here by the feature specialist on the rgb crop."""
        column, grid = spec.label_columns[0], spec.label_size
        stored = batch.get(column)
        out: list = [None] * len(crops)
        if index == 0 and stored is not None:
            out = [m if m is not None and m.shape[:2] == (grid, grid) else None for m in stored]
        todo = [i for i, m in enumerate(out) if m is None]
        if todo:
            specialist = self.features.get(spec.specialist)
            if specialist is None:
                raise ValueError(f"{spec.name}: {len(todo)} rows have no stored {column!r} feature map and specialist "
                                 f"{spec.specialist!r} is not a feature specialist the tokens job can run")
            rgb = np.stack([apply_crop(batch["rgb"][i], crops[i], kind="rgb", out_size=spec.resolution) for i in todo])
            computed = specialist.features(rgb)[column]  # (b, g, g, C) in the stored dtype
            for j, i in enumerate(todo):
                out[i] = computed[j]
        return np.stack(out)

    def _global_vectors(self, spec: ModalitySpec, batch: dict, crops: list, *, index: int) -> np.ndarray:
        """``(B, C)`` global embeddings of one crop: the stored ones are of the full image
        (crop 0); other crops need the feature specialist to embed the rgb crop."""
        column = spec.label_columns[0]
        if index == 0 and all(v is not None for v in batch[column]):
            return np.stack(batch[column])
        specialist = self.features.get(spec.specialist)
        if specialist is None:
            raise ValueError(f"{spec.name}: crop {index} needs {column!r} of the crop, and specialist "
                             f"{spec.specialist!r} is not a feature specialist the tokens job can run")
        rgb = np.stack([apply_crop(m, c, kind="rgb", out_size=spec.resolution) for m, c in zip(batch["rgb"], crops)])
        if column not in getattr(specialist, "global_columns", ()):  # a FeatureNetwork's (B, C) outputs
            raise ValueError(f"{spec.name}: specialist {spec.specialist!r} does not compute {column!r} from pixels")
        return np.asarray(specialist.run(rgb, (column,))[column])  # (B, C) in the stored dtype

    def _encoder(self, name: str, spec: ModalitySpec):
        """The embedded tokenizer's label-space encoder, ``(n, ...) -> (n, num_tokens)`` int64 ids."""
        tok = self.tokenizers.get(name)
        if tok is None:
            def missing(labels: np.ndarray) -> np.ndarray:
                raise ValueError(f"{name}: a row has {spec.label_kind} to serialise, but the tokenizers stage "
                                 f"trained no {spec.embedded_tokenizer} tokenizer (labels.lance had none then): "
                                 "rerun the tokenizers stage")
            return missing
        return lambda labels: tok.encode_labels(np.asarray(labels)).astype(np.int64)

    def _embeddings(self, spec: ModalitySpec, values: list) -> list:
        """Stored vector sequences (``L`` vectors of ``embedding_dim``) as they are, per row."""
        for v in values:
            if v is not None and len(v) and len(v[0]) != spec.embedding_dim:
                raise ValueError(f"{spec.name}: stored vectors are {len(v[0])} wide, the spec's embedding_dim is "
                                 f"{spec.embedding_dim}: set modalities.embedding_dim to the {spec.specialist} "
                                 "specialist's width, or configure the specialist to this one")
        return list(values)

    def _ids(self, text: str | list[str] | None) -> list[int] | None:
        if text is None:
            return None
        if isinstance(text, list):  # metadata chunks (one field = two ids), or the palettes of every k
            return [i for chunk in text for i in self.text.encode(chunk)]
        return self.text.encode(text)


def _check_palettes(ids: list[int], count: int) -> None:
    """The stored palettes must split back into ``count`` (k = 1..count) for the loader to
    draw k per load: each ``vN=k`` one id of the text tokenizer (``split_palettes``)."""
    from fm21.tokenize.serialize import split_palettes

    if len(split_palettes(ids)) != count:
        raise ValueError(f"color_palette: {count} palettes encoded to {len(ids)} ids, which do not split into "
                         "palettes of 1 + 3k ids: the text tokenizer must encode each vN=k as one token")


def _load_feature_specialists(features: dict[str, dict]) -> dict[str, Any]:
    if not features:
        return {}
    from fm21.config import SpecialistConfig
    from fm21.pseudolabel.worker import build_specialist

    out = {}
    for name, f in features.items():
        out[name] = build_specialist(name, SpecialistConfig.model_validate(f["cfg"]), image_size=int(f["image_size"]))
        out[name].load()
    return out


def feature_specialists(specs: dict[str, ModalitySpec], ctx) -> dict[str, dict]:
    """The feature specialists the tokens job may run, configured as the pseudolabel run
    that made labels.lance (its manifest's config), so recomputed features are the ones
    it would have stored."""
    from fm21.pseudolabel.specialists import SPECIALISTS
    from fm21.pseudolabel.specialists.feature import FeatureMapSpecialist
    from fm21.store.manifest import read_manifest

    names = sorted({s.specialist for s in specs.values() if s.kind in ("feature_tokens", "global_tokens")})
    names = [n for n in names if n in SPECIALISTS and issubclass(SPECIALISTS[n], FeatureMapSpecialist)]
    if not names:
        return {}
    pseudolabel = (read_manifest(ctx.workdir.manifest("pseudolabel")) or {}).get("config", {}).get("pseudolabel", {})
    ingest = read_manifest(ctx.workdir.manifest("ingest")) or {}
    image_size = int(ingest.get("config", {}).get("ingest", {}).get("image_size", 0) or 0)
    return {n: {"cfg": (pseudolabel.get("specialists") or {}).get(n, {}), "image_size": image_size} for n in names}


def _fingerprints(tokenizers_dir: Path, specs: dict[str, ModalitySpec]) -> dict[str, str]:
    """Per modality, the fingerprint of what tokenizes it: its tokenizer, the text tokenizer,
    or for an embedding sequence ``<text>+<embedded>`` (``none``: none was trained)."""
    def fingerprint(folder) -> str:
        return json.loads((folder / "config.json").read_text())["fingerprint"]

    out = {}
    for name, spec in specs.items():
        if spec.kind in ("pixels", "embedding"):
            continue
        if spec.kind != "sequence":
            out[name] = fingerprint(tokenizers_dir / name)
            continue
        out[name] = fingerprint(tokenizers_dir / TEXT_DIR)
        if spec.embedded_tokenizer is not None:
            folder = tokenizers_dir / name
            out[name] += "+" + (fingerprint(folder) if (folder / "config.json").exists() else "none")
    return out


def run_tokens(cfg: TokensConfig, ctx) -> dict:
    specs = ctx.specs
    uri, labels_uri = ctx.workdir.tokens_uri, ctx.workdir.labels_uri
    fps = _fingerprints(ctx.workdir.tokenizers_dir, specs)
    labels_meta = store.store_metadata(labels_uri)
    # The store's rows are the labels store's keys x crops: its identity is the ingest it
    # labelled, not the pseudolabel stage fingerprint (which moves with the modality set).
    labels_fp = labels_meta.get("ingest_fingerprint", "")
    layout = {"num_crops": cfg.num_crops, "min_crop_scale": cfg.min_crop_scale, "val_fraction": cfg.val_fraction,
              "seed": cfg.seed}
    inputs = {n: fingerprint_of({"spec": dataclasses.asdict(s), "tokenizer": fps.get(n),
                                 "labels": label_inputs(labels_meta, s)}) for n, s in specs.items()}
    schema = token_store.tokens_schema(specs, tokenizers=fps, labels_fp=labels_fp, layout=layout, inputs=inputs)
    plan = plan_store(uri, schema)
    if plan.rebuild:
        log.info("tokens: rebuilding %s: %s", uri, plan.rebuild)
        fs.remove_tree(uri)
    records = unit_store.read_records(uri)
    if unit_store.drop_if_unrecorded(uri, records):
        records, plan = unit_store.Records({}, {}), Plan([], [], plan.rebuild)
    unit_store.ensure_store(uri, schema)
    labels = store.open_dataset(labels_uri)
    if plan.added or plan.retokenized:
        _write_columns(cfg, ctx, uri, plan, schema=schema, records=records, labels_version=labels.version)
    done = records.units
    # Unit = one labels fragment, read at this pinned version; fragment ids are stable
    # under Append and Merge, so the unit id names the same rows on every rerun.
    units = [{"id": f"labels-fragment-{f.fragment_id}", "fragment": f.fragment_id, "version": labels.version}
             for f in labels.get_fragments() if f"labels-fragment-{f.fragment_id}" not in done]
    counts = {"units": 0, "rows": 0, "failed": 0, "commits": 0, "nodes": 0}
    if units:
        # Fragments are written in the store's own schema: after a column add its field
        # order (and ids) differ from ``schema``'s.
        actors = _actors(cfg, ctx, schema=store.open_dataset(uri).schema, specs=specs)
        try:
            counts = unit_store.run_units(actors, lambda a, u: a.tokenize_unit.remote(u), units, uri=uri,
                                          units_per_commit=cfg.units_per_commit, stage="tokens")
        finally:
            _release(actors)
    return {**_summary(uri, num_new=counts["rows"] // max(cfg.num_crops, 1)), "new_units": counts["units"],
            "commits": counts["commits"], "nodes": counts["nodes"], "added_modalities": plan.added,
            "retokenized_modalities": plan.retokenized, "rebuilt": plan.rebuild}


class Plan(NamedTuple):
    """What an existing store needs to become the run's: columns to add, columns to
    tokenize again, or the reason to rebuild it whole (None: keep or extend it)."""

    added: list[str]
    retokenized: list[str]
    rebuild: str | None


def plan_store(uri, schema: pa.Schema) -> Plan:
    """Compare the store's schema metadata with ``schema``'s. Columns are added or
    re-tokenized only when every row stays (same labels, same crop layout) and no column
    goes; a re-tokenized column must keep its Arrow type (it keeps its Lance field id)."""
    if not unit_store.exists(uri):
        return Plan([], [], None)
    have = token_store.read_store_metadata(uri)
    want = token_store.read_schema_metadata(schema)
    stored = store.open_dataset(uri).schema
    if have["labels_fingerprint"] != want["labels_fingerprint"]:
        return Plan([], [], "made from other labels (ingest fingerprint)")
    if have["layout"] != want["layout"]:
        return Plan([], [], f"crop layout {have['layout']} != {want['layout']}")
    removed = [n for n in have["specs"] if n not in want["specs"]]
    if removed:
        return Plan([], [], f"modalities removed: {removed}")
    missing = [n for n in have["specs"] if n not in stored.names]
    if missing:
        return Plan([], [], f"columns {missing} missing")
    added = [n for n in want["specs"] if n not in have["specs"]]
    if any(n in stored.names for n in added):
        return Plan([], [], f"columns {[n for n in added if n in stored.names]} exist without their specs")
    changed = [n for n in have["specs"] if have["inputs"].get(n) != want["inputs"][n]]
    retyped = [n for n in changed if not stored.field(n).equals(schema.field(n), check_metadata=True)]
    if retyped:
        return Plan([], [], f"column type changed: {retyped}")
    return Plan(added, changed, None)


def _write_columns(cfg: TokensConfig, ctx, uri, plan: Plan, *, schema: pa.Schema, records: unit_store.Records,
                   labels_version: int) -> None:
    """The columns of ``plan.added`` and ``plan.retokenized`` for every committed fragment,
    committed as one Merge whose schema carries ``schema``'s metadata (all specs and
    fingerprints): a kill before the commit leaves the store as it was, old columns and
    old fingerprints (the files written become orphans); after it, new columns and new
    fingerprints."""
    import lance
    from lance.fragment import FragmentMetadata
    from ray.util import ActorPool

    ds = store.open_dataset(uri)
    metadata = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    fragments = ds.get_fragments()
    if not fragments:  # nothing tokenized yet: start the store over with the full schema
        lance.write_dataset(schema.empty_table(), str(uri), schema=schema, mode="overwrite")
        return
    unit_of = records.unit_of_file()
    tasks = [{"fragment": f.fragment_id, "version": ds.version, "labels_version": labels_version,
              "labels_fragment": int(unit_of[f.data_files()[0].path].rsplit("-", 1)[1]),
              "added": plan.added, "replaced": plan.retokenized} for f in fragments]
    specs = {n: ctx.specs[n] for n in (*plan.retokenized, *plan.added)}
    # Re-tokenized columns are written as the store's fields (same ids); plan_store checked
    # that they equal the run's.
    columns_schema = pa.schema([*(schema.field(n) for n in ("key", "crop", "split")),
                                *(ds.schema.field(n) for n in plan.retokenized), *(schema.field(n) for n in plan.added)])
    actors = _actors(cfg, ctx, schema=columns_schema, specs=specs)
    try:
        results = list(tracked(ActorPool(actors).map_unordered(lambda a, t: a.write_columns.remote(t), tasks),
                               "tokens-columns", unit="fragment", total=len(tasks)))
    finally:
        _release(actors)
    merged = sorted((FragmentMetadata.from_json(r["fragment"]) for r in results), key=lambda f: f.id)
    lance_schema = results[0]["schema"] if plan.added else ds.lance_schema
    op = lance.LanceOperation.Merge(merged, _with_metadata(lance_schema, metadata))
    crash_point("tokens.add_commit")
    props = {PROP_ADDED: json.dumps(plan.added), PROP_RETOKENIZED: json.dumps(plan.retokenized)}
    lance.LanceDataset.commit(str(uri), lance.Transaction(ds.version, op, transaction_properties=props))
    log.info("tokens: added columns %s, re-tokenized columns %s, in %d fragments", plan.added, plan.retokenized,
             len(merged))


def _replace_columns(metadata, values: pa.Table, dataset):
    """``metadata`` (a fragment's of ``dataset``) with ``values``' columns (one value per row,
    in the fragment's row order) in one new data file under the dataset's field ids. The
    fragment's other data files keep their paths and bytes; the replaced fields are
    tombstoned in them (field id -2, the Lance format's mark for "this field's data now
    lives in another file"), so reads take them from the new file. A file left with only
    tombstones is dropped from the fragment by Lance at the commit."""
    from lance.fragment import FragmentMetadata, write_fragments
    from lance.schema import LanceSchema

    out = metadata.to_json()
    if out["physical_rows"] != values.num_rows:
        raise RuntimeError(f"fragment {out['id']}: {values.num_rows} values for {out['physical_rows']} rows")
    # Written as a dataset of its own ("overwrite": an append would have to hold the store's
    # non-nullable key columns), numbered from 0, then renumbered to the store's ids: the
    # same fields in the same pre-order (the types are the store's, plan_store checked).
    written = write_fragments(values, dataset.uri, schema=values.schema, mode="overwrite",
                              data_storage_version=dataset.data_storage_version, max_rows_per_file=1 << 30)
    [file] = [f for w in written for f in w.to_json()["files"]]
    fresh = LanceSchema.from_pyarrow(values.schema)
    ids = {a: b for name in values.column_names
           for a, b in zip(_field_ids(fresh.field(name)), _field_ids(dataset.lance_schema.field(name)), strict=True)}
    file["fields"] = [ids[i] for i in file["fields"]]
    for data_file in out["files"]:
        data_file["fields"] = [-2 if i in ids.values() else i for i in data_file["fields"]]
    out["files"].append(file)
    return FragmentMetadata.from_json(json.dumps(out))


def _field_ids(field) -> list[int]:
    """A Lance field's id and its children's, in pre-order."""
    return [field.id(), *(i for child in field.children() for i in _field_ids(child))]


def _with_metadata(schema, metadata: dict[str, str]):
    """The merged Lance schema with the store's new schema metadata. ``from_pyarrow``
    numbers fields in order; checked against the merged schema's field ids, which the
    data files refer to (a store whose columns were dropped would not match)."""
    from lance.schema import LanceSchema

    out = LanceSchema.from_pyarrow(schema.to_pyarrow().with_metadata(metadata))
    ids = [(f.name(), f.id()) for f in schema.fields()]
    if [(f.name(), f.id()) for f in out.fields()] != ids:
        raise RuntimeError(f"tokens: cannot carry schema metadata over field ids {ids}")
    return out


def _actors(cfg: TokensConfig, ctx, *, schema: pa.Schema, specs: dict[str, ModalitySpec]) -> list:
    import ray

    from fm21.faults import arm, worker_env
    from fm21.ray_runtime import ensure_ray

    arm()
    ensure_ray(ctx.ray)
    env = worker_env()
    options = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, **({"runtime_env": {"env_vars": env}} if env else {})}
    remote = ray.remote(TokenizeActor).options(**options)
    features = feature_specialists(specs, ctx)
    payload = {n: dataclasses.asdict(s) for n, s in specs.items()}
    return [remote.remote(payload, str(ctx.workdir.tokenizers_dir), cfg.model_dump(), schema,
                          labels_uri=str(ctx.workdir.labels_uri), uri=str(ctx.workdir.tokens_uri), features=features)
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
