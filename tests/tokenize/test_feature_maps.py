"""Feature maps only for the tokenizer sample: labels.lance keeps a feature specialist's
patch features for the rows chosen by key hash (``pseudolabel.feature_maps``), and the
tokens job computes the others on the fly from the rgb crops. Tested with a small
deterministic feature specialist and a modality spec defined here (no real feature
specialist exists yet)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from fm21.config import ConfigError, FeatureMapsConfig, SpecialistConfig, TokensConfig, VQTokenizerConfig, load_config
from fm21.ingest.units import write_synthetic_shard
from fm21.modalities import ModalitySpec
from fm21.pseudolabel import specialists as registry
from fm21.pseudolabel.specialists.feature import FeatureMapSpecialist, in_feature_sample, sample_fraction
from fm21.pseudolabel.worker import LabelWorker
from fm21.store import units as unit_store
from fm21.store.tokens import tokens_schema
from fm21.tokenize.apply import TokenizeActor
from fm21.tokenize.checkpoint import save_tokenizer
from fm21.tokenize.crops import is_val_key
from fm21.tokenize.stage import stored_keys, training_maps
from fm21.tokenize.train_vq import train_vq_tokenizer

ROOT = Path(__file__).resolve().parents[2]
SIZE, PATCH, CHANNELS = 32, 8, 8


class ToyFeatures(FeatureMapSpecialist):
    """Patch means and spreads of the pixels through a fixed projection: a deterministic,
    per-sample stand-in for CLIP-like patch features, plus a global embedding."""

    name = "toy_features"
    feature_maps = ("toy_feat",)
    calls: list[int] = []  # rows computed, per call (to see which path ran)

    def columns(self) -> list[pa.Field]:
        g = self.image_size // PATCH
        return [self.feature_map_field("toy_feat", g, CHANNELS),
                self.field("toy_global", pa.list_(pa.float16(), CHANNELS), shape=[CHANNELS], dtype="float16")]

    def features(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        ToyFeatures.calls.append(len(rgb))
        b, r = rgb.shape[:2]
        g = r // PATCH
        x = rgb.astype(np.float32).reshape(b, g, PATCH, g, PATCH, 3) / 255.0
        stats = np.concatenate([x.mean(axis=(2, 4)), x.std(axis=(2, 4))], axis=-1)  # (B, g, g, 6)
        proj = np.random.default_rng(7).normal(size=(6, CHANNELS)).astype(np.float32)
        return {"toy_feat": np.tanh(stats @ proj).astype(np.float16)}

    def __call__(self, batch):
        feats = self.features(np.asarray(batch["rgb"]))["toy_feat"]
        return {"toy_feat": [m.reshape(-1) for m in feats],
                "toy_global": [m.mean(axis=(0, 1)).astype(np.float16) for m in feats]}


SPEC = ModalitySpec(name="tok_toy", kind="feature_tokens", specialist="toy_features", label_columns=("toy_feat",),
                    label_kind="feature", tokenizer="vqvae", vocab_size=16, resolution=SIZE, patch_size=PATCH,
                    num_channels=CHANNELS)


def test_feature_maps_config_is_validated(tmp_path):
    assert FeatureMapsConfig().store == "all"
    cfg = load_config(ROOT / "flows.yaml", overrides=["pseudolabel.feature_maps.store=sample",
                                                      "pseudolabel.feature_maps.sample_size=100"])
    assert cfg.pseudolabel.feature_maps == FeatureMapsConfig(store="sample", sample_size=100)
    for bad in ("pseudolabel.feature_maps.store=some", "pseudolabel.feature_maps.sample_size=0",
                "pseudolabel.feature_maps.size=3"):
        with pytest.raises(ConfigError, match="feature_maps"):
            load_config(ROOT / "flows.yaml", overrides=[bad])


def test_the_sample_is_chosen_by_key_hash_not_the_validation_split():
    keys = [f"{i:08d}" for i in range(4000)]
    fraction = sample_fraction("sample", 1000, len(keys))
    chosen = [k for k in keys if in_feature_sample(k, fraction)]
    assert 900 < len(chosen) < 1100 and chosen == [k for k in keys if in_feature_sample(k, fraction)]
    val = [k for k in keys if is_val_key(k, 0.25)]
    assert 0.15 < len(set(chosen) & set(val)) / len(val) < 0.35  # independent of the split
    assert sample_fraction("all", 10, 4000) == 1.0 and sample_fraction("none", 10, 4000) == 0.0
    assert sample_fraction("sample", 10_000, 4000) == 1.0


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two shards labelled by image + toy features into three labels stores: feature maps
    for all rows, for a ~40 % sample, and none stored at all (no toy specialist)."""
    mp = pytest.MonkeyPatch()
    mp.setitem(registry.SPECIALISTS, "toy_features", ToyFeatures)
    root = tmp_path_factory.mktemp("features")
    icfg = load_config(ROOT / "flows.yaml", recipe=ROOT / "configs" / "tiny.yaml",
                       overrides=["ingest.samples_per_shard=24", "ingest.synthetic.num_samples=48"]).ingest
    (root / "shards").mkdir()
    for i in range(2):
        write_synthetic_shard(icfg.model_dump(mode="json"), seed=0, index=i, directory=str(root / "shards"))
    out = {}
    for name, names, fraction in [("all", ["image", "toy_features"], 1.0), ("sample", ["image", "toy_features"], 0.4),
                                  ("unstored", ["image"], 1.0)]:
        uri = root / f"{name}.lance"
        from fm21.pseudolabel.job import _build, labels_schema

        schema = labels_schema({n: _build(n, None, image_size=SIZE) for n in names}, ingest_fp="x")
        unit_store.ensure_store(uri, schema)
        worker = LabelWorker(names, {n: SpecialistConfig().model_dump() for n in names}, image_size=SIZE,
                             uri=str(uri), schema=schema, feature_fraction=fraction)
        results = [worker.label_unit({"id": p.name, "path": str(p)}) for p in sorted((root / "shards").glob("*.tar"))]
        unit_store.commit_units(uri, [unit_store.UnitResult(**r) for r in results], stage="test")
        out[name] = uri
    yield root, out
    mp.undo()


def _column(uri, name):
    table = lance.dataset(str(uri)).to_table(columns=["key", name])
    return dict(zip(table.column("key").to_pylist(), table.column(name).to_pylist()))


def test_only_the_sample_keeps_feature_maps_and_globals_are_always_stored(stores):
    _, uris = stores
    full, sample = _column(uris["all"], "toy_feat"), _column(uris["sample"], "toy_feat")
    kept = {k for k, v in sample.items() if v is not None}
    assert kept == {k for k in sample if in_feature_sample(k, 0.4)} and 0 < len(kept) < 48
    assert all(sample[k] == full[k] for k in kept)  # the sample's maps are the full store's
    assert all(v is not None for v in _column(uris["sample"], "toy_global").values())
    ds = lance.dataset(str(uris["sample"]))
    assert ds.count_rows(filter="toy_feat IS NOT NULL") == len(kept)
    # Null rows of a variable-size list take no space (a null fixed-size list would).
    from fm21.store.stats import label_store_stats

    on_disk = {n: label_store_stats(uris[n])["columns"]["toy_feat"]["bytes_per_sample"] for n in ("all", "sample")}
    assert on_disk["sample"] < (len(kept) / 48 + 0.15) * on_disk["all"], on_disk


@pytest.fixture(scope="module")
def tokenizer_dir(stores):
    """A feature tokenizer (patch 1 on the 4x4 feature grid) trained on the stored sample."""
    root, uris = stores
    keys = stored_keys(uris["sample"], "toy_feat", 64, seed=0)
    maps = training_maps(uris["sample"], "toy_feat", keys, out_size=SPEC.label_size, label_kind="feature",
                         feature=True)
    assert maps.shape == (len(keys), 4, 4, CHANNELS) and maps.dtype == np.float16
    tok, metrics = train_vq_tokenizer(SPEC, VQTokenizerConfig(hidden_dim=16, num_layers=1, steps=10, batch_size=8),
                                      maps[4:], maps[:4], seed=0)
    assert np.isfinite(metrics["recon_loss"]) and tok.config.patch_size == 1
    save_tokenizer(tok, root / "tokenizers" / SPEC.name)
    return root / "tokenizers"


@pytest.fixture(autouse=True)
def _grad_mode():
    """TokenizeActor turns autograd off for its (actor) process; restore it for the next tests."""
    import torch

    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


def _tokens(uri, tokenizers, *, features: bool) -> pa.Table:
    specs = {SPEC.name: SPEC}
    schema = tokens_schema(specs, tokenizers={}, labels_fp="x")
    actor = TokenizeActor({n: dataclasses.asdict(s) for n, s in specs.items()}, str(tokenizers),
                          TokensConfig(num_crops=2, batch_size=16).model_dump(), schema, labels_uri=str(uri),
                          features={"toy_features": {"cfg": {}, "image_size": SIZE}} if features else None)
    ds = lance.dataset(str(uri))
    tables = [actor._tokenize_fragment(f.fragment_id, ds.version, point="test") for f in ds.get_fragments()]
    return pa.concat_tables(tables).sort_by([("key", "ascending"), ("crop", "ascending")])


def test_tokens_from_on_the_fly_features_equal_tokens_from_stored_features(stores, tokenizer_dir, monkeypatch):
    monkeypatch.setitem(registry.SPECIALISTS, "toy_features", ToyFeatures)
    _, uris = stores
    ToyFeatures.calls.clear()
    stored = _tokens(uris["all"], tokenizer_dir, features=True)
    from_all = sum(ToyFeatures.calls)
    ToyFeatures.calls.clear()
    sampled = _tokens(uris["sample"], tokenizer_dir, features=True)
    from_sample = sum(ToyFeatures.calls)
    ToyFeatures.calls.clear()
    unstored = _tokens(uris["unstored"], tokenizer_dir, features=True)
    assert stored.num_rows == 96 and stored.column("tok_toy").null_count == 0
    ids = np.array(stored.column("tok_toy").to_pylist())
    assert ids.shape == (96, 16) and len(np.unique(ids)) > 1
    # crop 0 of a stored row uses the stored map; crop 1 (a random crop) is always computed
    kept = sum(v is not None for v in _column(uris["sample"], "toy_feat").values())
    assert from_all == 48 and from_sample == 96 - kept and sum(ToyFeatures.calls) == 96
    assert sampled.equals(stored) and unstored.equals(stored)


def test_a_missing_feature_map_without_its_specialist_is_an_error(stores, tokenizer_dir):
    _, uris = stores
    with pytest.raises(ValueError, match="no stored 'toy_feat' feature map"):
        _tokens(uris["sample"], tokenizer_dir, features=False)
