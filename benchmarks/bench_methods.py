"""GPTQ / AWQ / HQQ / GGUF / bitsandbytes formats on the embedded model: perplexity vs stored bits.

Every method fake-quantizes all 210 linear layers (the tied embedding / lm_head stays as it is) of
the embedded SmolLM2-135M loaded in float32 (its weights are bf16 values, so "bf16" below is the
unquantized model; float32 compute because this CPU has no bf16 matrix unit: 5x faster here).
Calibration (GPTQ, AWQ): 4,096 tokens of `qlearn.methods.apply.calibration_text()` (stdlib
docstrings), run layer by layer (each layer sees the earlier layers quantized); evaluation: 4,096
tokens of the offline pydoc text (`ql.perplexity`), a different text.

Default run: the bars (4-bit, group 128, symmetric): bf16, RTN, GPTQ, HQQ, AWQ. Last line:
``gptq_gap_closed=<fraction> hqq_gap_closed=<fraction> awq_over_rtn_ppl=<ratio>``, where
gap_closed = (ppl_rtn - ppl_method) / (ppl_rtn - ppl_bf16).
``--frontier`` adds the other methods and group sizes, writes the table to --json and the figure
to --png. Run: `nice -n 5 .venv/bin/python benchmarks/bench_methods.py [--frontier]`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import qlearn as ql
from qlearn.methods import apply as qa

BARS = [("bf16", None), ("rtn", 128), ("gptq", 128), ("hqq", 128), ("awq", 128)]
FRONTIER = [("Q4_1", None), ("rtn-asym", 32), ("rtn-asym", 128), ("rtn", 64), ("rtn-asym", 64), ("rtn", 32),
            ("gptq", 64), ("hqq", 64), ("hqq", 32), ("Q4_0", None), ("Q4_K", None), ("nf4", None), ("nf4+dq", None),
            ("fp4", None), ("int8", None), ("Q8_0", None)]
RESULTS = Path(__file__).resolve().parent.parent / "tests" / "_artifacts" / "methods_frontier.json"


def measure(model, tok, method, group, calib, kept, tokens):
    """Apply one method, measure (bits per weight, perplexity, seconds to quantize), restore."""
    t0 = time.perf_counter()
    fq = qa.apply_method(model, method, group or 128, calib_ids=calib, keep_originals=False)
    quant_s = time.perf_counter() - t0
    bits = qa.bits_per_param(fq, model)
    ppl = float(ql.perplexity(model, tok, max_tokens=tokens, progress=False))
    qa.restore_weights(model, kept)
    return {"method": method, "group": group, "bits": bits, "ppl": ppl, "quant_s": quant_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="evaluation tokens (default 4096)")
    parser.add_argument("--calib-tokens", type=int, default=4096, help="calibration tokens (default 4096)")
    parser.add_argument("--frontier", action="store_true", help="every method, also groups 64 and 32")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    parser.add_argument("--png", type=Path, default=None, help="frontier figure (with --frontier)")
    args = parser.parse_args()
    print(f"load: {os.getloadavg()}, torch threads {torch.get_num_threads()}", flush=True)
    model, tok = ql.load("embedded", mode="fp32", verbose=False)
    calib = qa.calibration_ids(tok, args.calib_tokens)
    kept = qa.keep_weights(model)
    rows = []
    for method, group in BARS + (FRONTIER if args.frontier else []):
        row = measure(model, tok, method, group, calib, kept, args.tokens)
        rows.append(row)
        print(f"{method:10s} g={group!s:5s} bits={row['bits']:.3f} ppl={row['ppl']:.3f} "
              f"quantize {row['quant_s']:.1f} s  load {os.getloadavg()[0]:.1f}", flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"tokens": args.tokens, "calib_tokens": args.calib_tokens, "rows": rows},
                                        indent=1))
    if args.frontier and args.png:
        from qlearn.plots.methods import frontier_figure
        frontier_figure(rows).savefig(args.png, dpi=110)
    ppl = {(r["method"], r["group"]): r["ppl"] for r in rows}
    base, rtn_ = ppl[("bf16", None)], ppl[("rtn", 128)]
    gap = rtn_ - base
    gptq_closed = (rtn_ - ppl[("gptq", 128)]) / gap
    hqq_closed = (rtn_ - ppl[("hqq", 128)]) / gap
    awq_ratio = ppl[("awq", 128)] / rtn_
    gptq_s = next(r["quant_s"] for r in rows if r["method"] == "gptq")
    print(f"GPTQ on all 210 linear layers (calibration pass included): {gptq_s:.0f} s; load {os.getloadavg()}")
    print(f"gptq_gap_closed={gptq_closed:.3f} hqq_gap_closed={hqq_closed:.3f} awq_over_rtn_ppl={awq_ratio:.4f}")


if __name__ == "__main__":
    main()
