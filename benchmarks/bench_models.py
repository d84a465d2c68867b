"""Per mode on the embedded model (CPU unless CUDA is present): load time, tokens/s and footprint,
each also as a ratio to bf16 measured in the same run.

    python benchmarks/bench_models.py                       # bf16 int8 nf4 nf4+dq fp4, 32 new tokens
    python benchmarks/bench_models.py --modes bf16,fp32,nf4 --new-tokens 16 --json bench.json
    python benchmarks/bench_models.py --new-tokens 128 --disable-compile     # on a GPU: generate's default path vs not

Greedy generation of a fixed number of tokens (``timed_generate``: min_new_tokens = max_new_tokens, so every
mode does the same work) after a warm-up generate, synchronized on CUDA. One model in memory at a time.
Absolute numbers depend on the machine and on what else runs on it; the ratios are the point: on a CPU 4-bit
buys memory, not speed; on a GPU measure (a 135M model's decode step is launch-bound, not bandwidth-bound).
"""

import argparse
import json
import logging
import sys

import torch

import qlearn as ql
from qlearn import memory
from qlearn.models import measure_mode, timed_generate

PROMPT = "What is the capital of France?"


def bench_mode(mode, new_tokens, device_map, **generate_kwargs):
    """Load, time a fixed-length generation (``timed_generate``: warm, synchronized), read the footprint, free."""
    def measure(model, tok):
        fp = memory.footprint(model)
        answer = timed_generate(model, tok, PROMPT, new_tokens, **generate_kwargs)
        return dict(tokens_per_s=answer.tokens_per_s, ms_per_token=answer.ms_per_token,
                    reported_bytes=fp.reported_bytes, true_bytes=fp.true_bytes)

    return measure_mode("embedded", mode, measure, device_map=device_map)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default="bf16,int8,nf4,nf4+dq,fp4")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--device-map", default="auto")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--disable-compile", action="store_true",
                   help="pass disable_compile=True to model.generate (transformers' default path off)")
    args = p.parse_args(argv)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "bf16" not in modes:
        modes.insert(0, "bf16")   # the reference for the ratios
    ql.embedded_model_path()
    extra = {"disable_compile": True} if args.disable_compile else {}
    bench_mode("nf4", 1, args.device_map, **extra)   # warm-up: imports and first-call costs stay out of the timings
    rows = [bench_mode(m, args.new_tokens, args.device_map, **extra) for m in modes]
    ref = next(r for r in rows if r["mode"] == "bf16")
    for r in rows:
        for key in ("load_s", "tokens_per_s", "true_bytes"):
            r[f"{key}_vs_bf16"] = r[key] / ref[key]
    print(ql.backend_info(), "\n")
    print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}, torch threads {torch.get_num_threads()}, "
          f"{args.new_tokens} tokens at fixed length{', disable_compile=True' if extra else ''}")
    print(f"{'mode':>7} {'load s':>7} {'x bf16':>7} {'tok/s':>7} {'x bf16':>7} {'true MB':>8} {'x bf16':>7}")
    for r in rows:
        print(f"{r['mode']:>7} {r['load_s']:7.2f} {r['load_s_vs_bf16']:7.2f} {r['tokens_per_s']:7.2f} "
              f"{r['tokens_per_s_vs_bf16']:7.2f} {r['true_bytes'] / 1e6:8.1f} {r['true_bytes_vs_bf16']:7.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
