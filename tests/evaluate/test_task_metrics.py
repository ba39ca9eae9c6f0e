"""The metrics of the non-dense evaluate tasks against hand-computed values, and the
registry-driven task list."""

from __future__ import annotations

import numpy as np
import pytest

from fm21.config import EVALUABLE_LABEL_KINDS, EvaluateConfig
from fm21.evaluate.metrics import (HEADLINE, caption_recall, detection_map, mention_auc, mentions, recall_at_k,
                                  rgb_metrics, structure_auc)
from fm21.evaluate.retrieval import chance
from fm21.evaluate.sequence_tasks import best_word_set, posterior_word_sets
from fm21.evaluate.stage import plan_tasks, summarise
from fm21.modalities import resolve_specs

BOX = {"box": [0.1, 0.1, 0.5, 0.5], "class_name": "cube"}
OTHER = {"box": [0.6, 0.6, 0.9, 0.9], "class_name": "sphere"}


def test_detection_map_perfect_missing_and_wrong():
    truth = [[BOX, OTHER], [BOX]]
    assert detection_map(truth, truth)["map_50"] == pytest.approx(1.0)
    assert detection_map([[], []], truth)["map_50"] == pytest.approx(0.0)
    wrong_class = [[{**BOX, "class_name": "sphere"}], [{**BOX, "class_name": "sphere"}]]
    assert detection_map(wrong_class, truth)["map_50"] == pytest.approx(0.0)
    # every cube found, no sphere: cube AP 1, sphere AP 0 -> mean 0.5
    assert detection_map([[BOX], [BOX]], truth)["map_50"] == pytest.approx(0.5)
    shifted = {**BOX, "box": [0.3, 0.3, 0.7, 0.7]}  # IoU 0.04/0.28 < 0.5 with BOX
    assert detection_map([[shifted, OTHER], [shifted]], truth)["map_50"] == pytest.approx(0.5)


def test_caption_recall_and_precision():
    vocab = {"object_vocab": {"cube", "sphere", "cone"}, "colour_vocab": {"red", "blue", "green"}}
    objects, colours = [{"cube", "sphere"}], [{"red", "blue"}]
    perfect = caption_recall(["a red cube and a blue sphere."], objects, colours, **vocab)
    assert perfect["recall"] == 1.0 and perfect["object_precision"] == 1.0
    half = caption_recall(["a red cube and a green cone."], objects, colours, **vocab)
    assert half["object_recall"] == 0.5 and half["colour_recall"] == 0.5 and half["object_precision"] == 0.5
    listing = caption_recall(["cube sphere cone red blue green"], objects, colours, **vocab)
    assert listing["recall"] == 1.0 and listing["colour_precision"] == pytest.approx(2 / 3)
    # the F1 headline: a caption naming every class and colour no longer scores like the truth
    assert perfect["f1"] == 1.0 and half["f1"] == pytest.approx(0.5)
    assert listing["f1"] == pytest.approx(0.8)  # P 2/3, R 1 -> F1 0.8 for objects and colours
    assert caption_recall(["a scene."], objects, colours, **vocab)["f1"] == 0.0


def test_best_word_set_is_the_f1_optimal_frequent_words():
    vocab = {"object_vocab": {"cube", "sphere", "cone"}, "colour_vocab": {"red", "blue", "green"}}
    # cube in every scene, sphere in half, cone in one of four; red everywhere, blue/green rare
    truth = [({"cube", "sphere"}, {"red"}), ({"cube"}, {"red", "blue"}), ({"cube", "sphere"}, {"red"}),
             ({"cube", "cone"}, {"red", "green"})]
    words = best_word_set(truth, **vocab).split()
    assert words == ["cube", "sphere", "red"]  # adding cone or blue/green lowers the training F1
    f1 = caption_recall([" ".join(words)] * 4, [t[0] for t in truth], [t[1] for t in truth], **vocab)["f1"]
    everything = caption_recall(["cube sphere cone red blue green"] * 4, [t[0] for t in truth],
                                [t[1] for t in truth], **vocab)
    assert f1 > everything["f1"] and everything["recall"] == 1.0


def test_mention_auc_is_half_for_any_image_blind_caption():
    words = ["cube", "sphere", "red", "blue"]
    present = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 1, 0], [0, 0, 0, 1]], dtype=bool)
    truth_text = [" ".join(w for w, p in zip(words, row) if p) for row in present]
    assert mention_auc(mentions(truth_text, words), present) == pytest.approx(1.0)
    assert mention_auc(mentions(["a red cube"] * 4, words), present) == pytest.approx(0.5)  # a constant
    # K-sample shares: cube named 3/4 where true, 1/4 where not -> AUC 1; blue reversed -> 0
    shares = np.array([[.75, .5, .5, .25], [.25, .5, .5, .75], [.75, .5, .5, .25], [.25, .5, .5, .75]])
    shares[:, 3] = 1 - shares[:, 3]
    assert mention_auc(shares, present) == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)


def test_posterior_word_sets_take_the_training_f1_threshold():
    vocab = {"object_vocab": {"cube", "sphere"}, "colour_vocab": {"red", "blue"}}
    words = ["cube", "sphere", "blue", "red"]
    truth = [({"cube"}, {"red"}), ({"sphere"}, {"blue"}), ({"cube", "sphere"}, {"red"}), ({"cube"}, {"blue"})]
    # an informed posterior: true words named by 3 of 4 samples, false ones by 1 of 4
    freq = np.array([[(w in t[0] | t[1]) * 0.5 + 0.25 for w in words] for t in truth])
    sets = posterior_word_sets(freq, truth, freq, vocab=words, k=4, **vocab)
    assert sets == ["cube red", "sphere blue", "cube sphere red", "cube blue"]  # tau between 1/4 and 3/4
    # a blind posterior (the same shares on every image) decides like the constant word set
    blind = np.tile(freq.mean(axis=0), (4, 1))
    assert len(set(posterior_word_sets(blind, truth, blind, vocab=words, k=4, **vocab))) == 1


def test_structure_auc_follows_edges_not_colours_and_is_half_when_image_blind():
    rng = np.random.default_rng(0)
    scenes = np.zeros((8, 16, 16, 3))
    for i, scene in enumerate(scenes):  # one box per scene, at its own place, on a random colour
        scene[:] = rng.integers(0, 256, 3)
        y, x = rng.integers(0, 10, 2)
        scene[y:y + 6, x:x + 6] = rng.integers(0, 256, 3)
    assert structure_auc(scenes, scenes) == pytest.approx(1.0)
    recoloured = 255 - scenes[..., ::-1]  # other colours, the same edges
    assert structure_auc(recoloured, scenes) == pytest.approx(1.0)
    assert structure_auc(np.broadcast_to(scenes.mean(0), scenes.shape), scenes) == pytest.approx(0.5)
    assert structure_auc(np.roll(scenes, 1, axis=0), scenes) < 0.5  # each image is another scene's


def test_rgb_psnr_and_recall_at_k():
    true = np.zeros((1, 2, 2, 3), np.uint8)
    pred = np.full((1, 2, 2, 3), 255.0)
    assert rgb_metrics(pred, true)["psnr"] == pytest.approx(0.0)  # MSE = 255^2
    off = true.astype(float)
    off[0, 0, 1] = 51.0  # one pixel off by 51 in every channel; the mask scores it and one exact pixel
    mask = np.array([[[True, True], [False, False]]])
    assert rgb_metrics(off, true, mask=mask)["psnr"] == pytest.approx(10 * np.log10(255.0**2 / (51.0**2 / 2)))
    assert rgb_metrics(off, true, mask=mask)["mae"] == pytest.approx(25.5)
    found = [["a", "b", "c"], ["a", "b", "c"], ["c", "b", "a"]]
    r = recall_at_k(found, ["a", "b", "x"], ks=(1, 2))
    assert r == {"recall@1": pytest.approx(1 / 3), "recall@2": pytest.approx(2 / 3)}
    assert recall_at_k([["k1"], ["k2"]], ["k1", "k2"], ks=(1,))["recall@1"] == 1.0
    assert chance(20) == {"recall@1": 0.05, "recall@5": 0.25, "recall@10": 0.5}


def test_summarise_picks_the_strongest_baseline_and_the_gap():
    scores = {"all": {"4m": {"map_50": 0.6}, "tokenizer_bound": {"map_50": 1.0}, "a": {"map_50": 0.2},
                      "b": {"map_50": 0.4}, "chance": {"map_50": 0.0}}}
    res = summarise("boxes", {"scores": scores, "baselines": ["a", "b"]})
    assert res["strongest_baseline"] == {"all": "b"} and res["gap_closed"]["all"] == pytest.approx(1 / 3)
    assert res["beats_strongest_baseline"] and res["kind"] == "boxes"
    # chance is image-blind too: when it beats every fixed prediction it is the bar
    scores["all"]["chance"] = {"map_50": 0.7}
    res = summarise("boxes", {"scores": scores, "baselines": ["a", "b"]})
    assert res["strongest_baseline"] == {"all": "chance"} and not res["beats_strongest_baseline"]
    assert res["gap_closed"]["all"] == pytest.approx(-1 / 3)


def test_tasks_follow_the_registry_and_skip_untrained_targets():
    assert set(HEADLINE) == set(EVALUABLE_LABEL_KINDS)
    cfg = EvaluateConfig(tasks=["depth", "det", "caption", "tok_dinov2_global"])
    assert cfg.tasks == ["tok_depth", "det", "caption", "tok_dinov2_global"]
    with pytest.raises(ValueError, match="no evaluation for label kind 'edges'"):
        EvaluateConfig(tasks=["tok_canny_edge"])
    specs = resolve_specs(["rgb", "tok_depth", "det", "tok_canny_edge"], resolution=32, patch_size=8)
    run, skipped = plan_tasks(cfg.tasks, specs)
    assert list(run) == ["tok_depth", "det"]
    assert set(skipped) == {"caption", "dinov2_global"} and "did not train" in skipped["caption"]
    run_all, _ = plan_tasks(None, specs)  # default: every evaluable target of the run
    assert list(run_all) == ["tok_depth", "det"]


def test_sampled_mentions_share_k_seeded_captions_at_the_caption_temperature(monkeypatch):
    from fm21.evaluate import sequence_tasks

    calls = []

    def fake_generate(model, rows, conditions, target, cfg):  # seed 4 names red, the others cube
        calls.append((cfg.seed, cfg.temperature))
        return [[1 if cfg.seed == 4 else 2] for _ in rows]

    class Text:
        def decode(self, ids):
            return {1: "a red thing", 2: "a cube"}[ids[0]]

    monkeypatch.setattr(sequence_tasks, "generate_ids", fake_generate)
    cfg = EvaluateConfig(seed=2, temperature=0.01, caption_samples=4, caption_temperature=0.7)
    freq = sequence_tasks.sampled_mentions(None, [{}, {}], source="rgb", target="caption", text_tok=Text(),
                                           vocab=["cube", "red"], cfg=cfg)
    assert calls == [(3, 0.7), (4, 0.7), (5, 0.7), (6, 0.7)]  # seeds after the single sample's
    np.testing.assert_allclose(freq, [[0.75, 0.25], [0.75, 0.25]])
