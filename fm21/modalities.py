"""THE modality registry of fm21: one frozen ``ModalitySpec`` per 4M-21 modality.

This is the only file that lists every modality (an explicit dict literal, no import
side effects). Numbers follow apple/ml-4m `fourm/data/modality_info.py` at real scale (224 px). A run at
another scale (the tiny recipe: 64 px, patch 8, small vocabularies) derives its own
specs with :func:`resolve_specs` / :meth:`ModalitySpec.at`; the registry itself is
never mutated.

Kinds:
- ``pixels``: raw RGB patches, linear patch projection (input only).
- ``image_tokens``: a spatial grid of VQ tokens of a dense map (rgb, depth, ...).
- ``feature_tokens``: a spatial grid of VQ tokens of a frozen network's feature map.
- ``global_tokens``: a fixed number of Memcodes tokens of one global embedding.
- ``sequence``: WordPiece ids of a text serialisation (caption, det, metadata, ...).
- ``embedding``: a sequence of frozen text-encoder vectors (T5), input only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Mapping

Kind = Literal["pixels", "image_tokens", "feature_tokens", "global_tokens", "sequence", "embedding"]

LabelKind = Literal[
    "rgb", "depth", "normal", "classes", "edges", "feature", "vector", "text", "boxes", "instances", "poses",
    "palette", "metadata", "embedding",
]

IMAGE_KINDS = ("pixels", "image_tokens", "feature_tokens", "global_tokens")
SEQUENCE_KINDS = ("sequence", "embedding")

TEXT_VOCAB_SIZE = 30_000  # the shared 4M WordPiece vocabulary


@dataclass(frozen=True)
class ModalitySpec:
    """What fm21 needs to know about one modality. Derived values are properties."""

    name: str
    kind: Kind
    specialist: str  # the pseudo-labeler producing its labels (fm21.pseudolabel.specialists)
    label_columns: tuple[str, ...]  # labels.lance columns the tokenizer reads
    input_only: bool = False
    tokenizer: str | None = None  # family: vqvae | divae | memcodes | wordpiece | None
    tokenizer_source: str | None = None  # the reference's tokenizer-training key
    vocab_size: int | None = None  # codebook size (image-like) or text vocab (sequence)
    resolution: int | None = None  # pixels of the square crop the modality is made at
    patch_size: int | None = None  # pixels per token side on that crop
    num_global_tokens: int | None = None  # global_tokens only
    max_seq_len: int | None = None  # sequence/embedding only; the reference's max_tokens, EOS included
    num_channels: int | None = None  # tokenizer input channels (classes for semseg)
    embedding_dim: int | None = None  # embedding kind: width of the frozen vectors
    serialization: str | None = None  # sequence only: caption | det | color_palette | ...
    shared_vocab: str | None = None  # sequences share the text tokenizer of this modality
    # What its label column holds; decides how it is preprocessed, coloured, cropped and
    # evaluated (rgb | depth | normal | classes | edges | feature | vector | text | boxes |
    # instances | poses | palette | metadata | embedding).
    label_kind: LabelKind | None = None
    # Sequence serialisations that write the ids of a small tokenizer of their own (the
    # body-pose Memcodes of human_poses, the instance-mask tokenizer of sam_instance): its
    # family. The tokenizers stage trains it under tokenizers/<modality>/.
    embedded_tokenizer: str | None = None

    # ---------------------------------------------------------------- derived values
    @property
    def is_image_like(self) -> bool:
        return self.kind in IMAGE_KINDS

    @property
    def is_sequence(self) -> bool:
        return self.kind in SEQUENCE_KINDS

    @property
    def grid_size(self) -> int | None:
        """Tokens per side of the spatial grid; global tokens sit on a sqrt(N) grid."""
        if self.kind == "global_tokens":
            side = int(round(self.num_global_tokens**0.5))
            return side
        if self.resolution is None or self.patch_size is None:
            return None
        return self.resolution // self.patch_size

    @property
    def label_size(self) -> int | None:
        """Side of the map its tokenizer reads: the crop resolution for dense maps, the
        token grid for feature maps (one patch feature vector per token)."""
        if self.kind == "feature_tokens":
            return self.grid_size
        return self.resolution

    @property
    def num_tokens(self) -> int:
        """Maximum number of tokens this modality contributes to a sample."""
        if self.kind == "global_tokens":
            return int(self.num_global_tokens)
        if self.is_image_like:
            return self.grid_size**2
        return int(self.max_seq_len)

    @property
    def seq_tensor_len(self) -> int | None:
        """Length of a span-masked sequence tensor: (max_seq_len + 1) * 2 (apple/ml-4m `fourm/data/masking.py`)."""
        if not self.is_sequence:
            return None
        return (self.max_seq_len + 1) * 2

    @property
    def can_be_target(self) -> bool:
        return not self.input_only

    def at(
        self,
        *,
        resolution: int | None = None,
        patch_size: int | None = None,
        vocab_size: int | None = None,
        max_seq_len: int | None = None,
        embedding_dim: int | None = None,
    ) -> ModalitySpec:
        """A copy of this spec at another scale. The registry entry is left untouched.

        ``resolution`` and ``patch_size`` only apply to spatial modalities, ``vocab_size``
        only to modalities that have one, ``max_seq_len`` caps sequence lengths and
        ``embedding_dim`` sets the width of frozen-embedding inputs (T5 caption vectors).
        """
        changes: dict[str, int] = {}
        if embedding_dim is not None and self.embedding_dim is not None:
            changes["embedding_dim"] = embedding_dim
        if max_seq_len is not None and self.max_seq_len is not None:
            changes["max_seq_len"] = min(self.max_seq_len, max_seq_len)
        spatial = self.kind in ("pixels", "image_tokens", "feature_tokens")
        if resolution is not None and (spatial or self.kind == "global_tokens"):
            changes["resolution"] = resolution
        if patch_size is not None and spatial:
            changes["patch_size"] = patch_size
        if vocab_size is not None and self.vocab_size is not None:
            changes["vocab_size"] = vocab_size
        return dataclasses.replace(self, **changes)


def _img(name: str, **kw) -> ModalitySpec:
    kw.setdefault("kind", "image_tokens")
    kw.setdefault("resolution", 224)
    kw.setdefault("patch_size", 16)
    return ModalitySpec(name=name, **kw)


def _seq(name: str, **kw) -> ModalitySpec:
    kw.setdefault("kind", "sequence")
    kw.setdefault("tokenizer", "wordpiece")
    kw.setdefault("vocab_size", TEXT_VOCAB_SIZE)
    kw.setdefault("shared_vocab", "caption")
    kw.setdefault("serialization", name)
    return ModalitySpec(name=name, **kw)


# The 19 domain keys of 4M-21 (apple/ml-4m `fourm/data/modality_info.py`). Keys are the bare names: the
# resolution is a field, not an ``@224`` suffix.
MODALITIES: Mapping[str, ModalitySpec] = {
    "rgb": _img(
        "rgb", kind="pixels", input_only=True, specialist="image", label_kind="rgb", label_columns=("rgb",),
        num_channels=3,
    ),
    "tok_rgb": _img(
        "tok_rgb", tokenizer="divae", tokenizer_source="rgb", vocab_size=16384,
        specialist="image", label_kind="rgb", label_columns=("rgb",), num_channels=3,
    ),
    "caption": _seq(
        "caption", specialist="caption", label_kind="text", label_columns=("caption",), max_seq_len=256,
        shared_vocab=None,
    ),
    "t5_caption": ModalitySpec(
        name="t5_caption", kind="embedding", input_only=True, specialist="t5",
        label_kind="embedding", label_columns=("t5_caption",), max_seq_len=77, embedding_dim=4096,
    ),
    "det": _seq("det", specialist="detection", label_kind="boxes", label_columns=("det",), max_seq_len=256),
    "tok_depth": _img(
        "tok_depth", tokenizer="divae", tokenizer_source="depth", vocab_size=8192,
        specialist="depth", label_kind="depth", label_columns=("depth",), num_channels=1,
    ),
    "tok_normal": _img(
        "tok_normal", tokenizer="divae", tokenizer_source="normal", vocab_size=8192,
        specialist="normal", label_kind="normal", label_columns=("normal",), num_channels=3,
    ),
    "tok_semseg": _img(
        "tok_semseg", tokenizer="vqvae", tokenizer_source="semseg_coco", vocab_size=4096,
        specialist="semseg", label_kind="classes", label_columns=("semseg",), num_channels=134,
    ),
    "tok_clip": _img(
        "tok_clip", kind="feature_tokens", tokenizer="vqvae", tokenizer_source="CLIP-B16",
        vocab_size=8192, specialist="clip", label_kind="feature", label_columns=("clip",), num_channels=512,
    ),
    "tok_dinov2": _img(
        "tok_dinov2", kind="feature_tokens", tokenizer="vqvae", tokenizer_source="DINOv2-B14",
        vocab_size=8192, patch_size=14, specialist="dinov2", label_kind="feature", label_columns=("dinov2",),
        num_channels=768,
    ),
    "tok_dinov2_global": ModalitySpec(
        name="tok_dinov2_global", kind="global_tokens", tokenizer="memcodes",
        tokenizer_source="DINOv2-B14-global", vocab_size=8192, num_global_tokens=16,
        specialist="dinov2", label_kind="vector", label_columns=("dinov2_global",), num_channels=768,
    ),
    "tok_imagebind": _img(
        "tok_imagebind", kind="feature_tokens", tokenizer="vqvae",
        tokenizer_source="ImageBind-H14", vocab_size=8192, patch_size=14,
        specialist="imagebind", label_kind="feature", label_columns=("imagebind",), num_channels=1280,
    ),
    "tok_imagebind_global": ModalitySpec(
        name="tok_imagebind_global", kind="global_tokens", tokenizer="memcodes",
        tokenizer_source="ImageBind-H14-global", vocab_size=8192, num_global_tokens=16,
        specialist="imagebind", label_kind="vector", label_columns=("imagebind_global",), num_channels=1280,
    ),
    "tok_canny_edge": _img(
        "tok_canny_edge", tokenizer="divae", tokenizer_source="canny_edge", vocab_size=8192,
        specialist="canny_edge", label_kind="edges", label_columns=("canny_edge",), num_channels=1,
    ),
    "tok_sam_edge": _img(
        "tok_sam_edge", tokenizer="divae", tokenizer_source="canny_edge", vocab_size=8192,
        specialist="sam_edge", label_kind="edges", label_columns=("sam_edge",), num_channels=1,
    ),
    "sam_instance": _seq(
        "sam_instance", specialist="sam", label_kind="instances", label_columns=("sam_instances",), max_seq_len=290,
        embedded_tokenizer="sam_mask",
    ),
    "human_poses": _seq(
        "human_poses", specialist="human_pose", label_kind="poses", label_columns=("human_poses",),
        max_seq_len=275, embedded_tokenizer="memcodes",
    ),
    "color_palette": _seq(
        "color_palette", specialist="color_palette", label_kind="palette", label_columns=("color_palette",),
        max_seq_len=23,
    ),
    "metadata": _seq(
        "metadata", specialist="metadata", label_kind="metadata", label_columns=("metadata",), max_seq_len=40,
    ),
}


def get_spec(name: str) -> ModalitySpec:
    try:
        return MODALITIES[name]
    except KeyError:
        known = ", ".join(MODALITIES)
        raise KeyError(f"unknown modality {name!r}; known modalities: {known}") from None


def resolve_specs(
    names: list[str] | tuple[str, ...],
    *,
    resolution: int | None = None,
    patch_size: int | None = None,
    image_vocab_size: int | None = None,
    text_vocab_size: int | None = None,
    max_seq_len: int | None = None,
    embedding_dim: int | None = None,
) -> dict[str, ModalitySpec]:
    """The specs of one run: registry entries at the run's scale, in the given order."""
    out: dict[str, ModalitySpec] = {}
    for name in names:
        spec = get_spec(name)
        vocab = text_vocab_size if spec.is_sequence else image_vocab_size
        out[name] = spec.at(resolution=resolution, patch_size=patch_size, vocab_size=vocab,
                            max_seq_len=max_seq_len, embedding_dim=embedding_dim)
    return out
