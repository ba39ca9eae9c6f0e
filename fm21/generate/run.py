"""The trained run that generation uses: the latest 4M checkpoint and the tokenizers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fm21.modalities import ModalitySpec
from fm21.store.fs import Location
from fm21.store.layout import Workdir
from fm21.train.checkpoint import load_checkpoint, resolve_latest

if TYPE_CHECKING:
    import torch

MAP_KINDS = ("image_tokens", "feature_tokens")  # token kinds that decode to a label map
TEXT_DIR = "text"  # tokenizers/<TEXT_DIR>: the shared WordPiece tokenizer (fm21.tokenize.stage)


class GenerateError(ValueError):
    """Bad input to generation: a one-line message the command line prints as is."""


@dataclass
class TrainedRun:
    """The 4M model of a workdir and, loaded on first use, its tokenizers."""

    workdir: Workdir
    model: Any  # fm21.train.model.FourM, in eval mode
    checkpoint: str
    step: int
    extra: dict
    _tokenizers: dict[str, Any] = field(default_factory=dict)
    _text: Any = None

    @property
    def specs(self) -> dict[str, ModalitySpec]:
        return self.model.specs

    def spec(self, name: str) -> ModalitySpec:
        """The spec of a modality the model was trained on, or a clear error."""
        from fm21.modalities import MODALITIES

        if name in self.specs:
            return self.specs[name]
        trained = ", ".join(self.specs)
        if name in MODALITIES:
            raise GenerateError(f"the model was not trained on {name!r} (it has: {trained})")
        raise GenerateError(f"unknown modality {name!r} (the model has: {trained})")

    def tokenizer(self, name: str) -> Any:
        """The family tokenizer of an image-like modality (or a sequence's embedded one)."""
        if name not in self._tokenizers:
            from fm21.tokenize.checkpoint import load_tokenizer

            folder: Location = self.workdir.tokenizers_dir / name
            if not (folder / "config.json").exists():
                raise GenerateError(f"no tokenizer for {name} at {folder}; run the tokenizers stage")
            self._tokenizers[name] = load_tokenizer(folder)
        return self._tokenizers[name]

    def decode_map(self, name: str, ids: torch.Tensor) -> Any:
        """The label map a ``(1, N)`` grid of ``name`` token ids decodes to (what a grid
        tile shows of it), for the kinds whose tokens decode to a map."""
        if self.spec(name).kind not in MAP_KINDS:
            raise GenerateError(f"{name}: its tokens do not decode to a map")
        return self.tokenizer(name).decode_labels(ids.numpy())[0]

    @property
    def text(self) -> Any:
        """The shared WordPiece tokenizer of the sequence modalities."""
        if self._text is None:
            from fm21.tokenize.text import TextTokenizer

            folder = self.workdir.tokenizers_dir / TEXT_DIR
            if not (folder / "config.json").exists():
                raise GenerateError(f"no text tokenizer at {folder}; run the tokenizers stage")
            self._text = TextTokenizer.load(folder)
        return self._text

    def random_parts(self, names: list[str]) -> list[str]:
        """Which of the parts behind ``names`` have random weights: the 4M model (a
        checkpoint tagged ``random_init`` or never trained) and each random-init tokenizer.
        Outputs made with any of them are plumbing, not quality."""
        from fm21.tokenize.checkpoint import read_tokenizer_config

        parts = ["4m"] if self.extra.get("random_init") or self.weights == "random" else []
        for name in names:
            folder = self.workdir.tokenizers_dir / name
            if not (folder / "config.json").exists():
                continue
            config = read_tokenizer_config(folder)
            # an imported tokenizer may be partly random (a released DiVAE's diffusion decoder)
            partly = (config.get("training") or {}).get("random_parts") or []
            if config.get("random_init") or partly:
                parts.append(f"tokenizer:{name}" + (f" ({', '.join(partly)})" if partly else ""))
        return parts

    @property
    def weights(self) -> str:
        """Where the 4M weights come from: ``released`` (``fm21 import 4m21``; a release
        made from random weights is also tagged ``random_init``), ``random`` (tagged, or a
        step-0 checkpoint that is no import) or ``trained``."""
        if self.extra.get("weights") == "released":
            return "released"
        return "random" if self.extra.get("random_init") or self.step == 0 else "trained"


def open_run(workdir: str | Location) -> TrainedRun:
    """The latest checkpoint of ``workdir``'s train stage, ready to generate."""
    wd = Workdir(workdir)
    latest = resolve_latest(wd.checkpoints_dir)
    if latest is None:
        raise GenerateError(f"{wd.checkpoints_dir}: no checkpoint (LATEST missing); run the train stage first")
    model, config = load_checkpoint(latest)
    model.eval()
    return TrainedRun(workdir=wd, model=model, checkpoint=str(latest), step=int(config.get("step", 0)),
                      extra=dict(config.get("extra") or {}))
