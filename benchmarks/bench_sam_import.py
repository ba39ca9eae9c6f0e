"""Import of the released SAM-instance tokenizer at its real size (ViT-B encoder and decoder,
width 768, 12 blocks, 12 heads, latent 1024, 1024 codes, out_conv), from RANDOM weights.

No network here, so the release folder is made locally: a random-init fm21 ``sam_mask``
(``trunk: vit``) written under the reference's key names (apple/ml-4m `fourm/vq/vqvae.py`,
`fourm/vq/models/vit_models.py`) with the patch projection converted to the reference's
{0, 1} input, ``config.json`` with ``random_init: true``. Then ``import_tokenizer`` (timed)
-> the imported model must give the source model's token ids and mask probabilities on
the same masks (a round trip through the reference layout), encode/decode timed.

    .venv/bin/python benchmarks/bench_sam_import.py [--masks 32]

Prints a table and one JSON line (``"weights": "random"``).
Measured (shared 2-core CPU, nice 19, load ~5): 181.5M parameters, 330 tensors mapped, import
11.1 s, 32 masks encoded in 5.8 s and decoded in 5.0 s, ids identical (32 x 16), max
probability difference 2.2e-06.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fm21.modalities import MODALITIES  # noqa: E402
from fm21.tokenize import sam_mask  # noqa: E402
from fm21.tokenize.checkpoint import load_tokenizer  # noqa: E402
from fm21.tokenize.import_released import import_tokenizer  # noqa: E402

VIT_B = {"trunk": "vit", "hidden_dim": 768, "num_layers": 12, "num_heads": 12, "latent_dim": 1024,
         "vocab_size": 1024}
# fm21 key prefix -> the reference's
RENAMES = {"to_latent.": "quant_proj.", "from_latent.": "post_quant_proj.",
           "quantizer.codebook": "quantize._codebook.embed", "quantizer.cluster_size": "quantize._codebook.cluster_size"}


def reference_state(tok: sam_mask.SamMaskTokenizer) -> dict[str, torch.Tensor]:
    """``tok``'s weights as a released state dict: reference names, {0, 1} patch projection."""
    out = {}
    for key, value in tok.state_dict().items():
        ref = next((r + key[len(f):] for f, r in RENAMES.items() if key.startswith(f)), key)
        out[ref] = value.detach().clone().contiguous()
    weight = out["encoder.proj.weight"] * 2  # W01 x01 + b01 == W x + b for x = 2 x01 - 1
    out["encoder.proj.bias"] = out["encoder.proj.bias"] - weight.sum(dim=(1, 2, 3)) / 2
    out["encoder.proj.weight"] = weight
    out["quantize._codebook.initted"] = torch.ones(1)
    return out


def box_masks(n: int, seed: int = 0) -> np.ndarray:
    """``n`` box-crop-like masks (64 x 64): a random ellipse and a random rectangle each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    out = []
    for _ in range(n):
        cx, cy, rx, ry = rng.uniform(16, 48), rng.uniform(16, 48), rng.uniform(8, 32), rng.uniform(8, 32)
        x0, y0 = rng.integers(0, 40, 2)
        out.append((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1) | ((xx >= x0) & (yy >= y0) & (xx < x0 + 20)))
    return np.stack(out).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--masks", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    source = sam_mask.build(sam_mask.SamMaskConfig.from_spec(MODALITIES["sam_instance"], VIT_B)).eval()
    params = sum(p.numel() for p in source.parameters())
    masks = box_masks(args.masks)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "release"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({
            "enc_type": "vit_b_enc", "dec_type": "vit_b_dec", "out_conv": True, "post_mlp": True, "patch_size": 16,
            "image_size": 64, "n_channels": 1, "codebook_size": 1024, "latent_dim": 1024, "quant_type": "lucid",
            "norm_codes": True, "random_init": True}))
        save_file(reference_state(source), str(folder / "model.safetensors"))
        start = time.perf_counter()
        report = import_tokenizer(Path(tmp) / "out", path=folder, modality="sam_instance")
        import_s = time.perf_counter() - start
        tok = load_tokenizer(Path(tmp) / "out")
    start = time.perf_counter()
    ids = tok.encode_labels(masks)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    probs = tok.decode_probs(ids)
    decode_s = time.perf_counter() - start
    same_ids = bool(np.array_equal(ids, source.encode_labels(masks)))
    prob_diff = float(np.abs(probs - source.decode_probs(ids)).max())
    row = {"weights": "random", "parameters_m": round(params / 1e6, 1), "tensors_mapped": report["mapped"],
           "import_s": round(import_s, 2), "masks": args.masks, "encode_s": round(encode_s, 2),
           "decode_s": round(decode_s, 2), "ids_identical": same_ids, "max_prob_diff": prob_diff,
           "random_parts": report["random"]}
    print("| parameters | import | encode | decode | ids identical | max prob diff |")
    print("|---|---|---|---|---|---|")
    print(f"| {row['parameters_m']}M (random) | {import_s:.1f} s | {args.masks} masks {encode_s:.1f} s | "
          f"{decode_s:.1f} s | {same_ids} | {prob_diff:.1e} |")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
