"""Named generation presets chained by run_preset (random-init tiny model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from fourm_tiny import tiny_model, tiny_specs  # noqa: E402

from fm21.evaluate import sampler  # noqa: E402
from fm21.evaluate.presets import PRESETS, run_preset  # noqa: E402
from fm21.evaluate.sampler import init_full_input  # noqa: E402


def test_presets_hold_the_reference_defaults():
    x2rgb, t2cr, rgb2x = PRESETS["x2rgb"], PRESETS["t2cr"], PRESETS["rgb2x"]
    clip = x2rgb.step("tok_clip")
    assert (clip.scheme, clip.num_steps, clip.temperature, clip.temperature_schedule,
            clip.cfg_scale) == ("roar", 50, 5.0, "onex:0.5:0.5", 3.0)
    assert (x2rgb.step("tok_rgb").num_steps, rgb2x.step("tok_depth").num_steps) == (25, 1)
    assert [s.target for s in t2cr.steps] == ["tok_clip", "tok_rgb"] and t2cr.top_p == 0.9
    assert rgb2x.step("caption").scheme == "autoregressive" and rgb2x.top_p == 0.8


def test_run_preset_chains_targets_with_growing_guidance(monkeypatch):
    specs = tiny_specs()
    model = tiny_model(specs, seed=2).eval()
    torch.manual_seed(0)
    md = init_full_input({"rgb": {"tensor": torch.randn(2, 3, 32, 32)}}, "rgb", specs)
    calls = []
    original = sampler.generate

    def spy(model, mod_dict, **kw):
        calls.append((kw["target"], sorted(mod_dict), list(kw["cfg_cond_domains"]), kw["num_steps"]))
        return original(model, mod_dict, **kw)

    monkeypatch.setattr("fm21.evaluate.presets.generate", spy)
    out = run_preset(model, md, "x2rgb", targets=["caption", "tok_normal", "tok_depth"],
                     generator=torch.Generator().manual_seed(0))
    # the preset's order, not the caller's; each target sees the ones before it
    assert [c[0] for c in calls] == ["tok_depth", "tok_normal", "caption"]
    assert calls[1][1] == ["rgb", "tok_depth", "tok_normal"]
    assert [c[2] for c in calls] == [["rgb"], ["rgb", "tok_depth"], ["rgb", "tok_depth", "tok_normal"]]
    assert [c[3] for c in calls] == [8, 8, 1]
    for name in ("tok_depth", "tok_normal", "caption"):
        assert not out[name]["input_mask"].all(dim=1).any()  # generated: every row has inputs
    assert torch.equal(out["rgb"]["tensor"], md["rgb"]["tensor"])
    with pytest.raises(ValueError, match="no step"):
        run_preset(model, md, "t2cr", targets=["caption"])
