"""The X -> RGB report's condition-neighbours reference: nearest by the stored condition."""

import numpy as np

from fm21.evaluate.rgb_task import condition_distances, condition_neighbours
from fm21.modalities import MODALITIES


def test_grid_and_sequence_conditions_find_their_own_training_sample():
    rng = np.random.default_rng(0)
    grid, seq = MODALITIES["tok_depth"], MODALITIES["caption"]
    n = grid.num_tokens
    train = [{"tok_depth": rng.integers(0, 50, n), "caption": rng.integers(5, 90, 12).tolist()} for _ in range(6)]
    train_rgb = rng.integers(0, 256, (6, 4, 4, 3)).astype(np.uint8)
    near = dict(train[4])
    near["tok_depth"] = train[4]["tok_depth"].copy()
    near["tok_depth"][:3] = 99  # 3 ids changed: still closest to sample 4
    d = condition_distances([near], train, "tok_depth", grid)
    assert d.shape == (1, 6) and d[0].argmin() == 4 and np.isclose(d[0, 4], 3 / n)
    np.testing.assert_array_equal(condition_neighbours([near], train, train_rgb, "tok_depth", grid, k=1)[0],
                                  train_rgb[4])
    # sequences: the Jaccard distance of the id sets (order ignored)
    query = {"caption": list(reversed(train[2]["caption"]))}
    d = condition_distances([query], train, "caption", seq)
    assert d[0, 2] == 0.0 and d[0].argmin() == 2
    # k neighbours average their images
    both = condition_neighbours([query], train, train_rgb, "caption", seq, k=6)[0]
    np.testing.assert_allclose(both, train_rgb.astype(np.float64).mean(0))


def test_mean_of_samples_averages_k_seeded_samples_at_the_rgb_temperature(monkeypatch):
    from fm21.config import EvaluateConfig
    from fm21.evaluate import rgb_task

    calls = []

    def fake_generate(model, rows, conditions, target, cfg):  # one flat image per seed
        calls.append((cfg.seed, cfg.temperature))
        return np.full((len(rows), 2, 2, 3), 10.0 * cfg.seed)

    class Tok:
        def decode_labels(self, ids):
            return ids

    monkeypatch.setattr(rgb_task, "generate_ids", fake_generate)
    cfg = EvaluateConfig(seed=3, temperature=0.01, rgb_samples=4, rgb_temperature=0.7)
    out = rgb_task.sample_mean(None, [{}, {}], "tok_depth", "tok_rgb", Tok(), cfg)
    assert calls == [(3, 0.7), (4, 0.7), (5, 0.7), (6, 0.7)]
    np.testing.assert_allclose(out, 45.0)  # mean of 30, 40, 50, 60


def test_a_condition_sequence_is_cut_as_training_cuts_it():
    """EOS counts in max_seq_len for conditions too (apple/ml-4m `fourm/data/masking.py`)."""
    from fm21.evaluate.conditioning import condition_tensor
    from fm21.train.masking import EOS_ID

    spec = MODALITIES["caption"].at(max_seq_len=6)
    cap = spec.max_seq_len
    long, short = list(range(100, 100 + cap + 3)), [100, 101]
    t = condition_tensor([{"caption": long}, {"caption": short}], "caption", spec).numpy()
    assert list(t[0, :cap]) == long[:cap] and t[0, cap] == 0  # max_seq_len ids, no EOS, then PAD
    assert list(t[1, :3]) == [100, 101, EOS_ID] and t[1, 3:].sum() == 0
