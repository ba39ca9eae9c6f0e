"""The training stream across ranks and stores: each rank reads only its part of a global
batch that does not depend on the number of ranks; several token stores mixed by weight
(a store lacking a modality never gives it as input or target); resume stays exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_store import store_specs, write_store

from fm21.config import MixtureComponent, TrainConfig
from fm21.train.loader import LanceTokenDataset, make_loader
from fm21.train.loop import token_stores
from fm21.train.masking import UnifiedMasking

SPECS = store_specs()  # rgb, tok_depth, caption


def _masking() -> UnifiedMasking:
    return UnifiedMasking(SPECS, num_input_tokens=6, num_target_tokens=6, mixture=[MixtureComponent()])


class Counting(LanceTokenDataset):
    """Counts the payload rows its readers take (module level: picklable)."""

    def open_streams(self, stream):
        self.readers = super().open_streams(stream)
        return self.readers


def _batches(dataset: LanceTokenDataset, n: int, start: int = 0) -> list:
    dataset.start_step = start
    stream = iter(make_loader(dataset))
    return [next(stream) for _ in range(n)]


def _cat(parts: list[dict]) -> dict:
    return {m: {k: torch.cat([p[m][k] for p in parts]) for k in parts[0][m]} for m in parts[0]}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    image = root / "image.lance"
    write_store(image, SPECS, num_keys=36, keys_per_fragment=12, num_crops=2, prefix="a")
    text = root / "text.lance"  # a C4-like store: captions only
    write_store(text, {"caption": SPECS["caption"]}, num_keys=20, keys_per_fragment=10, prefix="b", seed=1)
    return image, text


def test_ranks_read_only_their_rows_of_the_one_process_batch(stores):
    image, _ = stores
    kw = dict(batch_size=8, shuffle_buffer=12, seed=3)
    alone = Counting(image, SPECS, _masking(), readahead_steps=0, **kw)
    whole = _batches(alone, 6)
    assert alone.readers[0].rows_read == 6 * 8
    for start, ahead in ((0, 0), (4, 0), (4, 8)):  # from the start, resumed mid-epoch; read-ahead
        parts = []
        for rank in range(2):
            ds = Counting(image, SPECS, _masking(), rank=rank, world_size=2, readahead_steps=ahead, **kw)
            parts.append(_batches(ds, 6 - start, start))
            if not ahead:  # (read-ahead reads rows of later steps early: rank's rows only, still)
                assert ds.readers[0].rows_read == (6 - start) * 4  # its half of each batch, no more
        for step in range(start, 6):
            joined = _cat([parts[0][step - start], parts[1][step - start]])
            assert joined.keys() == whole[step].keys()
            for m in joined:
                assert all(torch.equal(joined[m][k], whole[step][m][k]) for k in joined[m]), (step, m)


class Tagged(LanceTokenDataset):
    """(key, masked sample) pairs instead of collated batches."""

    def _sample(self, row, rng):
        return row["key"], super()._sample(row, rng)


class Keys(LanceTokenDataset):
    """Keys only (no masking): cheap enough for many samples."""

    def _sample(self, row, rng):
        return row["key"]


def test_stores_mix_by_weight_absent_modalities_are_never_used_and_resume_is_exact(stores):
    image, text = stores
    mix = [(image, 0.75), (text, 0.25)]
    keys = [k for batch in _batches(Keys(mix, {}, None, batch_size=20, shuffle_buffer=8, collate=list), 30)
            for k in batch]  # 600 samples: several epochs of both stores
    share = sum(k.startswith("b") for k in keys) / len(keys)
    assert abs(share - 0.25) < 0.06, share  # 3.4 binomial standard deviations
    ds = Tagged(mix, SPECS, _masking(), batch_size=20, shuffle_buffer=8, collate=list)
    batches = _batches(ds, 8)
    assert [k for b in batches for k, _ in b] == keys[:160]  # the store draws do not depend on the masking
    used = set()
    for batch in batches:
        for key, sample in batch:
            for m in ("rgb", "tok_depth"):
                ignored = bool(sample[m]["input_mask"].all() and sample[m]["target_mask"].all())
                if key.startswith("b"):
                    assert ignored, (key, m)  # the text store has no such column
                elif not ignored:
                    used.add(m)
    assert used == {"rgb", "tok_depth"}  # image samples do use them
    for start in (3, 7):
        ds.start_step = start
        resumed = next(iter(make_loader(ds)))
        assert [k for k, _ in resumed] == [k for k, _ in batches[start]]
        for (_, a), (_, b) in zip(resumed, batches[start]):
            assert all(np.array_equal(a[m][f], b[m][f]) for m in a for f in a[m])


def test_store_config_is_validated_with_the_key_named(tmp_path, stores):
    image, _ = stores
    with pytest.raises(ValueError, match="stores.0.weight"):
        TrainConfig.model_validate({"stores": [{"path": str(image), "weight": 0}]})
    with pytest.raises(ValueError, match="exactly one of path and uri"):
        TrainConfig.model_validate({"stores": [{"path": str(image), "uri": "s3://b/t.lance"}]})
    cfg = TrainConfig.model_validate({"stores": [{"path": str(image), "weight": 0.6},
                                                 {"path": str(tmp_path / "c4.lance"), "weight": 0.2}]})
    with pytest.raises(ValueError, match=r"train.stores\[1\].path: no token store"):
        token_stores(cfg, "unused")
    assert token_stores(TrainConfig(), "run/tokens.lance") == [("run/tokens.lance", 1.0)]
