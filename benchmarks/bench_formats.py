"""MXFP4, NVFP4, FP8 and a Hadamard rotation on the embedded model: perplexity against stored bits.

Every format fake-quantizes all 210 linear layers (the tied embedding / lm_head stays) of the embedded
SmolLM2-135M loaded in float32 (its weights are bf16 values; float32 compute runs fast on any CPU), and
perplexity is scored on 4,096 tokens of the offline evaluation text (`ql.perplexity`). Rows:
bf16; RTN int4 g128 (symmetric, per-row groups of 128, `qlearn.methods.rtn`) as stored and after a
randomized Hadamard rotation ("rtn-hadamard": blocks of 64, seed 0, `qlearn.rotation.rotated`); MXFP4; NVFP4;
NF4 (blocks of 64); FP8 E4M3 and E5M2 per 128 x 128 tile and E4M3 per tensor, all from `qlearn.formats`. Last line:
``mxfp4_ppl=<f> nvfp4_ppl=<f> fp8_e4m3_ppl=<f> hadamard_rtn4_gap_closed=<f>``, where the last is
(ppl_rtn - ppl_rtn_rotated) / (ppl_rtn - ppl_bf16). Every row is a deterministic perplexity.
Run: `nice -n 5 .venv/bin/python benchmarks/bench_formats.py [--json FILE] [--png FILE]`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import qlearn as ql
from qlearn.fakequant import fake_quantize, quantizable_layers
from qlearn.formats import FORMATS

RESULTS = Path(__file__).resolve().parent.parent / "tests" / "_artifacts" / "formats_frontier.json"
# (registry name, blocksize): fp8's blocksize is its tile (None: one scale for the tensor)
RUNS = [("bf16", None), ("rtn", 128), ("rtn-hadamard", 128), ("mxfp4", 32), ("nvfp4", 16), ("nf4", 64),
        ("fp8-e4m3", 128), ("fp8-e4m3", None), ("fp8-e5m2", 128)]


def _quantizer(name, blocksize):
    if name.startswith("fp8") and blocksize is None:
        from qlearn.fp8 import quantize_fp8
        return lambda w: quantize_fp8(w, name.split("-")[1], tile=None)
    return lambda w: FORMATS[name].quantize(w, blocksize)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="evaluation tokens (default 4096)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    parser.add_argument("--png", type=Path, default=None, help="frontier figure")
    args = parser.parse_args()
    print(f"load: {os.getloadavg()}", flush=True)
    model, tok = ql.load("embedded", mode="fp32", verbose=False)
    names = quantizable_layers(model)
    modules = dict(model.named_modules())
    n_weights = sum(modules[n].weight.numel() for n in names)
    rows = []
    for name, blocksize in RUNS:
        t0 = time.perf_counter()
        label = name + ("" if name in ("bf16", "nf4", "mxfp4", "nvfp4") else f" g{blocksize or 'tensor'}")
        if name == "bf16":
            bits, ppl = 16.0, float(ql.perplexity(model, tok, max_tokens=args.tokens, progress=False))
        else:
            with fake_quantize(model, {n: _quantizer(name, blocksize) for n in names}) as fq:
                bits = 8 * sum(fq.nbytes.values()) / n_weights
                ppl = float(ql.perplexity(model, tok, max_tokens=args.tokens, progress=False))
        rows.append({"method": name, "blocksize": blocksize if label != name else None, "bits": bits, "ppl": ppl,
                     "label": label})
        print(f"{label:18s} bits={bits:.3f} ppl={ppl:.3f}  {time.perf_counter() - t0:.0f} s  "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"tokens": args.tokens, "rows": rows}, indent=1))
    if args.png:
        from qlearn.plots.methods import frontier_figure
        frontier_figure(rows).savefig(args.png, dpi=110)
    ppl = {r["label"]: r["ppl"] for r in rows}
    closed = (ppl["rtn g128"] - ppl["rtn-hadamard g128"]) / (ppl["rtn g128"] - ppl["bf16"])
    print(f"mxfp4_ppl={ppl['mxfp4']:.3f} nvfp4_ppl={ppl['nvfp4']:.3f} fp8_e4m3_ppl={ppl['fp8-e4m3 g128']:.3f} "
          f"hadamard_rtn4_gap_closed={closed:.3f}", flush=True)


if __name__ == "__main__":
    main()
