"""Named generation presets: the reference's shipped defaults as data, and :func:`run_preset`.

The values come from apple/ml-4m `fourm/demo_4M_sampler.py` (``DEFAULTS_RGB2X``,
``DEFAULTS_X2RGB``, ``DEFAULT_ORDER``, ``forward(top_p=0.8)``) and
`cfgs/default/generation/settings_base/T2CR_roar49-25_cfg3_t6-0.5.yaml`. Modality names
are fm21's (the reference's ``tok_clip@224`` is ``tok_clip``).

Usage::

    from fm21.evaluate.presets import PRESETS, run_preset
    md = init_full_input({"rgb": {"tensor": pixels}}, "rgb", model.specs)
    out = run_preset(model, md, PRESETS["rgb2x"], targets=["tok_depth", "caption"],
                     generator=torch.Generator().manual_seed(0))

A preset is a chain: its steps run in order, each generated target staying in the
mod_dict as a full input of the next (:func:`fm21.evaluate.sampler.generate`). Steps whose
target the model cannot generate, or that are already given as conditions, are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Mapping

import torch

from fm21.evaluate.sampler import ModDict, clone_mod_dict, generate, init_empty_target
from fm21.modalities import ModalitySpec
from fm21.train.model import FourM


@dataclass(frozen=True)
class TargetStep:
    """How one target of a chain is decoded (sequence targets use only temperature/cfg)."""

    target: str
    scheme: str = "roar"  # maskgit | roar | autoregressive
    num_steps: int = 1
    token_schedule: str = "linear"  # the reference's ROAR always splits tokens linearly
    temperature: float = 1.0
    temperature_schedule: str = "constant"
    cfg_scale: float = 1.0


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    steps: tuple[TargetStep, ...]  # in chain order
    top_k: int | float | None = None
    top_p: float | None = None
    # each finished target joins the modalities the unconditional guidance pass blanks
    # (the reference's cfg_grow_conditioning; the demo sampler passes True)
    cfg_grow_conditioning: bool = True

    def step(self, target: str) -> TargetStep:
        for s in self.steps:
            if s.target == target:
                return s
        raise KeyError(f"preset {self.name!r} has no step for {target!r}")


def _ar(target: str, temperature: float) -> TargetStep:
    return TargetStep(target, scheme="autoregressive", temperature=temperature)


def _steps(grid: Mapping[tuple[str, ...], TargetStep], seq: Iterable[TargetStep]) -> tuple[TargetStep, ...]:
    by_name = {n: replace(s, target=n) for names, s in grid.items() for n in names}
    by_name.update({s.target: s for s in seq})
    return tuple(by_name[n] for n in DEFAULT_ORDER if n in by_name)


# the demo's chained generation order (``DEFAULT_ORDER``)
DEFAULT_ORDER = (
    "tok_clip", "tok_dinov2", "tok_imagebind", "tok_depth", "tok_normal", "tok_semseg",
    "tok_canny_edge", "tok_sam_edge", "tok_rgb", "caption", "det", "human_poses",
    "sam_instance", "color_palette", "metadata",
)
SPATIAL = ("tok_clip", "tok_depth", "tok_normal", "tok_semseg", "tok_canny_edge", "tok_sam_edge")
SEQUENCE_DEFAULTS = (  # identical in DEFAULTS_RGB2X and DEFAULTS_X2RGB
    _ar("caption", 0.3), _ar("det", 0.3), _ar("human_poses", 0.1), _ar("sam_instance", 0.01),
    _ar("color_palette", 0.1), _ar("metadata", 0.1),
)

RGB2X = Preset(
    name="rgb2x",
    description="RGB -> everything: image-like targets in one ROAR step at T 0.01, CFG 2",
    steps=_steps({
        (*SPATIAL, "tok_rgb", "tok_dinov2", "tok_imagebind"):
            TargetStep("", scheme="roar", num_steps=1, temperature=0.01, cfg_scale=2.0),
    }, SEQUENCE_DEFAULTS),
    top_p=0.8,
)

X2RGB = Preset(
    name="x2rgb",
    description="any condition -> RGB: CLIP first (ROAR 50, T 5 onex, CFG 3), then the rest",
    steps=_steps({
        ("tok_clip",): TargetStep("", num_steps=50, temperature=5.0,
                                  temperature_schedule="onex:0.5:0.5", cfg_scale=3.0),
        ("tok_dinov2", "tok_imagebind"): TargetStep("", num_steps=8, temperature=0.01, cfg_scale=2.0),
        ("tok_depth", "tok_normal", "tok_semseg", "tok_canny_edge", "tok_sam_edge"):
            TargetStep("", num_steps=8, temperature=3.0, temperature_schedule="onex:0.5:0.5",
                       cfg_scale=2.0),
        ("tok_rgb",): TargetStep("", num_steps=25, temperature=3.0,
                                 temperature_schedule="onex:0.5:0.5", cfg_scale=2.0),
    }, SEQUENCE_DEFAULTS),
    top_p=0.8,
)

T2CR = Preset(
    name="t2cr",
    description="text -> CLIP -> RGB (T2CR_roar49-25_cfg3_t6-0.5): ROAR 49 then 25 steps, CFG 3",
    steps=(
        TargetStep("tok_clip", num_steps=49, temperature=6.0, temperature_schedule="onex:0.5:0.5",
                   cfg_scale=3.0),
        TargetStep("tok_rgb", num_steps=25, temperature=0.5, cfg_scale=3.0),
    ),
    top_p=0.9,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (RGB2X, X2RGB, T2CR)}


@torch.no_grad()
def run_preset(
    model: FourM,
    mod_dict: Mapping[str, Mapping[str, torch.Tensor]],
    preset: Preset | str,
    *,
    specs: Mapping[str, ModalitySpec] | None = None,
    targets: Iterable[str] | None = None,
    generator: torch.Generator | None = None,
    kv_cache: bool = True,
) -> ModDict:
    """Run ``preset``'s chain on ``mod_dict`` (its modalities are the conditions) and return
    a new mod_dict holding the conditions and every generated target as full inputs.

    ``targets`` restricts the chain to those targets (kept in the preset's order); by
    default every step the model can generate and the mod_dict does not already hold."""
    preset = PRESETS[preset] if isinstance(preset, str) else preset
    specs = model.specs if specs is None else specs
    conditions = list(mod_dict)
    if targets is not None:
        wanted = set(targets)
        unknown = wanted - {s.target for s in preset.steps}
        if unknown:
            raise ValueError(f"preset {preset.name!r} has no step for {sorted(unknown)}")
    steps = [s for s in preset.steps
             if s.target in model.decoder_embeddings and s.target not in conditions
             and (targets is None or s.target in wanted)]
    md = clone_mod_dict(mod_dict)
    cond_domains = list(conditions)  # what the unconditional guidance pass blanks
    for s in steps:
        md = init_empty_target(md, s.target, specs)
        md = generate(
            model, md, target=s.target, scheme=s.scheme, num_steps=s.num_steps,
            token_schedule_kind=s.token_schedule, temperature=s.temperature,
            temperature_schedule=s.temperature_schedule, top_k=preset.top_k, top_p=preset.top_p,
            cfg_scale=s.cfg_scale, cfg_cond_domains=cond_domains, generator=generator,
            kv_cache=kv_cache,
        )
        if preset.cfg_grow_conditioning:
            cond_domains.append(s.target)
    return md
