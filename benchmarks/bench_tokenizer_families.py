"""Every tokenizer family side by side at the demo's scale: train steps/s, encode and decode
samples/s, parameters, tokens per sample, codebook size; and tokens.lance bytes per sample.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_tokenizer_families.py [--steps 8] [--repeats 3]
        [--threads 1] [--device cpu|cuda] [--quick] [--tokens work/demo/tokens/tokens.lance]

One row per family of ``fm21.tokenize.families`` (the conv VQ-VAE on an image, on a feature
map and on semseg classes; DiVAE; Memcodes on a global embedding and on body poses; the
sam_mask tokenizer), each built from its registry spec at flows.yaml's scale (``load_config()``:
64 px, patch 8, 256 codes) with flows.yaml's own recipe options where the demo has an entry
for that modality (DiVAE: tok_rgb's entry with ``family: divae``); the others are not in
the demo and take the options of :data:`CASES` (column ``options``). Labels are synthetic,
of the spec's shape and label kind (as ``tests/test_registry_completeness.py`` makes them):
throughput does not depend on what the labels show.

- train steps/s: the family's own training loop (``_train_loop``: sample, augment, forward,
  loss, backward, clip, AdamW, and the family's extras such as DiVAE's decoder EMA) at the
  family's configured batch size. No family has a separable step function, so one loop of
  ``--steps`` + 1 steps minus one loop of 1 step gives the cost of ``--steps`` steps without
  the loop's set-up (optimizer, EMA copy); after ``--warmup`` untimed steps;
- encode / decode samples/s: ``encode_labels`` / ``decode_labels`` (label space, batch 64;
  DiVAE at its configured ``decode_steps``) on ``--apply-samples`` labels.

All families are measured in one process, interleaved: each of ``--repeats`` rounds times
every family once, and the table gives the median over rounds, so slow phases of a shared
machine hit every family alike. On CPU, rates are per second of the process's CPU time (with
one torch thread that is the compute time, robust to other processes on the cores; with more
threads it sums them); on CUDA per synchronised wall second. With ``--device cuda`` the
training steps run on the GPU and encode/decode on the CPU (the families' label-space API
works on CPU tensors). Weights are random init and being trained by the timed steps:
figures of speed only (tagged ``random`` in the JSON). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fm21.config import VQTokenizerConfig, load_config
from fm21.modalities import ModalitySpec, resolve_specs
from fm21.tokenize import divae, memcodes, sam_mask, train_vq
from fm21.tokenize.synthetic_labels import SYNTHETIC
from fm21.tokenize.families import family_config, family_module, family_options, recipe_options

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_token_store (benchmarks/ is not a package)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    modality: str
    family: str
    options: dict[str, Any]  # used only when flows.yaml has no entry for ``modality``
    source: str  # where ``options`` come from (shown when they are used)


# Memcodes' own defaults are the reference's size (1024 wide, 6 blocks of 4x: ~100M
# parameters), nothing the demo would train; benchmarks/bench_memcodes.py measures its
# quality at width 32, 2 blocks, lr 3e-3: that size here.
MEMCODES_SMALL = {"hidden_dim": 32, "num_blocks": 2, "lr": 3e-3}
CASES = (
    Case("vqvae image", "tok_rgb", "vqvae", {}, "family defaults"),
    Case("vqvae feature map", "tok_clip", "vqvae", {}, "family defaults"),
    Case("vqvae semseg", "tok_semseg", "vqvae", {}, "family defaults"),
    Case("divae", "tok_rgb", "divae", {}, "family defaults"),
    Case("memcodes global", "tok_dinov2_global", "memcodes", MEMCODES_SMALL, "bench_memcodes size"),
    Case("memcodes body pose", "human_poses", "memcodes", MEMCODES_SMALL, "bench_memcodes size"),
    Case("sam_mask", "sam_instance", "sam_mask", {}, "family defaults"),
)


def case_options(case: Case, demo: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The recipe options of ``case`` (with its family) and where they come from."""
    if case.modality in demo:
        entry = demo[case.modality]
        note = "" if entry.get("family", case.family) == case.family else f", family: {case.family}"
        return {**entry, "family": case.family}, f"flows.yaml {case.modality}{note}"
    return {**case.options, "family": case.family}, case.source


def step_runner(case: Case, spec: ModalitySpec, options: dict[str, Any], tok: torch.nn.Module,
                labels: np.ndarray, device: str) -> tuple[Callable[[int], None], int]:
    """``run(n)``: ``n`` steps of the family's own training loop on ``labels``; and the batch size."""
    given = family_options(options)
    if case.family == "vqvae":
        cfg = VQTokenizerConfig.model_validate(given)
        x = tok.preprocessor.to_model(labels).to(device)  # (B, C, R, R) or (B, R, R) class ids
        return (lambda n: train_vq._train_loop(tok, x, cfg.model_copy(update={"steps": n}), seed=0)), cfg.batch_size
    if case.family == "divae":
        _, opts = divae.split_options(given)
        x = tok.preprocessor.to_model(labels)  # the loop moves each batch to the model's device
        return (lambda n: divae._train_loop(tok, x, {**opts, "steps": n}, seed=0)), int(opts["batch_size"])
    if case.family == "memcodes":
        x = tok.check_labels(labels)  # (B, C) on the model's device
        tok.fit_normalization(x)
    elif case.family == "sam_mask":
        x = sam_mask.SamMaskTokenizer.to_model(labels).to(device)  # (B, 1, 64, 64) in {-1, 1}
    else:
        raise ValueError(f"no step runner for family {case.family!r}")
    config = tok.config
    loop = memcodes._train_loop if case.family == "memcodes" else sam_mask._train_loop

    def run(n: int) -> None:  # these loops read their step count from the tokenizer's config
        tok.config = dataclasses.replace(config, steps=n)
        try:
            loop(tok, x, seed=0)
        finally:
            tok.config = config

    return run, config.batch_size


def _seconds(fn: Callable[[], Any], device: str) -> float:
    """One call of ``fn``: CPU seconds of this process on CPU, synchronised wall seconds on CUDA."""
    clock = time.perf_counter if device == "cuda" else time.process_time
    if device == "cuda":
        torch.cuda.synchronize()
    start = clock()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return clock() - start


class Bench:
    """One family's tokenizer, its labels and its timings across rounds."""

    def __init__(self, case: Case, spec: ModalitySpec, demo: dict[str, dict[str, Any]],
                 args: argparse.Namespace) -> None:
        self.case, self.device, self.steps = case, args.device, args.steps
        self.options, self.source = case_options(case, demo)
        config = family_config(spec, self.options, path=f"tokenizers.image.{case.modality}")
        torch.manual_seed(0)
        self.tok = family_module(case.family).build(config).to(args.device)
        rng = np.random.default_rng(0)
        train = SYNTHETIC[spec.label_kind](spec, args.train_samples, rng)
        self.apply_labels = SYNTHETIC[spec.label_kind](spec, args.apply_samples, rng)
        self.run, batch_size = step_runner(case, spec, self.options, self.tok, train, args.device)
        self.batch_size = min(batch_size, len(train))  # the loops draw min(batch, samples) rows
        self.run(args.warmup)  # untimed: first-call allocations, lazy inits
        self.times: dict[str, list[float]] = {"train_step_s": [], "encode_s": [], "decode_s": []}

    def round(self) -> None:
        """Time once: ``steps`` training steps (a loop of steps + 1 minus a loop of 1), then
        encode and decode of the apply labels on the CPU."""
        one = _seconds(lambda: self.run(1), self.device)
        many = _seconds(lambda: self.run(self.steps + 1), self.device)
        self.times["train_step_s"].append(max(many - one, 1e-9) / self.steps)
        self.tok.cpu()  # the label-space API works on CPU tensors
        self.tok.encode_labels(self.apply_labels[:1])  # untimed: the first call in eval mode
        ids: list[np.ndarray] = []
        self.times["encode_s"].append(_seconds(lambda: ids.append(self.tok.encode_labels(self.apply_labels)), "cpu"))
        self.ids = ids[0]  # (n, tokens) int16
        self.times["decode_s"].append(_seconds(lambda: self.tok.decode_labels(self.ids), "cpu"))
        self.tok.to(self.device)

    def result(self) -> dict[str, Any]:
        med = {k: float(np.median(v)) for k, v in self.times.items()}
        n = len(self.apply_labels)
        c = self.tok.config
        return {"name": self.case.name, "family": self.case.family, "modality": self.case.modality,
                "options": self.source, "recipe": family_options(self.options), "weights": "random",
                "params": sum(p.numel() for p in self.tok.parameters()),
                "tokens_per_sample": int(self.ids.shape[1]), "codebook_size": int(c.vocab_size),
                "batch_size": self.batch_size, "decode_steps": getattr(c, "decode_steps", None),
                "train_steps_per_s": 1.0 / med["train_step_s"],
                "train_samples_per_s": self.batch_size / med["train_step_s"],
                "encode_samples_per_s": n / med["encode_s"], "decode_samples_per_s": n / med["decode_s"],
                "rounds": len(self.times["encode_s"]),
                "seconds_per_round": {k: [round(t, 5) for t in v] for k, v in self.times.items()}}


def token_store(path: Path) -> dict[str, Any] | None:
    """bench_token_store's bytes per row of ``path`` (tokens.lance), or None if there is none."""
    if not path.exists():
        return None
    from bench_token_store import store_bytes

    return store_bytes(path)


def print_table(result: dict[str, Any]) -> None:
    clock = "wall" if result["device"] == "cuda" else "CPU-time"
    print(f"tokenizer families at flows.yaml's scale ({result['scale']}); device {result['device']}, "
          f"threads {result['threads']}; {result['steps']} timed steps x {result['repeats']} interleaved rounds "
          f"(median); encode/decode on {result['apply_samples']} samples; rates per {clock} second; random init")
    rows = result["families"]
    base = rows[0]
    print(f"{'family':<19} {'modality':<18} {'params':>9} {'tok':>4} {'codes':>5} {'batch':>5} "
          f"{'step/s':>7} {'x vq':>5} {'enc/s':>8} {'x vq':>5} {'dec/s':>8} {'x vq':>5}  options")
    for r in rows:
        print(f"{r['name']:<19} "
              f"{r['modality']:<18} {r['params']:>9,} {r['tokens_per_sample']:>4} {r['codebook_size']:>5} "
              f"{r['batch_size']:>5} {r['train_steps_per_s']:>7.2f} "
              f"{r['train_steps_per_s'] / base['train_steps_per_s']:>5.2f} {r['encode_samples_per_s']:>8.0f} "
              f"{r['encode_samples_per_s'] / base['encode_samples_per_s']:>5.2f} {r['decode_samples_per_s']:>8.0f} "
              f"{r['decode_samples_per_s'] / base['decode_samples_per_s']:>5.2f}  {r['options']}"
              + (f" (decode {r['decode_steps']} DDIM steps)" if r["decode_steps"] else ""))
    store = result.get("tokens_store")
    if store is None:
        print(f"\nno tokens.lance at {result['tokens_path']} (--tokens): bytes per sample not measured")
        return
    print(f"\n{result['tokens_path']}: {store['rows']} rows ({store['samples']} samples), bytes per row "
          f"(lance: {store['bytes_source']}; raw: int16 token grids, int32 sequences, uint8 pixels)")
    for name, m in {**store["modalities"], "tokens only": store["tokens_only"]}.items():
        ratio = f"{m['lance'] / m['raw']:.1%}" if m["raw"] else "-"
        print(f"  {name:<22} {m.get('kind', ''):<15} lance {m['lance']:>9,.1f}  raw {m['raw']:>9,.1f}  {ratio:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per family per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps per family first")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (the median is reported)")
    parser.add_argument("--train-samples", type=int, default=128, help="synthetic training labels per family")
    parser.add_argument("--apply-samples", type=int, default=64, help="labels encoded and decoded per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--tokens", type=Path, default=None,
                        help="a tokens.lance to size (default: flows.yaml's workdir's, if it exists)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 step, 1 round, 4 samples")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.repeats, args.train_samples, args.apply_samples = 1, 1, 1, 4, 4
    torch.set_num_threads(args.threads)
    cfg = load_config()
    m = cfg.modalities
    specs = resolve_specs(sorted({c.modality for c in CASES}), resolution=m.resolution, patch_size=m.patch_size,
                          image_vocab_size=m.image_vocab_size, text_vocab_size=m.text_vocab_size,
                          max_seq_len=m.max_seq_len)
    demo = {name: recipe_options(entry) for name, entry in cfg.tokenizers.image.items()}
    benches = [Bench(c, specs[c.modality], demo, args) for c in CASES]
    for i in range(args.repeats):
        for b in benches:
            b.round()
        print(f"round {i + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    if args.tokens is None:
        from fm21.store.layout import Workdir

        args.tokens = Path(str(Workdir(cfg.workdir).tokens_uri))
    result = {"device": args.device, "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
              "repeats": args.repeats, "train_samples": args.train_samples, "apply_samples": args.apply_samples,
              "quick": args.quick, "scale": f"{m.resolution} px, patch {m.patch_size}, {m.image_vocab_size} codes",
              "families": [b.result() for b in benches], "tokens_path": str(args.tokens),
              "tokens_store": token_store(args.tokens), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
