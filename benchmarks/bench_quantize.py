"""qlearn vs bitsandbytes (CPU) on the same 4096x4096 bf16 tensor, in one run.

Prints, per operation, the median time of each side over interleaved repeats (so both see the
same machine load) and the ratio bitsandbytes / qlearn (> 1: qlearn is faster), plus whether the
outputs are bit-identical; then the 4-bit cases again while another process spins on one core
(shared 2-core machines such as Colab and Binder), both libraries called with the caller's default
threads. Run: `.venv/bin/python benchmarks/bench_quantize.py [--repeats N]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

import bitsandbytes.functional as bnbf
import torch

import qlearn as ql

torch._dynamo.config.disable = True   # bitsandbytes' CPU dequantize tries torch.compile; time the eager kernels


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _same_4bit(ours, theirs, state) -> bool:
    packed, st = theirs
    same = torch.equal(ours.packed, packed.view(-1))
    if ours.double_quant:
        return same and torch.equal(ours.absmax, st.absmax) and torch.equal(ours.nested_absmax, st.state2.absmax)
    return same and torch.equal(ours.absmax, st.absmax)


def cases(x: torch.Tensor):
    """(name, qlearn fn, bitsandbytes fn, equality check on their outputs)."""
    return [
        ("nf4 quantize_4bit",
         lambda: ql.quantize_4bit(x, "nf4", 64),
         lambda: bnbf.quantize_4bit(x, blocksize=64, quant_type="nf4"),
         lambda o, t: _same_4bit(o, t, None)),
        ("nf4 + double quant",
         lambda: ql.quantize_4bit(x, "nf4", 64, double_quant=True, dq_rule="bnb_cpu"),
         lambda: bnbf.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True),
         lambda o, t: _same_4bit(o, t, None)),
        ("fp4 quantize_4bit",
         lambda: ql.quantize_4bit(x, "fp4", 64),
         lambda: bnbf.quantize_4bit(x, blocksize=64, quant_type="fp4"),
         lambda o, t: torch.equal(o.dequantize(), bnbf.dequantize_4bit(*t))),
        ("8-bit blockwise (4096)",
         lambda: ql.quantize_blockwise_8bit(x, 4096),
         lambda: bnbf.quantize_blockwise(x, blocksize=4096),
         lambda o, t: f"{float((o.codes == t[0]).float().mean()):.4%} codes agree (exact nearest vs CPU table)"),
        ("8-bit blockwise, bnb_cpu rule",
         lambda: ql.quantize_blockwise_8bit(x, 4096, rule="bnb_cpu"),
         lambda: bnbf.quantize_blockwise(x, blocksize=4096),
         lambda o, t: torch.equal(o.codes, t[0])),
        ("int8 vectorwise (threshold 6)",
         lambda: ql.int8_vectorwise(x, 6.0),
         lambda: torch.ops.bitsandbytes.int8_vectorwise_quant.default(x.clone(), 6.0),
         lambda o, t: torch.equal(o.codes, t[0]) and torch.equal(o.row_absmax, t[1])),
        ("nf4 dequantize",
         lambda: ql.quantize_4bit(x, "nf4", 64).dequantize(),
         lambda: bnbf.dequantize_4bit(*bnbf.quantize_4bit(x, blocksize=64, quant_type="nf4")),
         lambda o, t: torch.equal(o, t)),
    ]


@contextmanager
def one_core_busy():
    """Another process spinning on one core (CPU 0) for the duration: a learner's second kernel."""
    spin = subprocess.Popen([sys.executable, "-c", "import os; os.sched_setaffinity(0, {0})\nwhile True: pass"])
    time.sleep(0.5)                                           # let it start spinning
    try:
        yield
    finally:
        spin.kill()
        spin.wait()


def run(cases_to_time, repeats: int) -> None:
    print(f"{'operation':32s} {'qlearn ms':>10s} {'bnb ms':>10s} {'bnb/qlearn':>11s}  outputs")
    for name, ours, theirs, check in cases_to_time:
        threads = torch.get_num_threads()
        same = check(ours(), theirs())                       # warm-up, and the equality check
        assert torch.get_num_threads() == threads, "qlearn changed the caller's thread count"
        t_ours, t_theirs = [], []
        for _ in range(repeats):
            t_ours.append(_time(ours))
            t_theirs.append(_time(theirs))
        mo, mt = statistics.median(t_ours) * 1e3, statistics.median(t_theirs) * 1e3
        shown = same if isinstance(same, str) else ("bit-identical" if same else "DIFFER")
        print(f"{name:32s} {mo:10.1f} {mt:10.1f} {mt / mo:10.2f}x  {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--skip-idle", action="store_true", help="only the case with one core busy")
    args = parser.parse_args()
    x = torch.randn(args.size, args.size, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    print(f"{args.size}x{args.size} bf16 on CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, median of {args.repeats} interleaved repeats")
    print(ql.backend_info(), "\n")
    if not args.skip_idle:
        print("1. as the machine is (idle, unless something else runs)")
        run(cases(x), args.repeats)
    print("\n2. while another process spins on one core")
    with one_core_busy():
        run(cases(x)[:3], args.repeats)


if __name__ == "__main__":
    main()
