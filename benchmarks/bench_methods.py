"""GPTQ / AWQ / HQQ / GGUF / bitsandbytes formats on the embedded model: perplexity vs stored bits.

Every method fake-quantizes all 210 linear layers (the tied embedding / lm_head stays as it is) of
the embedded SmolLM2-135M loaded in float32 (its weights are bf16 values, so "bf16" below is the
unquantized model; float32 compute: 5x faster than bf16 on the AVX2 machine this was written on; an
AVX512-BF16 CPU runs bf16 matmuls fast too: a 768x768 matmul there reached 1,146 GFLOP/s in bf16, 324 in
float32). Both CPU kinds gave the same perplexities to 3 decimals except GPTQ g128 (20.387 on an AVX2 EPYC,
20.801 on an AVX512-BF16 Xeon; the cause was not isolated).
Calibration (GPTQ, AWQ): 4,096 tokens of `qlearn.calibration.calibration_text("methods")` (stdlib
docstrings), run layer by layer (each layer sees the earlier layers quantized); evaluation: 4,096
tokens of the offline pydoc text (`ql.perplexity`), a different text.

Default run: the bars (4-bit, group 128, symmetric): bf16, RTN, GPTQ, HQQ, AWQ. Last line:
``gptq_gap_closed=<fraction> hqq_gap_closed=<fraction> awq_over_rtn_ppl=<ratio>``, where
gap_closed = (ppl_rtn - ppl_method) / (ppl_rtn - ppl_bf16).
``--frontier`` adds the other methods and group sizes; ``--runs`` names the rows instead (e.g. the
data-free formats only) and ``--merge`` adds an earlier run's --json rows (same --tokens; every row is a
deterministic perplexity, so a row measured twice gives the same number) to the table, the bars line and
the --png figure. Run: `nice -n 5 .venv/bin/python benchmarks/bench_methods.py [--frontier]`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import qlearn as ql
from qlearn.calibration import calibration_ids
from qlearn.kernels import synchronize
from qlearn.methods import apply as qa

BARS = [("bf16", None), ("rtn", 128), ("gptq", 128), ("hqq", 128), ("awq", 128)]
FRONTIER = [("Q4_1", None), ("rtn-asym", 32), ("rtn-asym", 128), ("rtn", 64), ("rtn-asym", 64), ("rtn", 32),
            ("gptq", 64), ("hqq", 64), ("hqq", 32), ("Q4_0", None), ("Q4_K", None), ("nf4", None), ("nf4+dq", None),
            ("fp4", None), ("int8", None), ("Q8_0", None),
            ("mxfp4", None), ("nvfp4", None), ("fp8-e4m3", None), ("rtn-hadamard", 128)]   # lesson 14's formats
RESULTS = Path(__file__).resolve().parent.parent / "tests" / "_artifacts" / "methods_frontier.json"


def measure(model, tok, method, blocksize, calib, kept, tokens):
    """Apply one method, measure (bits per weight, perplexity, seconds to quantize), restore."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    fq = qa.apply_method(model, method, blocksize or 128, calib_ids=calib, keep_originals=False)
    synchronize(next(model.parameters()).device)          # on a GPU: the queued work is part of the time
    quant_s, quant_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    bits = fq.bits_per_param
    ppl = float(ql.perplexity(model, tok, max_tokens=tokens, progress=False))
    qa.restore_weights(model, kept)
    return {"method": method, "blocksize": blocksize, "bits": bits, "ppl": ppl, "quant_s": quant_s,
            "quant_cpu_s": quant_cpu_s}


def parse_runs(text: str) -> list[tuple[str, int | None]]:
    """"Q4_0,nf4,rtn-asym:32" -> [("Q4_0", None), ("nf4", None), ("rtn-asym", 32)]; method names from apply.METHODS.

    >>> parse_runs("Q4_0,rtn-asym:32")
    [('Q4_0', None), ('rtn-asym', 32)]
    """
    runs = []
    for item in text.split(","):
        method, _, blocksize = item.strip().partition(":")
        if method not in qa.METHODS:
            raise SystemExit(f"--runs: unknown method {method!r}; allowed: {', '.join(qa.METHODS)}")
        runs.append((method, int(blocksize) if blocksize else (128 if method in qa.GROUPED else None)))
    return runs


def print_bars(rows):
    """The bars line, when the rows hold bf16, RTN, GPTQ, HQQ and AWQ at group 128."""
    ppl = {(r["method"], r["blocksize"]): r["ppl"] for r in rows}
    if not all(k in ppl for k in BARS):
        return
    base, rtn_ = ppl[("bf16", None)], ppl[("rtn", 128)]
    gap = rtn_ - base
    gptq = next(r for r in rows if (r["method"], r["blocksize"]) == ("gptq", 128))
    if "quant_cpu_s" in gptq:   # CPU seconds / threads: the wall time on idle cores (this machine is often shared)
        print(f"GPTQ on all 210 linear layers (calibration pass included): {gptq['quant_s']:.0f} s wall, "
              f"{gptq['quant_cpu_s']:.0f} s of CPU on {torch.get_num_threads()} threads; load {os.getloadavg()}")
    closed = {m: (rtn_ - ppl[(m, 128)]) / gap for m in ("gptq", "hqq")}
    print(f"gptq_gap_closed={closed['gptq']:.3f} hqq_gap_closed={closed['hqq']:.3f} "
          f"awq_over_rtn_ppl={ppl[('awq', 128)] / rtn_:.4f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="evaluation tokens (default 4096)")
    parser.add_argument("--calib-tokens", type=int, default=4096, help="calibration tokens (default 4096)")
    parser.add_argument("--frontier", action="store_true", help="every method, also groups 64 and 32")
    parser.add_argument("--runs", type=parse_runs, default=None,
                        help="only these, e.g. 'Q4_0,Q4_K,nf4,rtn-asym:32' (method[:blocksize])")
    parser.add_argument("--merge", type=Path, action="append", default=[],
                        help="rows of an earlier run (its --json, same --tokens) to draw and report with these")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    parser.add_argument("--png", type=Path, default=None, help="frontier figure of every row")
    args = parser.parse_args()
    earlier = []
    for path in args.merge:
        data = json.loads(path.read_text())
        if data["tokens"] != args.tokens:
            raise SystemExit(f"--merge {path}: scored {data['tokens']} tokens, this run {args.tokens}")
        earlier += data["rows"]
    runs = args.runs or BARS + (FRONTIER if args.frontier else [])
    print(f"load: {os.getloadavg()}, torch threads {torch.get_num_threads()}", flush=True)
    model, tok = ql.load("embedded", mode="fp32", verbose=False)
    calib = calibration_ids(tok, "methods", n_tokens=args.calib_tokens)
    kept = qa.keep_weights(model)
    rows = []
    for method, blocksize in runs:
        row = measure(model, tok, method, blocksize, calib, kept, args.tokens)
        rows.append(row)
        print(f"{method:10s} g={blocksize!s:5s} bits={row['bits']:.3f} ppl={row['ppl']:.3f} "
              f"quantize {row['quant_s']:.1f} s  load {os.getloadavg()[0]:.1f}", flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"tokens": args.tokens, "calib_tokens": args.calib_tokens, "rows": rows},
                                        indent=1))
        if (method, blocksize) == BARS[-1]:
            print_bars(earlier + rows)          # as soon as the bars are in, before a frontier's other rows
    every = earlier + rows
    if args.png:
        from qlearn.plots.methods import frontier_figure
        frontier_figure(every).savefig(args.png, dpi=110)
    for r in sorted(every, key=lambda r: r["bits"]):
        print(f"  {r['method']:10s} g={r['blocksize']!s:5s} {r['bits']:7.3f} bits  perplexity {r['ppl']:8.3f}")
    print_bars(every)


if __name__ == "__main__":
    main()
