"""The tokenizers stage: train every enabled modality's tokenizer on a sample of labels.lance.

Image-like modalities get a tokenizer each (``tokenizers/<modality>/``: config.json,
model.safetensors, metrics.json, recon.png), of the family the registry names
(``ModalitySpec.tokenizer``, or the recipe's ``tokenizers.image.<modality>.family``),
trained by that family's module (``fm21.tokenize.families``) as one Ray task per modality with
the CPUs/GPUs of ``tokenizers.num_cpus``/``num_gpus``: the worker reads its label maps
from labels.lance and writes its checkpoint folder itself; the driver only plans (the
sampled keys) and gathers the small reports. All sequence modalities share one
WordPiece tokenizer (``tokenizers/text/``) learned on their serialisations.

A tokenizer is trained only when its inputs changed: each folder records the fingerprint
of what it was trained from (``inputs.json``: spec, training config, seed, sampled keys,
the provenance of the labels it read), and a folder whose record matches is reused. So
enabling one more modality trains only that modality's tokenizer; the others keep their
checkpoints (and fingerprints), and tokens.lance can add the one column
(``fm21.tokenize.apply``).

A feature-map modality (``feature_tokens``) trains on the rows that hold a stored feature
map: with ``pseudolabel.feature_maps.store: sample`` only the feature sample does. A
feature or vector tokenizer reads the width its specialist stores: the registry's
``num_channels`` is the reference network's, a tiny network stores fewer channels.

A sequence whose serialisation embeds a tokenizer's ids (``ModalitySpec.embedded_tokenizer``:
the body-pose Memcodes of ``human_poses``, the mask tokenizer of ``sam_instance``) gets that
tokenizer here too, in ``tokenizers/<modality>/``, with its options under
``tokenizers.image.<modality>``, trained and reused like the others. It trains on every
usable label (each person's SMPL body pose, each instance mask cut to its box) of a sample
drawn among the rows that hold one. When labels.lance holds none (no person or instance in
any image), no row's serialisation needs the ids, so nothing is trained: the folder records
why (``inputs.json``, no ``config.json``), and the tokens stage serialises without it
(``none``); a random-init tokenizer is never used.

Every modality's options go through its family's ``from_spec`` before any work starts, so a
bad value fails at once naming ``tokenizers.image.<modality>.<key>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import logging

import numpy as np

import fm21
from fm21.config import TokenizersConfig
from fm21.progress import progress
from fm21.store import fs
from fm21.store import labels as store
from fm21.store.fs import Location
from fm21.store.manifest import fingerprint_of
from fm21.tokenize.crops import Crop, apply_crop, key_hash
from fm21.tokenize.families import (
    check_installed,
    family_config,
    family_module,
    family_of,
    family_options,
    recipe_options,
    trains_tokenizer,
)
from fm21.tokenize.sequences import corpus_of

log = logging.getLogger("fm21")

TEXT_DIR = "text"
INPUTS_FILE = "inputs.json"  # {"fingerprint": what the folder was trained from, "report": its summary}


def sample_keys(uri, num: int, *, seed: int, where: str | None = None) -> list[str]:
    """``num`` keys of labels.lance (those matching ``where``), sorted: the keys with the
    smallest seeded hash, a uniform sample that does not depend on row order. Keys are
    streamed through a bounded heap, so memory is O(num), not O(rows)."""
    best: list[tuple[int, str]] = []  # max-heap on the hash, as (-hash, key)
    salt = f"tokenizer-sample:{seed}:"
    for batch in store.open_dataset(uri).to_batches(columns=["key"], filter=where, batch_size=65536):
        for key in batch.column("key").to_pylist():
            h = key_hash(salt + key)
            if len(best) < num:
                heapq.heappush(best, (-h, key))
            elif h < -best[0][0]:
                heapq.heapreplace(best, (-h, key))
    return sorted(key for _, key in best)


def stored_keys(uri, column: str, num: int, *, seed: int) -> list[str]:
    """Like :func:`sample_keys`, among the rows whose ``column`` is stored (not null)."""
    keys = sample_keys(uri, num, seed=seed, where=f"{column} IS NOT NULL")
    if not keys:
        raise ValueError(f"{uri}: no row stores {column!r}; a feature-map tokenizer trains on stored feature "
                         "maps (set pseudolabel.feature_maps.store to sample or all)")
    return keys


def listed_keys(uri, column: str, num: int, *, seed: int) -> list[str]:
    """Like :func:`sample_keys`, among the rows whose list ``column`` is not empty (the
    rows with a person, an instance); none when no row has one."""
    return sample_keys(uri, num, seed=seed, where=f"array_length({column}) > 0")


def _pose_vectors(spec, values: list, size: int) -> np.ndarray:
    from fm21.tokenize.memcodes import label_vectors

    return label_vectors(spec, values)  # (P, 207) every person's SMPL body pose


def _instance_masks(spec, values: list, size: int) -> np.ndarray:
    from fm21.tokenize.sam_mask import instance_masks

    return instance_masks(values, size)[0]  # (K, 64, 64) every instance cut to its box


# label kind of a sequence with an embedded tokenizer -> that tokenizer's training labels
# from its label column's values (rows of the sample) at the stored image size
EMBEDDED_LABELS = {"poses": _pose_vectors, "instances": _instance_masks}


def stored_width(spec, schema) -> object:
    """``spec`` with ``num_channels`` of its stored label when a feature or vector label is
    stored at another width than the registry's (a tiny network's features)."""
    if spec.label_kind not in ("feature", "vector"):
        return spec
    shape = store.field_shape(schema.field(spec.label_columns[0]))
    if not shape or shape[-1] == spec.num_channels:
        return spec
    log.info("tokenizers: %s labels are %d wide (the registry's %d: the reference network's)", spec.name,
             shape[-1], spec.num_channels)
    return dataclasses.replace(spec, num_channels=int(shape[-1]))


def sampled_rows(uri, columns: list[str], keys: list[str]) -> list[dict]:
    """The rows of ``keys`` (a sample, O(len(keys))) in key order, streamed: no key list in a
    filter. Key order matters: the corpus draws per row from a seeded generator."""
    wanted, rows = set(keys), []
    for batch in store.open_dataset(uri).to_batches(columns=["key", *columns], batch_size=8192):
        rows += [r for r in batch.to_pylist() if r["key"] in wanted]
    return sorted(rows, key=lambda r: r["key"])  # key order: not the order units were committed


def label_inputs(labels_meta: dict, spec) -> dict:
    """What a modality's labels are made from: the ingest and its specialist's provenance."""
    return {"ingest": labels_meta.get("ingest_fingerprint"),
            "specialist": (labels_meta.get("specialists") or {}).get(spec.specialist)}


def _keys_digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def _reusable(folder: Location, fingerprint: str) -> dict | None:
    """The recorded report of a tokenizer folder trained from exactly these inputs."""
    try:
        record = json.loads((folder / INPUTS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return record["report"] if record.get("fingerprint") == fingerprint else None


def _record(folder: Location, fingerprint: str, report: dict) -> None:
    """Written last: a folder killed while training has no (or a stale-removed) record."""
    fs.write_atomic(folder / INPUTS_FILE, json.dumps({"fingerprint": fingerprint, "report": report}, indent=2) + "\n")


def training_maps(uri, column: str, keys: list[str], *, out_size: int, label_kind: str,
                  feature: bool = False) -> np.ndarray:
    """Labels of ``keys`` as the tokenizer reads them: maps at its resolution (crop 0: the
    full image, resized as ``label_kind`` needs); ``feature``: patch feature maps at the
    token grid; a ``vector`` label kind (one global embedding per image): as stored."""
    if feature:
        from fm21.pseudolabel.specialists.feature import decode_feature_maps

        quoted = ", ".join("'" + k.replace("'", "''") + "'" for k in keys)
        table = store.open_dataset(uri).to_table(columns=[column], filter=f"key IN ({quoted})")
        maps = decode_feature_maps(table.column(column), table.schema.field(column))  # (g, g, C) each
    else:
        maps = store.read_maps(uri, [column], keys=keys)[column]  # (B, S, S[, C]) or (B, C) vectors
    if label_kind == "vector":  # a global embedding: no window to crop
        return np.stack([m for m in maps if m is not None])
    size = maps[0].shape[0]
    full = Crop(0, 0, size, size, False)
    return np.stack([apply_crop(m, full, kind=label_kind, out_size=out_size) for m in maps])


def training_labels(uri, spec, keys: list[str], *, image_size: int) -> np.ndarray:
    """The labels ``spec``'s tokenizer trains on, from the rows of ``keys``."""
    column = spec.label_columns[0]
    if spec.embedded_tokenizer is not None:
        values = [r[column] for r in sampled_rows(uri, [column], keys)]
        labels = EMBEDDED_LABELS[spec.label_kind](spec, values, image_size)
        if len(labels) < 2:
            raise ValueError(f"{spec.name}: the {len(keys)} sampled rows with a non-empty {column!r} hold "
                             f"{len(labels)} {spec.label_kind} label(s) to train the {spec.embedded_tokenizer} "
                             "tokenizer on (2 at least; raise tokenizers.train_samples)")
        return labels
    return training_maps(uri, column, keys, out_size=spec.label_size, label_kind=spec.label_kind,
                         feature=spec.kind == "feature_tokens")


def _split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): a tenth held out, 8 at least, and never more than half."""
    num_val = max(1, min(max(8, len(labels) // 10), len(labels) // 2))
    return labels[num_val:], labels[:num_val]


def _train_tokenizer(name: str, spec, options: dict, uri, keys: list[str], out_dir, seed: int,
                     threads: int, inputs_fp: str = "", image_size: int = 0) -> dict:
    """One tokenizer, start to finish, on a worker: read labels, train through the
    modality's family module, save, report."""
    import torch

    from fm21.tokenize.checkpoint import save_tokenizer

    torch.set_num_threads(threads)
    family = family_module(family_of(spec, options))
    train, val = _split(training_labels(uri, spec, keys, image_size=image_size))
    tok, metrics = family.train(spec, family_options(options), train, val, seed=seed)
    fp = save_tokenizer(tok, out_dir / name, metrics=metrics)
    family.save_recon_png(tok, val, out_dir / name / "recon.png")
    log.info("tokenizers: %s trained (%s, %s) %s", name, family.FAMILY, fp,
             {k: v for k, v in metrics.items() if k != "train"})
    report = {"fingerprint": fp, "family": family.FAMILY,
              **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    if inputs_fp:
        _record(out_dir / name, inputs_fp, report)
    return report


def _plan(name: str, spec, cfg: TokenizersConfig, uri, schema, labels_meta: dict, keys: list[str]) -> dict:
    """What training ``name``'s tokenizer takes: its family and options (checked by the
    family's ``from_spec``), the spec at the stored label width, the training keys, and the
    fingerprint of all that."""
    options = recipe_options(cfg.image.get(name))
    family = check_installed(family_of(spec, options))  # a missing family fails here, on the driver
    spec = stored_width(spec, schema)
    resolved = family_config(spec, options, path=f"tokenizers.image.{name}").to_dict()
    column = spec.label_columns[0]
    if spec.kind in ("feature_tokens", "global_tokens"):
        train_keys = stored_keys(uri, column, cfg.train_samples, seed=cfg.seed)
    elif spec.embedded_tokenizer is not None:
        train_keys = listed_keys(uri, column, cfg.train_samples, seed=cfg.seed)
    else:
        train_keys = keys
    # The effective family stands in the recorded config (a recipe override and the
    # registry's family train the same tokenizer); ``resolved`` carries the family's defaults.
    entry = cfg.image.get(name)
    config = {**(entry.model_dump(mode="json") if entry is not None else {}), "family": family, "resolved": resolved}
    fp = fingerprint_of({"spec": dataclasses.asdict(spec), "config": config, "seed": cfg.seed,
                         "keys": _keys_digest(train_keys), "labels": label_inputs(labels_meta, spec),
                         "fm21": fm21.__version__})
    return {"spec": spec, "options": options, "family": family, "keys": train_keys, "fingerprint": fp}


def run_tokenizers(cfg: TokenizersConfig, ctx) -> dict:
    import ray

    from fm21.faults import worker_env
    from fm21.ray_runtime import ensure_ray
    from fm21.tokenize.text import load_released_text_tokenizer, train_text_tokenizer

    uri = ctx.workdir.labels_uri
    out_dir = ctx.workdir.tokenizers_dir
    labels_meta = store.store_metadata(uri)
    ds = store.open_dataset(uri)
    image_size = store.field_shape(ds.schema.field("rgb"))[0]
    keys = sample_keys(uri, cfg.train_samples, seed=cfg.seed)
    names = [n for n, s in ctx.specs.items() if trains_tokenizer(s)]
    # Submitted in the order of ``tokenizers.image`` (then the rest): list the longest
    # first and the tasks pack onto the workers without a long one starting last.
    order = list(cfg.image)
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
    # Every plan first: a bad option or a missing family fails before any training.
    plans = {n: _plan(n, ctx.specs[n], cfg, uri, ds.schema, labels_meta, keys) for n in names}
    report: dict[str, dict] = {}
    reused: list[str] = []
    skipped: list[str] = []
    jobs: dict[str, dict] = {}
    for name, plan in plans.items():
        if (hit := _reusable(out_dir / name, plan["fingerprint"])) is not None:
            report[name] = hit
            (skipped if hit.get("fingerprint") is None else reused).append(name)
        elif not plan["keys"]:  # an embedded tokenizer with nothing to learn: no row needs its ids
            column = plan["spec"].label_columns[0]
            for stale in (INPUTS_FILE, "config.json", "model.safetensors"):
                (out_dir / name / stale).unlink(missing_ok=True)
            report[name] = {"fingerprint": None, "family": plan["family"],
                            "skipped": f"no row of labels.lance has a non-empty {column!r}: nothing to train on, "
                                       "and no serialisation needs its ids"}
            log.warning("tokenizers: %s: %s", name, report[name]["skipped"])
            _record(out_dir / name, plan["fingerprint"], report[name])
            skipped.append(name)
        else:
            (out_dir / name / INPUTS_FILE).unlink(missing_ok=True)
            jobs[name] = plan
    if jobs:
        ensure_ray(ctx.ray)
        env = worker_env()  # the object store's endpoint and credentials, for an s3:// workdir
        task = ray.remote(_train_tokenizer).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                                                    **({"runtime_env": {"env_vars": env}} if env else {}))
        threads = max(1, int(cfg.num_cpus))
        futures = {n: task.remote(n, p["spec"], p["options"], str(uri), p["keys"], out_dir, cfg.seed, threads,
                                  p["fingerprint"], image_size)
                   for n, p in jobs.items()}
    sequences = [n for n, s in ctx.specs.items() if s.kind == "sequence"]
    if sequences:
        columns = sorted({c for n in sequences for c in ctx.specs[n].label_columns})
        fp = fingerprint_of({"specs": {n: dataclasses.asdict(ctx.specs[n]) for n in sequences},
                             "config": cfg.text.model_dump(mode="json"), "seed": cfg.seed, "rows": ds.count_rows(),
                             "sampler": "tokenizer-sample-v1",
                             # the special-token layout: class names alphabetical, value tokens
                             # single_word (a tokenizer of the earlier layout is rebuilt)
                             "layout": "4m-reference-v1",
                             "labels": {n: label_inputs(labels_meta, ctx.specs[n]) for n in sequences},
                             "fm21": fm21.__version__})
        if (hit := _reusable(out_dir / TEXT_DIR, fp)) is not None:
            report[TEXT_DIR] = hit
            reused.append(TEXT_DIR)
        else:
            (out_dir / TEXT_DIR / INPUTS_FILE).unlink(missing_ok=True)
            vocab = ctx.specs[sequences[0]].vocab_size
            if cfg.text.source == "released":  # the 4M release's vocabulary, as is
                text = load_released_text_tokenizer(cfg.text.path, hub_id=cfg.text.hub_id,
                                                    filename=cfg.text.hub_filename)
                if text.vocab_size != vocab:
                    raise ValueError(f"tokenizers.text: the released tokenizer has {text.vocab_size} ids, the "
                                     f"sequence modalities {vocab} (modalities.text_vocab_size)")
                corpus = []
            else:
                rows = sampled_rows(uri, columns, sample_keys(uri, cfg.text.train_samples, seed=cfg.seed))
                corpus = corpus_of(rows, sequences, size=image_size, seed=cfg.seed)
                text = train_text_tokenizer(corpus, vocab_size=vocab, min_frequency=cfg.text.min_frequency)
            text_fp = text.save(out_dir / TEXT_DIR)
            report[TEXT_DIR] = {"fingerprint": text_fp, "vocab_size": text.vocab_size, "source": cfg.text.source,
                                "corpus_strings": len(corpus), "modalities": sequences}
            _record(out_dir / TEXT_DIR, fp, report[TEXT_DIR])
    if jobs:  # the text tokenizer trained on the driver meanwhile
        name_of = {ref: n for n, ref in futures.items()}
        refs = list(futures.values())
        with progress("tokenizers", total=len(refs), unit="tokenizer") as advance:
            while refs:
                done, refs = ray.wait(refs, num_returns=1)
                report[name_of[done[0]]] = ray.get(done[0])
                advance(1)
        for name in jobs:
            log.info("tokenizers: %s %s", name, report[name])
    if reused:
        log.info("tokenizers: reused %s (inputs unchanged)", reused)
    report = {n: report[n] for n in [*names, TEXT_DIR] if n in report}
    fs.write_atomic(out_dir / "summary.json", json.dumps(report, indent=2))
    return {"tokenizers": {n: r["fingerprint"] for n, r in report.items()}, "train_samples": len(keys),
            "trained": [n for n in report if n not in reused and n not in skipped], "reused": reused,
            "skipped": skipped}
