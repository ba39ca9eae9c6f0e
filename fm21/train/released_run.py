"""A runnable fm21 workdir made of released artefacts, for ``fm21 generate``.

``fm21 generate`` reads a trained run: ``<workdir>/train/checkpoints/LATEST`` naming a 4M
checkpoint folder, ``<workdir>/tokenizers/<modality>/`` for each image-like modality and
``<workdir>/tokenizers/text/`` (``fm21.generate.run``). The released models give the same
pieces in other places: ``fm21 import 4m21`` writes the 4M checkpoint folder, ``fm21 import
tokenizer`` one folder per released tokenizer, and the released text tokenizer is a single
JSON (``text_tokenizer_4m_wordpiece_30k.json``, apple/ml-4m `fourm/utils/tokenizer/`).

:func:`assemble_run` places them where generation looks without copying any weights:

- ``train/checkpoints/released`` -> a symlink to the imported checkpoint folder, and
  ``LATEST`` naming it (``publish_latest``: the folder is checked complete first);
- ``tokenizers/<modality>`` -> a symlink to each imported tokenizer folder;
- ``tokenizers/text/tokenizer.json`` -> a symlink to the released JSON, beside the
  ``config.json`` (sizes, fingerprint) that ``TextTokenizer.load`` checks it against;
- ``released_run.json``: where every piece came from and what was checked.

The pieces are checked against each other before anything is written: every tokenizer's
modality, vocabulary and token count against the model's spec of it, and the text
tokenizer's vocabulary against the model's sequence vocabulary. The workdir is for
generation and evaluation; to train further, start a run from the checkpoint with
``train.init_from`` (docs/reference-conventions.md).

:func:`adopt_checkpoint` (``fm21 import checkpoint``) is the other way in: a workdir that
already has its own stores and tokenizers takes the imported checkpoint as its train
stage's output, so that ``fm21 stage evaluate`` scores it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from fm21.store.layout import Workdir
from fm21.tokenize.families import trains_tokenizer

CHECKPOINT_NAME = "released"  # not step-*: the train loop's checkpoint pruning never touches it
TEXT_DIR = "text"  # fm21.generate.run.TEXT_DIR
RECORD_FILE = "released_run.json"


class ReleasedRunError(ValueError):
    """Pieces that do not fit together; the message lists every problem."""


def _tokenizer_problems(name: str, tok: Mapping[str, Any], specs: Mapping[str, Any]) -> list[str]:
    """Why the tokenizer config ``tok`` cannot serve modality ``name`` of the model (none: it fits)."""
    if name not in specs:
        return [f"{name}: the model has no such modality (it has: {', '.join(specs)})"]
    spec, out = specs[name], []
    if not trains_tokenizer(spec):
        out.append(f"{name}: a {spec.kind} modality has no tokenizer folder")
    if tok.get("modality", name) != name:
        out.append(f"{name}: the tokenizer folder is for {tok['modality']}")
    if spec.kind == "sequence":  # an embedded tokenizer (SAM masks, poses): its codes are text tokens
        return out
    if "vocab_size" in tok and int(tok["vocab_size"]) != spec.vocab_size:
        out.append(f"{name}: tokenizer codebook {tok['vocab_size']}, the model's vocabulary {spec.vocab_size}")
    if "num_tokens" in tok:
        tokens = int(tok["num_tokens"])
    elif "resolution" in tok and "patch_size" in tok:
        tokens = (int(tok["resolution"]) // int(tok["patch_size"])) ** 2
    else:
        tokens = None
    if tokens is not None and tokens != spec.num_tokens:
        out.append(f"{name}: the tokenizer makes {tokens} tokens, the model reads {spec.num_tokens}")
    return out


def _link(link: Path, target: Path, *, force: bool) -> None:
    """``link`` -> the absolute ``target`` (an existing link is replaced only with ``force``)."""
    if link.is_symlink() or link.exists():
        if not force:
            raise ReleasedRunError(f"{link} exists; --force replaces it")
        if link.is_dir() and not link.is_symlink():
            raise ReleasedRunError(f"{link} is a folder, not a link fm21 made; remove it by hand")
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target.resolve(), target_is_directory=target.is_dir())


def assemble_run(workdir: str | Path, *, model: str | Path, tokenizers: Mapping[str, str | Path],
                 text_tokenizer: str | Path, force: bool = False) -> dict[str, Any]:
    """Lay out ``workdir`` so that ``fm21 --set workdir=<workdir> generate ...`` uses the
    imported 4M checkpoint folder ``model``, the imported tokenizer folders
    ``tokenizers`` (modality -> folder) and the released text tokenizer JSON (or a folder
    holding it). Returns (and writes as ``released_run.json``) what was placed and checked."""
    from fm21.tokenize.checkpoint import read_tokenizer_config
    from fm21.tokenize.text import RELEASED_TEXT_FILE, TextTokenizer, load_released_text_tokenizer
    from fm21.train.checkpoint import publish_latest, read_checkpoint_config, spec_from_dict

    model = Path(model)
    config = read_checkpoint_config(model)  # complete, every listed file whole
    specs = {name: spec_from_dict(d) for name, d in config["specs"].items()}
    problems: list[str] = []
    tok_configs = {}
    for name, folder in tokenizers.items():
        if not (Path(folder) / "config.json").is_file():
            problems.append(f"{name}: no tokenizer at {folder} (no config.json)")
            continue
        tok_configs[name] = read_tokenizer_config(folder)
        problems += _tokenizer_problems(name, tok_configs[name], specs)
    text = load_released_text_tokenizer(text_tokenizer)  # refused unless the reference's special ids
    text_file = Path(text_tokenizer)
    if text_file.is_dir():
        text_file = text_file / RELEASED_TEXT_FILE
    seq_vocab = sorted({s.vocab_size for s in specs.values() if s.kind == "sequence"})
    if seq_vocab and text.vocab_size > min(seq_vocab):
        problems.append(f"text tokenizer of {text.vocab_size} ids, the model's sequences have {min(seq_vocab)}")
    if problems:
        raise ReleasedRunError("cannot assemble the run: " + "; ".join(problems))

    wd = Workdir(Path(workdir))
    ckpt_dir = Path(wd.checkpoints_dir)
    _link(ckpt_dir / CHECKPOINT_NAME, model, force=force)
    publish_latest(wd.checkpoints_dir / CHECKPOINT_NAME)
    for name, folder in tokenizers.items():
        _link(Path(wd.tokenizers_dir) / name, Path(folder), force=force)
    text_dir = Path(wd.tokenizers_dir) / TEXT_DIR
    if text_dir.is_symlink() or (text_dir.exists() and not force):
        raise ReleasedRunError(f"{text_dir} exists; --force replaces it" if not text_dir.is_symlink()
                               else f"{text_dir} is a link; remove it by hand")
    (text_dir / "tokenizer.json").unlink(missing_ok=True)  # a link from before: never write through it
    text.save(text_dir)  # config.json (sizes, fingerprint) + a re-serialised tokenizer.json ...
    _link(text_dir / "tokenizer.json", text_file, force=True)  # ... replaced by the released file itself
    TextTokenizer.load(text_dir)  # the link reads back to the recorded fingerprint

    tokenized = [n for n, s in specs.items() if trains_tokenizer(s)]
    extra = config.get("extra") or {}
    record = {
        "workdir": str(Path(workdir).resolve()),
        "checkpoint": str(model.resolve()),
        "weights": extra.get("weights", "trained"),  # released: written by fm21 import 4m21
        "random": bool(extra.get("random_init")),  # a release-format folder of random weights
        "num_parameters": config.get("num_parameters"),
        "modalities": list(specs),
        "tokenizers": {n: {"folder": str(Path(f).resolve()), "fingerprint": tok_configs[n].get("fingerprint"),
                           "random": tokenizer_random(tok_configs[n])} for n, f in tokenizers.items()},
        # tokenized modalities the model has but no tokenizer was given for: neither
        # readable from files nor decodable (generation names the missing folder)
        "without_tokenizer": [n for n in tokenized if n not in tokenizers],
        "text_tokenizer": {"file": str(text_file.resolve()), "vocab_size": text.vocab_size,
                           "fingerprint": text.fingerprint()},
        # sequence ids the model can emit past the text vocabulary decode to nothing
        "text_vocab_short_by": (min(seq_vocab) - text.vocab_size) if seq_vocab else 0,
    }
    Path(workdir, RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def tokenizer_random(config: Mapping[str, Any]) -> list[str]:
    """The random parts of a tokenizer checkpoint (``all`` for a random-init one)."""
    if config.get("random_init"):
        return ["all"]
    return list((config.get("training") or {}).get("random_parts") or [])


def parse_tokenizer_options(items: list[str]) -> dict[str, str]:
    """``--tokenizer tok_rgb=DIR`` items -> {modality: folder}; a bare ``DIR`` names its
    modality by the folder's ``config.json``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep:
            folder = item
            cfg_file = Path(folder) / "config.json"
            name = json.loads(cfg_file.read_text()).get("modality", "") if cfg_file.is_file() else ""
            if not name:
                raise ReleasedRunError(f"--tokenizer {item}: give MODALITY=DIR (no modality in {cfg_file})")
        if name in out:
            raise ReleasedRunError(f"--tokenizer {name} given twice")
        out[name.strip()] = os.fspath(folder)
    return out


# ------------------------------------------------------------------------------ an import as a run's train output
def _store_problems(specs: Mapping[str, Any], stored: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Why tokens.lance (its specs ``stored``) cannot feed the model of ``specs``."""
    out = []
    for name, spec in specs.items():
        have = stored.get(name)
        if have is None:
            out.append(f"{name}: tokens.lance has no such column (has: {', '.join(stored)})")
            continue
        grid = spec.is_image_like and spec.kind != "global_tokens"  # global tokens: a fixed count, no grid
        if grid and (have.get("resolution"), have.get("patch_size")) != (spec.resolution, spec.patch_size):
            out.append(f"{name}: stored at {have.get('resolution')} px in {have.get('patch_size')} px patches, "
                       f"the model reads {spec.resolution} px in {spec.patch_size} px patches")
        if spec.is_image_like and spec.kind != "pixels" and have.get("vocab_size") != spec.vocab_size:
            out.append(f"{name}: stored codebook {have.get('vocab_size')}, the model's {spec.vocab_size}")
        if spec.kind == "sequence" and int(have.get("vocab_size") or 0) > spec.vocab_size:
            out.append(f"{name}: stored ids up to {have.get('vocab_size')}, the model's table has {spec.vocab_size}")
    return out


def adopt_checkpoint(workdir: str | Path, *, model: str | Path, force: bool = False) -> dict[str, Any]:
    """Make the imported 4M checkpoint folder ``model`` the train stage's output of
    ``workdir``, a run whose stores (tokens.lance, labels.lance, tokenizers) already exist,
    so that ``fm21 stage evaluate`` scores the import as it scores a trained model.

    The folder is linked as ``train/checkpoints/released`` with ``LATEST`` naming it, and
    ``train/manifest.json`` records it (``counts.weights``: released, ``counts.random``)
    with a fingerprint of the checkpoint, so evaluate's inputs change with it. A later
    ``fm21 stage train`` is another configuration: it trains (from scratch, or from the
    import with ``train.init_from``) and moves ``LATEST``. Checked first: every modality of
    the model is in tokens.lance at the model's grid and vocabulary, and every image-like
    tokenizer it needs is in ``tokenizers/`` with the model's codebook and token count.
    Unlike :func:`assemble_run`, nothing of the workdir's tokenizers is replaced."""
    from fm21.store.manifest import fingerprint_of, read_manifest, write_json_atomic
    from fm21.store.tokens import read_store_metadata
    from fm21.tokenize.checkpoint import read_tokenizer_config
    from fm21.train.checkpoint import publish_latest, read_checkpoint_config, resolve_latest, spec_from_dict

    model = Path(model)
    config = read_checkpoint_config(model)
    specs = {name: spec_from_dict(d) for name, d in config["specs"].items()}
    wd = Workdir(Path(workdir))
    tokens = read_manifest(wd.manifest("tokens")) or {}
    if tokens.get("status") != "complete":
        raise ReleasedRunError(f"{workdir}: no complete tokens stage; build the stores first (fm21 run build_dataset)")
    problems = _store_problems(specs, read_store_metadata(wd.tokens_uri)["specs"])
    for name in (n for n, s in specs.items() if trains_tokenizer(s) and s.kind != "sequence"):
        folder = Path(wd.tokenizers_dir) / name
        if not (folder / "config.json").is_file():
            problems.append(f"{name}: no tokenizer at {folder}")
        else:
            problems += _tokenizer_problems(name, read_tokenizer_config(folder), specs)
    latest = resolve_latest(wd.checkpoints_dir)
    if latest is not None and latest.name != CHECKPOINT_NAME and not force:
        problems.append(f"LATEST names the run's own checkpoint {latest.name}; --force points it at the import "
                        f"(the run's checkpoints stay)")
    if problems:
        raise ReleasedRunError("cannot adopt the checkpoint: " + "; ".join(problems))

    link = Path(wd.checkpoints_dir) / CHECKPOINT_NAME
    replace = force or (link.is_symlink() and link.resolve() == model.resolve())  # the same import again
    _link(link, model, force=replace)
    publish_latest(wd.checkpoints_dir / CHECKPOINT_NAME)
    extra = config.get("extra") or {}
    counts = {"weights": extra.get("weights", "trained"), "random": bool(extra.get("random_init")),
              "checkpoint": str(model.resolve()), "steps": int(config.get("step", 0)),
              "num_parameters": config.get("num_parameters")}
    fingerprint = fingerprint_of({"imported": counts["checkpoint"], "files": config.get("files"),
                                  "tokens": tokens.get("fingerprint")})
    write_json_atomic(wd.manifest("train"), {
        "stage": "train", "status": "complete", "fingerprint": fingerprint,
        "upstream": {"tokens": tokens.get("fingerprint")}, "counts": counts, "seconds": 0.0,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "adopted": True})
    return {"workdir": str(Path(workdir).resolve()), "fingerprint": fingerprint, "modalities": list(specs), **counts}
