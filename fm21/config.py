"""Typed configuration: flows.yaml (+ an optional recipe + dotted overrides) -> ``FlowConfig``.

Every model forbids unknown keys and is frozen. A bad key or value raises
``ConfigError`` naming the file(s) and the dotted key path, before anything is written.
Each stage receives only its own slice (``cfg.ingest``, ``cfg.train``, ...) plus the
small shared ``RunContext`` built by the pipeline.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from fm21.modalities import MODALITIES, ModalitySpec, resolve_specs

# The embedded default ships in the package (in a checkout, a symlink to ./flows.yaml).
PACKAGED_DEFAULTS = Path(__file__).resolve().parent / "defaults"
DEFAULT_CONFIG = PACKAGED_DEFAULTS / "flows.yaml"


def default_config_path() -> Path:
    """``./flows.yaml`` when the working directory has one (`fm21 init` writes it), else
    the packaged default."""
    local = Path("flows.yaml")
    return local if local.is_file() else DEFAULT_CONFIG


def recipe_path(recipe: str | Path, config_path: Path) -> Path:
    """A recipe by path, or by name: ``configs/<name>.yaml`` beside the loaded flows.yaml,
    else the packaged recipe of that name."""
    given = Path(recipe)
    if given.exists():
        return given
    for folder in (config_path.parent / "configs", PACKAGED_DEFAULTS / "configs"):
        candidate = folder / f"{recipe}.yaml"
        if candidate.exists():
            return candidate
    known = sorted(p.stem for p in (PACKAGED_DEFAULTS / "configs").glob("*.yaml"))
    raise ConfigError(f"recipe {str(recipe)!r} not found (a path, or a name: {', '.join(known)})")


class ConfigError(ValueError):
    """A configuration problem, with the file and key path in the message."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------ shared
class RayConfig(Strict):
    address: str | None = None  # None: start a local Ray; "auto" or "ray://host:10001": a cluster
    num_cpus: int | None = None  # local Ray only; None lets Ray decide
    include_dashboard: bool = False


class ModalitiesConfig(Strict):
    enabled: list[str]
    resolution: int = 224  # square crop side every image-like modality is made at
    patch_size: int | None = None  # None keeps each spec's own (16, or 14 for DINOv2/ImageBind)
    image_vocab_size: int | None = None  # None keeps the reference codebook sizes
    text_vocab_size: int | None = None  # total WordPiece vocab incl. 4,284 specials; None: 30k
    max_seq_len: int | None = None  # cap on every sequence length; None keeps the reference's
    # width of frozen-embedding inputs (t5_caption): the T5 encoder's d_model; None: 4096 (T5-XXL)
    embedding_dim: int | None = None

    @field_validator("enabled")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in MODALITIES]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; known: {list(MODALITIES)}")
        return names


# ------------------------------------------------------------------------------ ingest
class SyntheticConfig(Strict):
    num_samples: int = 1024
    min_objects: int = Field(2, ge=1, le=7)
    max_objects: int = Field(6, ge=1, le=7)
    # chance that an object takes one of its shape's typical colours (synthetic.CLASS_COLOURS);
    # 0: colour independent of shape, the embedded default (docs/evaluation.md, X -> RGB)
    class_colour: float = Field(0.0, ge=0.0, le=1.0)

    def scene_options(self) -> dict[str, Any]:
        """``render_scene``'s keyword arguments."""
        return {"min_objects": self.min_objects, "max_objects": self.max_objects,
                "class_colour": self.class_colour}

    # added after stores were built: at its default it stays out of the dump, so the
    # ingest fingerprint (and every store downstream) is unchanged
    @model_serializer(mode="wrap")
    def _omit_default_class_colour(self, handler):
        return {k: v for k, v in handler(self).items() if not (k == "class_colour" and v == 0.0)}


class IngestConfig(Strict):
    source: Literal["synthetic", "folder", "webdataset"] = "synthetic"
    path: str | None = None  # folder of images, or a shard glob/brace pattern for webdataset
    image_size: int = 256  # images are stored as square centre crops of this side
    samples_per_shard: int = 256
    min_side: int = 16  # smaller inputs are rejected
    max_pixels: int = 200_000_000  # larger inputs are rejected (decompression-bomb guard)
    seed: int = 0
    num_cpus: float = 1.0  # per synthetic shard task (one Ray task renders one shard)
    synthetic: SyntheticConfig = SyntheticConfig()


# ------------------------------------------------------------------------------ pseudolabel
class SpecialistConfig(Strict):
    enabled: bool = True
    weights: Literal["pretrained", "path", "random", "none"] = "none"  # none: no network
    model_id: str | None = None  # hub id or checkpoint URL (weights=pretrained)
    path: str | None = None  # local checkpoint (weights=path)
    batch_size: int = 32
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    concurrency: int = 1  # actors in its own pool
    own_pool: bool | None = None  # its own actor pool; default: networks yes, light algorithms no
    options: dict[str, Any] = Field(default_factory=dict)  # checked by the specialist


class FeatureMapsConfig(Strict):
    """Which rows of labels.lance keep the patch feature maps of feature specialists
    (CLIP, DINOv2, ImageBind): ``all``; ``sample``: about ``sample_size`` rows chosen by
    key hash, the tokenizer-training sample; ``none``. Rows without them hold null and
    the tokens job recomputes their features from the rgb crops (docs/data-plane.md).
    Global embeddings are always stored."""

    store: Literal["all", "sample", "none"] = "all"
    sample_size: int = Field(4096, ge=1)


class PseudolabelConfig(Strict):
    # A work unit is one input shard, labelled by one worker actor holding every specialist.
    units_per_commit: int = Field(4, ge=1)  # units per Lance Append (resume is per unit)
    concurrency: int = Field(1, ge=1)  # worker actors
    num_cpus: float = 1.0  # per worker actor
    num_gpus: float = 0.0
    retry_failed: bool = False  # also re-run the samples recorded as failed (only those)
    # A Lance vector index (IVF_PQ, cosine) over each stored global embedding column,
    # brought up to date at the end of the stage (fm21.store.vector_index).
    vector_index: bool = True
    feature_maps: FeatureMapsConfig = FeatureMapsConfig()
    specialists: dict[str, SpecialistConfig]


# ------------------------------------------------------------------------------ tokenizers
# ``tokenizers.image.<modality>``: the options of every tokenizer trained for one modality
# (the image-like ones, and the pose / mask tokenizers embedded in the human_poses and
# sam_instance sequences). Each entry is typed by its tokenizer family: ``family`` when the
# recipe sets it, else the registry's (``fm21.tokenize.families.family_of``). So an unknown
# key is an error naming its path at config load, without importing the family's module
# (torch). The family's own ``from_spec`` checks values against the spec (e.g. Memcodes
# heads dividing the latent) when the tokenizers stage starts, before any work.


def _known_family(value: str | None) -> str | None:
    from fm21.tokenize.families import TOKENIZER_FAMILIES  # a table of names, import-light

    if value is not None and value not in TOKENIZER_FAMILIES:
        raise ValueError(f"unknown tokenizer family {value!r}; known families: {', '.join(TOKENIZER_FAMILIES)}")
    return value


class VQTokenizerConfig(Strict):
    """``family: vqvae`` (the conv VQ-VAE of ``fm21.tokenize.vqvae``): every key has its value here."""

    # The tokenizer family of this modality; None: the registry's (ModalitySpec.tokenizer).
    family: str | None = None
    trunk: Literal["conv", "vit"] = "conv"  # vit: the reference's ViT encoder/decoder (fm21.tokenize.vit)
    hidden_dim: int = 64  # vit: the transformer width (ViT-B 768)
    num_layers: int = 2  # conv: residual blocks per stage; vit: transformer blocks (ViT-B 12)
    num_heads: int = 0  # vit: attention heads (0: hidden_dim / 64)
    class_embed_dim: int = 32  # semseg: class embedding width (the reference's 64)
    latent_dim: int = 32
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    commitment_weight: float = 1.0
    ema_decay: float = 0.99
    dead_code_coef: float = 32.0

    _family = field_validator("family")(_known_family)

    # Keys added after tokenizers were trained with this model: at their defaults they
    # stay out of the dump, so those tokenizers keep their fingerprints (and are reused).
    _LATER_KEYS: ClassVar[dict[str, Any]] = {"trunk": "conv", "num_heads": 0, "class_embed_dim": 32}

    @model_serializer(mode="wrap")
    def _omit_later_defaults(self, handler):
        return {k: v for k, v in handler(self).items()
                if not (k in self._LATER_KEYS and v == self._LATER_KEYS[k])}


class FamilyOptions(Strict):
    """Options of a family whose defaults live in its module's config: a key left out takes
    that default, so the dump (``fm21 config show``) lists only what the recipe set."""

    family: str | None = None

    _family = field_validator("family")(_known_family)

    @model_serializer(mode="wrap")
    def _only_set(self, handler):
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


class MemcodesOptions(FamilyOptions):
    """``family: memcodes`` (``fm21.tokenize.memcodes.MemcodesConfig``): global embeddings and
    the human_poses body-pose tokenizer. ``vocab_size``/``num_tokens`` only for the pose
    tokenizer (a global spec takes them from the registry)."""

    hidden_dim: int | None = None
    num_blocks: int | None = None
    expansion: int | None = None
    latent_dim: int | None = None
    temperature: float | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    vocab_size: int | None = None
    num_tokens: int | None = None


class SamMaskOptions(FamilyOptions):
    """``family: sam_mask`` (``fm21.tokenize.sam_mask.SamMaskConfig``): the sam_instance mask tokenizer."""

    mask_size: int | None = None
    patch_size: int | None = None
    vocab_size: int | None = None
    latent_dim: int | None = None
    hidden_dim: int | None = None
    num_layers: int | None = None
    ema_decay: float | None = None
    commitment_weight: float | None = None
    dead_code_coef: float | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    trunk: str | None = None  # "vit": the reference's ViT + out_conv layout (the released tokenizer's)
    num_heads: int | None = None  # vit trunk
    pos_grid: int | None = None  # vit trunk


class DivaeOptions(FamilyOptions):
    """``family: divae`` (``fm21.tokenize.divae.DiVAEConfig``): VQ encoder + diffusion decoder."""

    hidden_dim: int | None = None
    num_layers: int | None = None
    latent_dim: int | None = None
    trunk: str | None = None
    num_heads: int | None = None  # vit trunk
    pos_grid: int | None = None  # vit trunk
    unet_channels: list[int] | None = None
    layers_per_block: int | None = None
    decoder_patch: int | None = None
    num_train_timesteps: int | None = None
    decode_steps: int | None = None
    decode_seed: int | None = None
    # the reference's ADM decoder layout and diffusion options (what an imported release sets)
    unet_layout: Literal["fm21", "adm"] | None = None
    unet_attention_levels: list[int] | None = None
    unet_num_heads: int | None = None
    unet_scale_shift: bool | None = None
    decoder_channels: int | None = None
    prediction_type: Literal["sample", "epsilon", "v_prediction"] | None = None
    beta_schedule: str | None = None
    zero_terminal_snr: bool | None = None
    thresholding: bool | None = None
    codebook_ema_decay: float | None = None
    commitment_weight: float | None = None
    dead_code_coef: float | None = None
    steps: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    ema_decay: float | None = None  # the decoder's model EMA


class UntypedOptions(FamilyOptions):
    """A family with no options model here (a module merged after this file): any key,
    checked by the family's ``from_spec`` when the tokenizers stage starts."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_serializer(mode="wrap")
    def _only_set(self, handler):
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set or k in (self.model_extra or {})}


# family -> the model of its recipe options (families not listed: UntypedOptions)
OPTION_MODELS: dict[str, type[Strict]] = {
    "vqvae": VQTokenizerConfig,
    "memcodes": MemcodesOptions,
    "sam_mask": SamMaskOptions,
    "divae": DivaeOptions,
}
TokenizerOptions = VQTokenizerConfig | MemcodesOptions | SamMaskOptions | DivaeOptions | UntypedOptions


def _typed_options(name: str, entry: Any) -> BaseModel:
    """One ``tokenizers.image`` entry as the options model of its effective family."""
    from fm21.tokenize.families import family_of, trains_tokenizer

    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; known: {list(MODALITIES)}")
    spec = MODALITIES[name]
    if not trains_tokenizer(spec):
        raise ValueError(f"{name} has no tokenizer of its own to configure (kind {spec.kind}; sequences share "
                         "tokenizers.text)")
    if isinstance(entry, BaseModel):
        return entry
    family = _known_family(family_of(spec, entry if isinstance(entry, dict) else None))
    return OPTION_MODELS.get(family, UntypedOptions).model_validate(entry)


class TextTokenizerConfig(Strict):
    """The shared WordPiece tokenizer. ``train``: learn word pieces on this run's labels after
    the fixed special tokens (a new vocabulary). ``released``: use the 4M release's 30k
    tokenizer (apple/ml-4m `fourm/utils/tokenizer/trained/text_tokenizer_4m_wordpiece_30k.json`),
    the ids the released 4M-21 models read, from ``path`` (a local file or URI, or a folder
    holding ``hub_filename``) or the Hub repo ``hub_id``."""

    source: Literal["train", "released"] = "train"
    path: str | None = None  # released: the tokenizer JSON (or its folder)
    hub_id: str | None = None  # released: a Hugging Face Hub repo holding it
    hub_filename: str = "text_tokenizer_4m_wordpiece_30k.json"
    min_frequency: int = 1  # train only
    train_samples: int = 200_000  # train only: rows of labels.lance whose texts train WordPiece (a hashed sample)

    @model_validator(mode="after")
    def _one_origin(self) -> "TextTokenizerConfig":
        if self.source == "released" and (self.path is None) == (self.hub_id is None):
            raise ValueError("source: released needs exactly one of path or hub_id")
        if self.source == "train" and (self.path is not None or self.hub_id is not None):
            raise ValueError("path / hub_id are for source: released")
        return self


class TokenizersConfig(Strict):
    train_samples: int = 512  # rows of labels.lance sampled for training
    # per modality, typed by its tokenizer family (see above)
    image: dict[str, TokenizerOptions] = Field(default_factory=dict)
    text: TextTokenizerConfig = TextTokenizerConfig()
    num_cpus: float = 1.0  # per tokenizer training task (its torch threads: int(num_cpus))
    num_gpus: float = 0.0
    seed: int = 0

    @field_validator("image", mode="before")
    @classmethod
    def _by_family(cls, entries: Any) -> Any:
        if not isinstance(entries, dict):
            return entries  # pydantic reports the type error
        out, errors = {}, []
        for name, entry in entries.items():
            try:
                out[name] = _typed_options(name, entry)
            except ValidationError as err:  # keep each key's path: image.<modality>.<key>
                errors += [InitErrorDetails(type=e["type"], loc=(name, *e["loc"]), input=e["input"],
                                            ctx=e.get("ctx", {})) for e in err.errors()]
            except ValueError as err:
                errors.append(InitErrorDetails(type=PydanticCustomError("value_error", str(err)), loc=(name,),
                                               input=entry))
        if errors:
            raise ValidationError.from_exception_data("TokenizersConfig.image", errors)
        return out


# ------------------------------------------------------------------------------ tokens
class TokensConfig(Strict):
    num_crops: int = 1  # crop 0 is the full centre crop; others RandomResizedCrop
    min_crop_scale: float = 0.8
    val_fraction: float = 0.1  # sample keys hashed into the validation split
    batch_size: int = 64
    units_per_commit: int = Field(4, ge=1)  # labels.lance fragments per tokens.lance Append
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    concurrency: int = 1
    seed: int = 0


# ------------------------------------------------------------------------------ train
# The reference's trunk sizes (apple/ml-4m `fourm/models/fm.py`, ``fm_<size>_*_swiglu_nobias``):
# the 4M paper's 4M-B / 4M-L / 4M-XL are base / large / xlarge (198M / 705M / 2.8B trunk).
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"dim": 384, "encoder_depth": 6, "decoder_depth": 6, "num_heads": 6},
    "small": {"dim": 512, "encoder_depth": 8, "decoder_depth": 8, "num_heads": 8},
    "base": {"dim": 768, "encoder_depth": 12, "decoder_depth": 12, "num_heads": 12},
    "large": {"dim": 1024, "encoder_depth": 24, "decoder_depth": 24, "num_heads": 16},
    "xlarge": {"dim": 2048, "encoder_depth": 24, "decoder_depth": 24, "num_heads": 32},
}


class ModelConfig(Strict):
    """The 4M trunk. ``size`` names a preset of :data:`MODEL_SIZES`; any architecture field
    given explicitly overrides it, and a field given as null takes the preset's value (a
    recipe laid over flows.yaml's demo model writes ``dim: null`` to use its preset's).
    Without ``size`` the fields keep their own defaults (the base trunk)."""

    size: Literal["tiny", "small", "base", "large", "xlarge"] | None = None
    dim: int = 768
    encoder_depth: int = 12
    decoder_depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    # swiglu: gated SiLU MLP, hidden int(2 * int(mlp_ratio * dim) / 3); gelu: hidden int(mlp_ratio * dim)
    mlp: Literal["gelu", "swiglu"] = "swiglu"
    bias: bool = False  # biases of qkv/proj/MLP, LayerNorms and the context projection (4M-21: none)
    tie_sequence_logits: bool = True  # sequence heads share their decoder token table (the reference's)
    # Relative size of content and position at init. The reference's values (embeddings
    # N(0, 0.02), unit-amplitude sin-cos positions) suit billions of tokens; on a CPU
    # budget they cost a long plateau: token content drowned by positions (copying an
    # input token is not learned), and pixel content drowning the positions that route
    # decoder queries to their patch. docs/learning.md has the measurements.
    token_emb_std: float = 0.02  # init std of the encoder's token embeddings
    pos_emb_scale: float = 1.0  # multiplies every fixed sin-cos position table
    # The released 4M models' layout (`fm21 import 4m21` writes these into its checkpoint):
    # a context projection with bias whatever ``bias`` says, and the reference's 2D sin-cos
    # channel order. Defaults: fm21's architecture, unchanged.
    context_bias: bool | None = None
    sincos_2d_order: Literal["xy", "yx"] = "xy"

    @model_serializer(mode="wrap")
    def _omit_default_layouts(self, handler):
        """Left out of the dump at their defaults, so that the run fingerprint of every
        configuration that existed before them (and so its resume) is unchanged."""
        out = handler(self)
        for key, default in (("context_bias", None), ("sincos_2d_order", "xy")):
            if out.get(key, default) == default:
                out.pop(key, None)
        return out

    @model_validator(mode="before")
    @classmethod
    def _apply_size(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = MODEL_SIZES.get(data.get("size") or "", {})
        if data.get("size") and not preset:
            return data  # an unknown size: the Literal reports it
        out = {k: v for k, v in data.items() if not (v is None and (k in preset or k == "mlp_ratio"))}
        for key, value in preset.items():
            out.setdefault(key, value)
        return out


def _registry_names(value: dict[str, Any]) -> dict[str, Any]:
    """Keys must name modalities of the registry (a recipe may name one its run does not
    enable: that entry is unused); a misspelt name is an error."""
    bad = sorted(n for n in value if n not in MODALITIES)
    if bad:
        raise ValueError(f"not modalities of the registry: {bad}")
    return value


class MixtureComponent(Strict):
    """One Dirichlet component: alphas per modality (missing modalities get ``default``).

    Target alphas of input-only modalities (rgb, t5_caption) are ignored: they never get a
    target budget (the reference draws one for t5_caption and wastes it)."""

    weight: float = 1.0
    input_alphas: dict[str, float] = Field(default_factory=dict)
    target_alphas: dict[str, float] = Field(default_factory=dict)
    default_input_alpha: float = 1.0
    default_target_alpha: float = 1.0
    keep: dict[str, Literal["random", "all", "binary"]] = Field(default_factory=dict)

    _names = field_validator("input_alphas", "target_alphas", "keep")(_registry_names)


class TrainRayConfig(Strict):
    """Data-parallel training on Ray Train (`fm21.train.distributed`); 0 workers: in-process."""

    num_workers: int = Field(0, ge=0)  # training workers (ranks); train.batch_size is split across them
    use_gpu: bool = False  # one GPU per worker, NCCL; CPU workers use gloo
    fsdp: bool = False  # shard parameters, gradients and optimizer state (L/XL) instead of DDP
    max_failures: int = Field(3, ge=-1)  # restarts from the last checkpoint after a worker dies; -1: unlimited


class TokenStoreSource(Strict):
    """One token store of the training mixture: ``path`` (local) or ``uri`` (``s3://...``),
    sampled with probability ``weight / sum(weights)`` per sample (apple/ml-4m
    `cfgs/default/4m/data/cc12m+coyo+c4/main/*.yaml`, ``weights: [0.6, 0.2, 0.2]``). Its
    modalities must be tokenized as the run's; one it lacks is absent from its samples."""

    path: str | None = None
    uri: str | None = None
    weight: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _one_location(self) -> "TokenStoreSource":
        if (self.path is None) == (self.uri is None):
            raise ValueError("give exactly one of path and uri")
        return self

    @property
    def location(self) -> str:
        return self.uri if self.uri is not None else self.path  # type: ignore[return-value]


class TrainConfig(Strict):
    model: ModelConfig = ModelConfig()
    # The modalities 4M trains on: a subset of modalities.enabled (null: all of them). The
    # tokens store keeps every enabled modality; a run may spend its budget on fewer.
    modalities: list[str] | None = None
    num_input_tokens: int = 256
    num_target_tokens: int = 256
    mixture: list[MixtureComponent] = Field(default_factory=lambda: [MixtureComponent()])
    batch_size: int = 64
    steps: int = 1000
    lr: float = 1.6e-3
    min_lr: float = 0.0
    warmup_steps: int = 100
    # The schedule counted in tokens seen (input + target tokens of every sample; apple/ml-4m
    # `run_training_4m.py`: --total_tokens, --warmup_tokens). total_tokens sets the run's
    # length (steps = ceil(total_tokens / tokens per step); do not also set steps);
    # warmup_tokens replaces warmup_steps. Unset: the schedule counts steps, as always.
    warmup_tokens: int | None = Field(None, gt=0)
    total_tokens: int | None = Field(None, gt=0)
    # Token stores mixed by weight; empty: the run's own tokens.lance, weight 1
    stores: list[TokenStoreSource] = Field(default_factory=list)
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    # Per-modality weights of the 'mod' loss (mean of per-modality means); 1 = the
    # reference's equal weighting. A recipe knob for spending a small budget (docs/learning.md).
    loss_weights: dict[str, float] = Field(default_factory=dict)
    log_every: int = 10
    val_every: int = 100  # validation loss on held-out rows with a fixed masking; 0: never
    val_samples: int = 64  # held-out rows (crop 0) in the validation batches
    checkpoint_every: int = 500
    device: str = "cpu"
    # Precision of the forward pass: bf16 = torch.autocast on ``device`` (the reference's
    # GPU setting); auto = bf16 where the device has fast bf16 (CUDA with bf16, a CPU with
    # AVX512-BF16 or AMX), else fp32. On such a CPU the demo's step is ~1.17x faster at the
    # same learning (docs/learning.md). The run's manifest records what was used.
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    num_workers: int = 0
    # Fine-tuning: the weights a fresh run starts from (an fm21 checkpoint folder, e.g.
    # written by `fm21 import 4m21`, or a checkpoints folder with LATEST); a run that
    # resumes its own checkpoint ignores it. train.model must describe its architecture.
    init_from: str | None = None
    seed: int = 0
    ray: TrainRayConfig = TrainRayConfig()
    # Applied from outside the model, per transformer block (fm21/train/parallelize.py)
    compile: bool = False  # torch.compile each block (benchmarks/bench_mfu.py measures it)
    activation_checkpointing: bool = False  # recompute each block's activations in backward

    @property
    def tokens_per_step(self) -> int:
        """Tokens a step trains on: the global batch times the input and target budgets."""
        return self.batch_size * (self.num_input_tokens + self.num_target_tokens)

    @model_validator(mode="before")
    @classmethod
    def _steps_from_tokens(cls, data: Any) -> Any:
        """``total_tokens`` -> ``steps``; both set and disagreeing is an error naming both."""
        if not isinstance(data, dict) or data.get("total_tokens") is None:
            return data
        fields = cls.model_fields
        get = lambda k: data.get(k, fields[k].default)  # noqa: E731
        per_step = int(get("batch_size")) * (int(get("num_input_tokens")) + int(get("num_target_tokens")))
        steps = -(-int(data["total_tokens"]) // per_step)
        if data.get("steps") is not None and int(data["steps"]) != steps:
            raise ValueError(f"train.steps={data['steps']} and train.total_tokens={data['total_tokens']} "
                             f"({steps} steps of {per_step} tokens) disagree: set one of them")
        return {**data, "steps": steps}

    def select(self, specs: dict[str, ModalitySpec]) -> dict[str, ModalitySpec]:
        """The enabled ``specs`` 4M trains on (all of them unless ``modalities`` is set)."""
        return specs if self.modalities is None else {n: s for n, s in specs.items() if n in self.modalities}

    @field_validator("loss_weights")
    @classmethod
    def _target_modalities(cls, value: dict[str, float]) -> dict[str, float]:
        """Weights name target modalities of the registry (a recipe may weight one its run
        does not enable: that weight is unused); a misspelt name is an error."""
        from fm21.modalities import MODALITIES  # the registry literal, import-light

        bad = sorted(n for n in value if n not in MODALITIES or not MODALITIES[n].can_be_target)
        if bad:
            raise ValueError(f"not target modalities of the registry: {bad}")
        return value


# ------------------------------------------------------------------------------ evaluate
# Label kinds the evaluate stage has metrics for (fm21/evaluate/metrics.py HEADLINE keeps
# the same keys; a test checks they agree): a target modality of such a kind is a task.
EVALUABLE_LABEL_KINDS = ("depth", "normal", "classes", "boxes", "text", "rgb", "vector")


def _evaluable_modality(name: str) -> str:
    """A registry modality name, or the label column it is scored against (depth, normal,
    semseg, det, caption, rgb, dinov2_global, ...) -> the target modality's name."""
    if name in MODALITIES and MODALITIES[name].can_be_target:
        spec = MODALITIES[name]
    else:  # a label column (rgb names the input pixels and tok_rgb's labels alike)
        found = [s for s in MODALITIES.values() if s.label_columns[0] == name and s.can_be_target]
        if not found:
            raise ValueError(f"{name!r} is neither a target modality of the registry nor the label column of one")
        spec = found[0]
    if not spec.can_be_target or spec.label_kind not in EVALUABLE_LABEL_KINDS:
        evaluable = [s.name for s in MODALITIES.values() if s.can_be_target and s.label_kind in EVALUABLE_LABEL_KINDS]
        raise ValueError(f"{name!r}: no evaluation for label kind {spec.label_kind!r}; evaluable targets: {evaluable}")
    return spec.name


class EvaluateConfig(Strict):
    num_samples: int = 64
    # Target modalities to evaluate (registry names; the label column a task is reported
    # under -- depth, normal, semseg, det, caption, rgb -- is accepted for it). None:
    # every evaluable target the run trained on. A listed target the run did not train is
    # reported as skipped, with the reason.
    tasks: list[str] | None = None
    # X -> RGB: tok_rgb is generated from each of these conditions (those the run has)
    rgb_from: list[str] = ["tok_depth", "tok_semseg", "caption"]
    # X -> RGB: K > 1 also scores the pixel mean of K decoded samples (seeds seed..seed+K-1,
    # at `rgb_temperature`): the conditional-mean estimate that squared error rewards,
    # beside the single sample (docs/evaluation.md)
    rgb_samples: int = Field(1, ge=1)
    rgb_temperature: float = Field(1.0, gt=0)
    # RGB -> caption: K > 1 also samples K captions per image (at `caption_temperature`):
    # how often they name each class and colour is 4M's posterior of that mention; its
    # per-word AUC against the scene and its F1 decision are rows (docs/evaluation.md)
    caption_samples: int = Field(1, ge=1)
    caption_temperature: float = Field(1.0, gt=0)
    # Retrieval (the tasks of label kind vector: tok_dinov2_global, tok_imagebind_global):
    # the target is generated from each of these conditions, decoded to an embedding and
    # searched among the evaluation samples' true embeddings
    retrieval_from: list[str] = ["rgb", "caption", "tok_depth", "tok_semseg"]
    scheme: Literal["roar", "maskgit"] = "maskgit"
    num_steps: int = 8
    temperature: float = 0.01
    num_grid_samples: int = 6
    seed: int = 0

    @field_validator("tasks")
    @classmethod
    def _evaluable(cls, names: list[str] | None) -> list[str] | None:
        return None if names is None else list(dict.fromkeys(_evaluable_modality(n) for n in names))

    _names = field_validator("rgb_from", "retrieval_from")(_registry_names)


# ------------------------------------------------------------------------------ root
class FlowConfig(Strict):
    workdir: str = "work/demo"
    seed: int = 0
    # Intra-op threads of torch/OpenMP in this process (None: the library default). On
    # small shared CPU machines one thread per process is the robust choice (see benchmarks).
    threads: int | None = None
    ray: RayConfig = RayConfig()
    modalities: ModalitiesConfig
    ingest: IngestConfig = IngestConfig()
    pseudolabel: PseudolabelConfig
    tokenizers: TokenizersConfig = TokenizersConfig()
    tokens: TokensConfig = TokensConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _train_modalities_enabled(self) -> FlowConfig:
        wanted = self.train.modalities
        if wanted is not None:
            missing = [n for n in wanted if n not in self.modalities.enabled]
            if missing:
                raise ValueError(f"train.modalities {missing} are not in modalities.enabled")
            if not any(MODALITIES[n].can_be_target for n in wanted):
                raise ValueError("train.modalities names no modality that can be a target")
        return self

    def specs(self) -> dict[str, ModalitySpec]:
        """The enabled modalities at this run's scale."""
        m = self.modalities
        return resolve_specs(
            m.enabled,
            resolution=m.resolution,
            patch_size=m.patch_size,
            image_vocab_size=m.image_vocab_size,
            text_vocab_size=m.text_vocab_size,
            max_seq_len=m.max_seq_len,
            embedding_dim=m.embedding_dim,
        )


# ------------------------------------------------------------------------------ loading
def _deep_merge(base: dict, over: dict) -> dict:
    """``over`` wins key by key, dicts merged recursively, except that a dict naming another
    ``family`` than the one it overrides (a tokenizer's options) replaces it whole: the
    options of one tokenizer family mean nothing to another."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        switched = (isinstance(value, dict) and isinstance(out.get(key), dict)
                    and "family" in value and value["family"] != out[key].get("family", value["family"]))
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not switched:
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(items: list[str] | tuple[str, ...] | None) -> dict:
    """``["train.steps=50", "ingest.path=/x"]`` -> nested dict; values parsed as YAML."""
    tree: dict = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() != "" else None
        node = tree
        keys = key.strip().split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[keys[-1]] = value
    return tree


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _format_errors(err: ValidationError, sources: str) -> str:
    lines = [f"invalid configuration ({sources}):"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{path}'")
        else:
            lines.append(f"  '{path}': {e['msg']}")
    return "\n".join(lines)


def load_config(
    path: str | Path | None = None,
    *,
    recipe: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] | None = None,
) -> FlowConfig:
    """flows.yaml, then the recipe (a partial YAML), then dotted overrides."""
    path = Path(path) if path else default_config_path()
    data = _read_yaml(path)
    sources = [str(path)]
    if recipe:
        rpath = recipe_path(recipe, path)
        data = _deep_merge(data, _read_yaml(rpath))
        sources.append(str(rpath))
    over = parse_overrides(overrides)
    if over:
        data = _deep_merge(data, over)
        sources.append("--set " + " ".join(overrides or ()))
    try:
        return FlowConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, ", ".join(sources))) from None


def dump_config(cfg: FlowConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
