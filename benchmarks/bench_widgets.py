"""Latency of the explorers: time from a control change to the figure redrawn (PNG bytes ready).

A change is made the way a learner makes it, by setting `explorer.controls[name].value`, which
runs the explorer's callback: quantize (unless cached), update the artists, render the PNG.
Cases: the histogram explorer on a real 576x1536 layer of the embedded SmolLM2
(model.layers.3.mlp.down_proj, bf16 -> float32) and on a 1M-value synthetic tensor, each over
a sequence of new parameter sets ("cold": nothing cached) and then moves between values seen
before ("warm": cached quantization, redraw only); plus the other weight explorers for reference.
Prints median / p95 wall time and median CPU time of this process (CPU time shows what the
machine's other load adds to the wall time). Target: median <= 100 ms, p95 <= 250 ms.

Run: `.venv/bin/python benchmarks/bench_widgets.py [--no-model] [--repeats N]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import qlearn as ql
from qlearn import sources, widgets


def _changes_cold():
    """A learner's session: every parameter set new (the explorer caches 8 results)."""
    seq = []
    for scheme in ("absmax", "zeropoint"):
        seq.append(("scheme", scheme))
        for granularity in ("block", "row", "tensor"):
            seq.append(("granularity", granularity))
            seq += [("bits", b) for b in (3, 4, 5, 6, 7, 8, 2)]
    seq.append(("granularity", "block"))
    for scheme in ("nf4", "fp4"):
        seq.append(("scheme", scheme))
        seq += [("blocksize", bs) for bs in (32, 128, 256, 512, 1024, 2048, 4096, 64)]
    return seq


def _changes_warm():
    """Moving between values already seen: bits back and forth, the block slider."""
    seq = [("scheme", "absmax"), ("granularity", "block"), ("blocksize", 64)]
    seq += [("bits", b) for b in (3, 4, 3, 4, 5, 4, 3, 4, 5, 4)]
    seq += [("group", g) for g in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)]
    return seq


def measure(w, changes) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for name, value in changes:
        if w.controls[name].value == value:
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        w.controls[name].value = value            # observe -> update -> draw -> PNG
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        assert w.error is None, w.error
    return wall, cpu


def report(label: str, wall: list[float], cpu: list[float]) -> None:
    wall_ms = sorted(1e3 * t for t in wall)
    p95 = wall_ms[min(len(wall_ms) - 1, round(0.95 * (len(wall_ms) - 1)))]
    ok = "ok" if statistics.median(wall_ms) <= 100 and p95 <= 250 else "over target"
    print(f"{label:<44} n={len(wall_ms):>3}  median {statistics.median(wall_ms):6.1f} ms  "
          f"p95 {p95:6.1f} ms  (cpu median {1e3 * statistics.median(cpu):5.1f} ms)  {ok}")


def real_layer() -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ql.embedded_model_path(), dtype=torch.bfloat16)
    weight = sources.layer_weight(model, "model.layers.3.mlp.down_proj")     # (576, 1536)
    del model
    return weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-model", action="store_true", help="skip the real layer (no embedded model)")
    parser.add_argument("--repeats", type=int, default=1, help="repeat each sequence N times")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}; torch threads {torch.get_num_threads()} "
          f"(explorers redraw with {widgets.Explorer.threads})")
    tensors = {"synthetic normal 1,048,576 (1024x1024)": sources.synthetic("normal", 2 ** 20, shape=(1024, 1024))}
    if not args.no_model:
        tensors = {"real layer 576x1536 (layers.3.mlp.down_proj)": real_layer(), **tensors}
    for name, x in tensors.items():
        cold = ([], [])
        warm = ([], [])
        for _ in range(args.repeats):
            w = widgets.histogram_explorer(x)            # a fresh explorer: empty cache
            for acc, seq in ((cold, _changes_cold()), (warm, _changes_warm())):
                wall, cpu = measure(w, seq)
                acc[0].extend(wall)
                acc[1].extend(cpu)
        report(f"histogram_explorer, {name}, cold", *cold)
        report(f"histogram_explorer, {name}, warm", *warm)
        report(f"histogram_explorer, {name}, all", cold[0] + warm[0], cold[1] + warm[1])
    others = [
        (widgets.nf4_explorer(n=2 ** 20), [("blocksize", bs) for bs in (32, 128, 256, 64)] +
         [("offset", o) for o in (0.95, 0.96, 0.97, 0.98)]),
        (widgets.zeropoint_explorer(n=2 ** 20), [("bits", b) for b in (2, 3, 5, 6, 7, 8)] +
         [("shift", s) for s in (0.5, 1.0)]),
        (widgets.double_quant_explorer(), [("blocksize", bs) for bs in (32, 128, 256, 512)] +
         [("model_size", n) for n in (13e9, 70e9, 1e9)]),
    ]
    for w, seq in others:
        report(f"{w.name} (1M values where a tensor)", *measure(w, seq))
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
