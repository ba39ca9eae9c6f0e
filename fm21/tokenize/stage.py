"""The tokenizers stage: train every enabled modality's tokenizer on a sample of labels.lance.

Image-like modalities get a VQ tokenizer each (``tokenizers/<modality>/``: config.json,
model.safetensors, metrics.json, recon.png), trained as one Ray task per modality with
the CPUs/GPUs of ``tokenizers.num_cpus``/``num_gpus``: the worker reads its label maps
from labels.lance and writes its checkpoint folder itself; the driver only plans (the
sampled keys) and gathers the small reports. All sequence modalities share one
WordPiece tokenizer (``tokenizers/text/``) learned on their serialisations.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from fm21.config import TokenizersConfig, VQTokenizerConfig
from fm21.store import labels as store
from fm21.tokenize.crops import Crop, apply_crop
from fm21.tokenize.sequences import corpus_of

log = logging.getLogger("fm21")

TEXT_DIR = "text"


def sample_keys(uri, num: int, *, seed: int) -> list[str]:
    keys = sorted(store.committed_keys(uri))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(keys, size=min(num, len(keys)), replace=False).tolist())


def training_maps(uri, column: str, keys: list[str], *, out_size: int) -> np.ndarray:
    """Label maps of ``keys`` at the tokenizer's resolution (crop 0: the full image)."""
    maps = store.read_maps(uri, [column], keys=keys)[column]  # (B, S, S[, C])
    size = maps.shape[1]
    full = Crop(0, 0, size, size, False)
    return np.stack([apply_crop(m, full, kind=column, out_size=out_size) for m in maps])


def _train_image(name: str, spec, vcfg: VQTokenizerConfig, uri, keys: list[str], out_dir, seed: int,
                 threads: int) -> dict:
    """One tokenizer, start to finish, on a worker: read maps, train, save, report."""
    import torch

    from fm21.tokenize.checkpoint import save_tokenizer
    from fm21.tokenize.train_vq import save_recon_grid, train_vq_tokenizer

    torch.set_num_threads(threads)
    maps = training_maps(uri, spec.label_columns[0], keys, out_size=spec.resolution)
    num_val = max(8, len(maps) // 10)
    train, val = maps[num_val:], maps[:num_val]
    tok, metrics = train_vq_tokenizer(spec, vcfg, train, val, seed=seed)
    fp = save_tokenizer(tok, out_dir / name, metrics=metrics)
    save_recon_grid(tok, val, out_dir / name / "recon.png")
    log.info("tokenizers: %s trained (%s) %s", name, fp, {k: v for k, v in metrics.items() if k != "train"})
    return {"fingerprint": fp, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


def run_tokenizers(cfg: TokenizersConfig, ctx) -> dict:
    from fm21.tokenize.text import train_text_tokenizer

    uri = ctx.workdir.labels_uri
    out_dir = ctx.workdir.tokenizers_dir
    import ray

    from fm21.ray_runtime import ensure_ray

    keys = sample_keys(uri, cfg.train_samples, seed=cfg.seed)
    names = [n for n, s in ctx.specs.items() if s.kind != "pixels" and s.is_image_like]
    # Submitted in the order of ``tokenizers.image`` (then the rest): list the longest
    # first and the tasks pack onto the workers without a long one starting last.
    order = list(cfg.image)
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
    report: dict[str, dict] = {}
    if names:
        ensure_ray(ctx.ray)
        task = ray.remote(_train_image).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
        threads = max(1, int(cfg.num_cpus))
        futures = {n: task.remote(n, ctx.specs[n], cfg.image.get(n, VQTokenizerConfig()), str(uri), keys,
                                  out_dir, cfg.seed, threads) for n in names}
    sequences = [n for n, s in ctx.specs.items() if s.kind == "sequence"]
    if sequences:
        columns = sorted({c for n in sequences for c in ctx.specs[n].label_columns})
        ds = store.open_dataset(uri)
        rows = ds.to_table(columns=columns).to_pylist()
        size = store.field_shape(ds.schema.field("rgb"))[0]
        corpus = corpus_of(rows, sequences, size=size, seed=cfg.seed)
        vocab = ctx.specs[sequences[0]].vocab_size
        text = train_text_tokenizer(corpus, vocab_size=vocab, min_frequency=cfg.text.min_frequency)
        fp = text.save(out_dir / TEXT_DIR)
        report[TEXT_DIR] = {"fingerprint": fp, "vocab_size": text.vocab_size, "corpus_strings": len(corpus),
                            "modalities": sequences}
    if names:  # the text tokenizer trained on the driver meanwhile
        report.update(zip(futures, ray.get(list(futures.values()))))
        for name in names:
            log.info("tokenizers: %s %s", name, report[name])
    (out_dir / "summary.json").write_text(json.dumps(report, indent=2))
    return {"tokenizers": {n: r["fingerprint"] for n, r in report.items()}, "train_samples": len(keys)}
