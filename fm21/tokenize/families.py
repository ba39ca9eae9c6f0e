"""Tokenizer families: the registry's ``ModalitySpec.tokenizer`` value -> the module that
builds, trains and saves that kind of tokenizer.

A family module ``fm21/tokenize/<family>.py`` provides ``FAMILY``, a frozen config
dataclass (``family``/``modality`` fields, ``from_spec(spec, options)``, ``to_dict``,
``from_dict``), ``build(config)``, ``train(spec, options, train_labels, val_labels, *,
seed)`` and ``save_recon_png(tokenizer, val_labels, path)``. Modules are imported on
first use, so this table stays import-light and a family whose module is not in the
build fails with a message naming it, not an ImportError deep in a worker.

``wordpiece`` (every sequence modality) is the shared text tokenizer of
``fm21.tokenize.text``, not a family module. A sequence whose serialisation embeds the ids
of a small tokenizer (``ModalitySpec.embedded_tokenizer``: the body-pose Memcodes of
``human_poses``, the mask tokenizer of ``sam_instance``) has that family besides.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any, Mapping

from fm21.modalities import ModalitySpec

# family name -> module path (explicit lookup, no import-path strings in configs)
TOKENIZER_FAMILIES: dict[str, str] = {
    "vqvae": "fm21.tokenize.vqvae",
    "divae": "fm21.tokenize.divae",
    "memcodes": "fm21.tokenize.memcodes",
    "sam_mask": "fm21.tokenize.sam_mask",
}

FAMILY_KEY = "family"  # the recipe key that overrides the registry's family of a modality
TOKENIZED_KINDS = ("image_tokens", "feature_tokens", "global_tokens")  # a token column of a family's ids


def trains_tokenizer(spec: ModalitySpec) -> bool:
    """Whether the tokenizers stage trains a tokenizer of ``spec``'s own
    (``tokenizers/<modality>/``): a tokenized image-like kind, or a sequence whose
    serialisation embeds a tokenizer's ids."""
    return spec.kind in TOKENIZED_KINDS or spec.embedded_tokenizer is not None


def is_installed(name: str) -> bool:
    """Whether family ``name``'s module is part of this build."""
    return name in TOKENIZER_FAMILIES and importlib.util.find_spec(TOKENIZER_FAMILIES[name]) is not None


def check_installed(name: str) -> str:
    """``name`` if its family module is in this build (found, not imported), else a
    ValueError saying which family is missing."""
    if name not in TOKENIZER_FAMILIES:
        raise ValueError(f"unknown tokenizer family {name!r}; known families: {', '.join(TOKENIZER_FAMILIES)}")
    if not is_installed(name):
        raise ValueError(f"tokenizer family {name!r} is not installed in this build "
                         f"(no module {TOKENIZER_FAMILIES[name]})")
    return name


def family_module(name: str) -> ModuleType:
    """The module of tokenizer family ``name`` (imported on first use)."""
    check_installed(name)
    module = importlib.import_module(TOKENIZER_FAMILIES[name])
    if getattr(module, "FAMILY", None) != name:
        raise ValueError(f"{module.__name__}.FAMILY is {getattr(module, 'FAMILY', None)!r}, expected {name!r}")
    return module


def family_of(spec: ModalitySpec, options: Mapping[str, Any] | None = None) -> str:
    """The family of ``spec``'s own tokenizer: the registry's (its embedded tokenizer for a
    sequence that has one), unless the recipe overrides it (``tokenizers.image.<modality>.family``)."""
    override = (options or {}).get(FAMILY_KEY)
    family = override or spec.embedded_tokenizer or spec.tokenizer
    if family is None:
        raise ValueError(f"{spec.name}: the registry names no tokenizer family and the recipe sets none")
    return family


def family_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The recipe options a family's ``from_spec``/``train`` receives: all but the family
    override, which :func:`family_of` has consumed."""
    return {k: v for k, v in (options or {}).items() if k != FAMILY_KEY}


def recipe_options(entry: Any) -> dict[str, Any]:
    """A modality's recipe entry (``tokenizers.image.<modality>``, a pydantic model or a
    dict) as the dict of keys the recipe set: a family sees only what was asked of it."""
    if entry is None:
        return {}
    if hasattr(entry, "model_dump"):
        return entry.model_dump(mode="json", exclude_unset=True)
    return dict(entry)


def family_config(spec: ModalitySpec, options: Mapping[str, Any] | None, *, path: str) -> Any:
    """The family config of ``spec`` with its recipe ``options`` (the family's
    ``from_spec``), or a ValueError naming the recipe keys at fault as ``<path>.<key>``
    (``path``: where the options sit, e.g. ``tokenizers.image.tok_rgb``). The keys are
    found by giving the family each one alone; a fault of several keys together names
    ``path``."""
    from fm21.tokenize.checkpoint import config_class  # imports torch: only where families are built

    family = family_of(spec, options)
    config_cls = config_class(family_module(family))
    given = family_options(options)
    try:
        return config_cls.from_spec(spec, given)
    except (ValueError, TypeError) as err:
        bad = [k for k in given if _rejects(config_cls, spec, {k: given[k]})]
        where = ", ".join(f"{path}.{k}" for k in bad) or path
        raise ValueError(f"{where}: {family} options: {err}") from None


def _rejects(config_cls: type, spec: ModalitySpec, options: dict[str, Any]) -> bool:
    try:
        config_cls.from_spec(spec, options)
    except (ValueError, TypeError):
        return True
    return False
