"""Latency of the explorers: time from a control change to the figure redrawn (PNG bytes ready).

A change is made the way a learner makes it, by setting `explorer.controls[name].value`, which
runs the explorer's callback: quantize (unless cached), update the artists, render the PNG.
Cases: the histogram explorer on a real 576x1536 layer of the embedded SmolLM2
(model.layers.3.mlp.down_proj, bf16 -> float32) and on a 1M-value synthetic tensor, each over
a sequence of new parameter sets ("cold": nothing cached) and then moves between values seen
before ("warm": cached quantization, redraw only); plus the other weight explorers for reference.
Prints median / p95 wall time and median CPU time of this process (CPU time shows what the
machine's other load adds to the wall time). Target: median <= 100 ms, p95 <= 250 ms.

Each renderer named by --renderers (`Explorer.renderer`: "agg" = plain Agg via savefig, "fast" =
FastRenderer) gets its own explorer on the same tensor; every change is applied to each of them in
turn (the order alternating from one change to the next), so both see the same sequence, the same
cache states and the same moments of the machine's load. The last columns: ratio to the first renderer.

Run: `.venv/bin/python benchmarks/bench_widgets.py [--no-model] [--repeats N] [--renderers agg,fast]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial

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


def build(make, renderer: str):
    """An explorer from `make()` that renders with `renderer` from its first draw on."""
    default = widgets.Explorer.renderer
    widgets.Explorer.renderer = renderer
    try:
        w = make()
    finally:
        widgets.Explorer.renderer = default
    w.renderer = renderer
    return w


def measure(explorers: dict, changes, out: dict) -> None:
    """Apply each change to every explorer in turn (alternating the order); append wall and CPU
    seconds per renderer to out[renderer] = ([wall], [cpu])."""
    order = list(explorers)
    for step, (name, value) in enumerate(changes):
        for renderer in (order if step % 2 == 0 else order[::-1]):
            w = explorers[renderer]
            if w.controls[name].value == value:
                continue
            t0, c0 = time.perf_counter(), time.process_time()
            w.controls[name].value = value            # observe -> update -> draw -> PNG
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert w.error is None, w.error
            out.setdefault(renderer, ([], []))[0].append(wall)
            out[renderer][1].append(cpu)


def _p95(ms: list[float]) -> float:
    ms = sorted(ms)
    return ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]


def report(label: str, results: dict) -> None:
    """One line per renderer: n, median / p95 wall, median CPU, target met, ratio to the first."""
    base = None
    for renderer, (wall, cpu) in results.items():
        wall_ms, cpu_ms = [1e3 * t for t in wall], [1e3 * t for t in cpu]
        med, p95, cpu_med = statistics.median(wall_ms), _p95(wall_ms), statistics.median(cpu_ms)
        ok = "ok" if med <= 100 and p95 <= 250 else "OVER"
        ratio = "" if base is None else f"  x{med / base[0]:.2f} wall, x{cpu_med / base[1]:.2f} cpu"
        base = base or (med, cpu_med)
        print(f"{label:<52} {renderer:<4} n={len(wall_ms):>3}  median {med:6.1f} ms  p95 {p95:6.1f} ms  "
              f"cpu median {cpu_med:5.1f} ms  {ok:<4}{ratio}")
        ROWS.append((label, renderer, len(wall_ms), med, p95, cpu_med, ok))


ROWS: list = []


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
    parser.add_argument("--renderers", default="agg,fast", help="comma-separated Explorer.renderer values")
    args = parser.parse_args()
    renderers = args.renderers.split(",")
    print(f"load average at start: {os.getloadavg()}; torch threads {torch.get_num_threads()} "
          f"(explorers redraw with {widgets.Explorer.threads}); renderers {renderers}")
    tensors = {"synthetic normal 1,048,576 (1024x1024)": sources.synthetic("normal", 2 ** 20, shape=(1024, 1024))}
    if not args.no_model:
        tensors = {"real layer 576x1536 (layers.3.mlp.down_proj)": real_layer(), **tensors}
    for name, x in tensors.items():
        cold: dict = {}
        warm: dict = {}
        for _ in range(args.repeats):
            ws = {r: build(partial(widgets.histogram_explorer, x), r) for r in renderers}   # empty caches
            measure(ws, _changes_cold(), cold)
            measure(ws, _changes_warm(), warm)
        report(f"histogram_explorer, {name}, cold", cold)
        report(f"histogram_explorer, {name}, warm", warm)
        report(f"histogram_explorer, {name}, all",
               {r: (cold[r][0] + warm[r][0], cold[r][1] + warm[r][1]) for r in cold})
    others = [
        (partial(widgets.nf4_explorer, n=2 ** 20), [("blocksize", bs) for bs in (32, 128, 256, 64)] +
         [("offset", o) for o in (0.95, 0.96, 0.97, 0.98)]),
        (partial(widgets.zeropoint_explorer, n=2 ** 20), [("bits", b) for b in (2, 3, 5, 6, 7, 8)] +
         [("shift", s) for s in (0.5, 1.0)]),
        (widgets.double_quant_explorer, [("blocksize", bs) for bs in (32, 128, 256, 512)] +
         [("model_size", n) for n in (13e9, 70e9, 1e9)]),
    ]
    for make, seq in others:
        out: dict = {}
        for _ in range(args.repeats):
            ws = {r: build(make, r) for r in renderers}
            measure(ws, seq, out)
        report(f"{ws[renderers[0]].name} (1M values where a tensor)", out)
    print(f"load average at end: {os.getloadavg()}")
    for renderer in renderers:
        rows = [row for row in ROWS if row[1] == renderer]
        over = [row[0] for row in rows if row[-1] != "ok"]
        print(f"{renderer}: target (median <= 100 ms, p95 <= 250 ms) met on {len(rows) - len(over)} of "
              f"{len(rows)} rows" + (f"; over on: {'; '.join(over)}" if over else ""))


if __name__ == "__main__":
    main()
