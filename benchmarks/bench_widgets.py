"""Latency of the explorers while a slider is dragged, and whether every frame equals a full render.

Every explorer at its lesson's defaults, on the embedded SmolLM2's real layers where its lesson uses them:
histogram (lesson 2's eight layers), zero-point (lesson 2), NF4 (lesson 3), double quant (lesson 5),
outlier (lesson 6: layers.15 q_proj on the lesson's prompt), speed (lesson 9's modes; the time splits are
invented, the drawing is what is timed), mixed precision (lesson 10: the cached sensitivities of the 210
layers when ~/.cache/qlearn has them, else seeded stand-ins), method (lesson 11: layers.3 down_proj, GPTQ)
block formats (lesson 14: layers.0 q_proj) and fine-tuning (lesson 12: three seeded stand-in runs, no model, no
training). The generation explorer redraws only on its button.

Live sequence: each slider dragged the way `continuous_update` sends it, one step at a time, forth and
back, plus the lesson's dropdown flips once their results are cached (the first, cold computation of a
new method or layer is not a redraw and is left out). Each change is made as the front end makes it
(`explorer.controls[name].value = v`: callback, math, artists, PNG) and timed: wall and CPU time of this
process (CPU time shows what the machine's other load adds to the wall time; the load average is printed).
Target: median <= 33 ms, p95 <= 66 ms per change for every explorer.

Correctness: after every live change, the frame shown is compared with a full fresh render of the same
state (a new explorer with the same arguments set to the same values, rendered by plain Agg), pixel
for pixel; `frames_differing` counts the frames that are not identical.

Last line: `live_median_ms=<worst explorer's median> live_p95_ms=<worst p95> frames_differing=<count>`.
Run: `.venv/bin/python benchmarks/bench_widgets.py [--no-model] [--only zeropoint,nf4] [--repeats N]
[--renderer fast|agg] [--no-check]`. Before/after on the same machine: run it on each tree, back to back.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import statistics
import time

import numpy as np
import torch

from qlearn import sources, widgets

LAYER_11 = ("model.layers.3.self_attn.q_proj", "model.layers.3.mlp.down_proj")


def steps(name, values) -> list:
    """A slider dragged through `values`, one step at a time."""
    return [(name, v) for v in values]


def there_and_back(name, values) -> list:
    values = list(values)
    return steps(name, values + values[-2::-1])


def load_real():
    """What the lessons hand the explorers, from the embedded model (one load, bf16; fp32 for lesson 11)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlearn.models import embedded_model_path
    from qlearn.widgets.methods import layer_data
    path = embedded_model_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    tok = AutoTokenizer.from_pretrained(path)
    names = sources.linear_layer_names(model)
    picked = [n for n in names if n.startswith("model.layers.0.")][:7] + [names[len(names) // 2]]
    data = {"weights": {n: sources.layer_weight(model, n) for n in picked}, "model": model, "tok": tok,
            "mx": {n: sources.layer_weight(model, n) for n in ("model.layers.0.self_attn.q_proj",
                                                               "model.layers.0.mlp.down_proj")}}
    data["method"] = layer_data(model.float(), tok, list(LAYER_11), max_tokens=128)
    model.to(torch.bfloat16)
    return data


def synthetic():
    """Seeded stand-ins with the real layers' shapes (--no-model)."""
    from qlearn.methods.layer import synthetic_layer
    g = torch.Generator().manual_seed(0)
    w = {f"layer {i}": torch.randn(576, 576 if i else 1536, generator=g) * 0.02 for i in range(3)}
    mw = {n: synthetic_layer(576, 576 if "q_proj" in n else 1536, tokens=128, seed=i) for i, n in enumerate(LAYER_11)}
    return {"weights": w, "model": None, "tok": None, "mx": {k: v for k, v in list(w.items())[:2]},
            "method": ({n: v[0] for n, v in mw.items()}, {n: v[1] for n, v in mw.items()})}


def sensitivities():
    """The cached real sensitivities with the most layers, or seeded stand-ins."""
    from pathlib import Path

    from qlearn import mixed, sensitivity
    from qlearn.models import cache_dir
    files = sorted(Path(cache_dir(), "sensitivity").glob("*.json"))
    loaded = [sensitivity._load(f) for f in files]
    loaded = [s for s in loaded if set(mixed.PLAN_FORMATS) <= set(s.formats)] or loaded
    if loaded:
        return max(loaded, key=lambda s: len(s.layers)), "cached, real"
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_mixed import _FakeSensitivity
    return _FakeSensitivity(), "seeded stand-in"


def speed_inputs():
    """Lesson 9's explorer inputs: (mode, batch) -> TimeSplit and roofline points (invented timings)."""
    from qlearn.kernels import TimeSplit

    def parts(s):
        return {("attention", "matmul"): 0.2 * s, ("mlp", "dequantize"): 0.3 * s, ("mlp", "matmul"): 0.4 * s,
                ("lm_head", "matmul"): 0.05 * s, ("other", "other"): 0.05 * s}
    modes = (("bf16", 1.0), ("int8", 2.2), ("nf4", 1.5), ("int4 fused", 0.7), ("int4 dequant", 1.3))
    splits = {(m, b): TimeSplit(m, b, 1, 0.02 * f * b ** 0.4, 0.022 * f * b ** 0.4, parts(0.02 * f * b ** 0.4))
              for m, f in modes for b in (1, 4, 16, 64)}
    points = [dict(label=m, batch=b, measured_s=s.forward_s, memory_s=0.008, compute_s=0.0004 * b)
              for (m, b), s in splits.items()]
    return splits, points


def finetune_inputs():
    """Lesson 12's explorer inputs with no model: three seeded stand-in runs (12 steps, a checkpoint every 2, the
    held-out loss falling from ~3.5 as the lesson's does), its questions, and a runner that refuses to train."""
    from qlearn.finetune.lora import Run
    rng = np.random.default_rng(0)
    prompts, expected = ("17 + 25 =", "9 x 6 =", "100 - 37 ="), ("42", "54", "63")
    checkpoints = tuple(range(0, 13, 2))
    runs = {}
    for i, key in enumerate([(8, "all-linear"), (4, "all-linear"), (8, "attention")]):
        rate = 0.35 - 0.08 * i
        heldout = tuple(3.5 * (0.02 + 0.98 * np.exp(-rate * s)) for s in checkpoints)
        train = tuple(3.5 * (0.02 + 0.98 * np.exp(-rate * s)) * np.exp(rng.normal(0, 0.15)) for s in range(12))
        answers = tuple(tuple(e if s >= 4 * (j + 1) + 2 * i else "?" for j, e in enumerate(expected))
                        for s in checkpoints)
        runs[key] = Run(train, checkpoints, heldout, answers, 60.0 + 10 * i, 12 * 4 * 50, 1_000_000 >> i)

    def runner(rank, targets):
        raise AssertionError(f"the bench trains nothing: ({rank}, {targets!r}) has no stand-in run")
    return runner, runs, prompts, expected


def cases(data, sens):
    """name -> (factory, live sequence): each explorer at its lesson's defaults."""
    from qlearn import mixed
    from qlearn.widgets.methods import MethodExplorer
    from qlearn.widgets.microscaling import BlockFormatExplorer
    from qlearn.widgets.mixed import mixed_precision_explorer
    from qlearn.widgets.models import DEFAULT_PROMPT

    budget = round(mixed.uniform(mixed.tables(sens, mixed.PLAN_FORMATS), "nf4+dq/64").bits_per_weight, 3)
    mw, mx = data["method"]
    out = {
        "histogram": (lambda: widgets.histogram_explorer(data["weights"], scheme="absmax", bits=4, granularity="block",
                                                         blocksize=64),
                      there_and_back("bits", [4, 3, 2, 3, 4, 5, 6, 7, 8]) + there_and_back("group", range(0, 16))
                      + there_and_back("blocksize", [64, 128, 256, 512, 1024, 2048, 4096])),
        "zeropoint": (lambda: widgets.zeropoint_explorer(bits=4),
                      there_and_back("bits", [4, 3, 2, 3, 4, 5, 6, 7, 8])
                      + there_and_back("shift", [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5])),
        "nf4": (widgets.nf4_explorer, there_and_back("offset", [round(0.9677 + 0.0005 * i, 4) for i in range(0, 20)])
                + there_and_back("blocksize", [64, 128, 256, 512, 1024])),
        "double_quant": (lambda: widgets.double_quant_explorer(blocksize=64, model_size=70e9),
                         there_and_back("blocksize", [64, 128, 256, 512, 1024, 2048, 4096])
                         + there_and_back("model_size", [70e9, 65e9, 33e9, 13e9, 7e9, 1e9, 135e6])),
        "speed": (lambda: widgets.speed_explorer(*speed_inputs(), mode="int4 fused", batch=1),
                  there_and_back("batch", [1, 4, 16, 64])
                  + [("mode", "bf16"), ("mode", "nf4"), ("mode", "int4 fused")]),
        "mixed": (lambda: mixed_precision_explorer(sens, budget=budget),
                  there_and_back("budget", [round(budget + 0.001 * i, 3) for i in range(0, 25)])),
        "method": (lambda: MethodExplorer(mw, mx, layer=LAYER_11[1], method="gptq"),
                   there_and_back("row", range(0, 20))),
        "block_format": (lambda: BlockFormatExplorer({**data["mx"]}),
                         there_and_back("window", range(0, 12)) + there_and_back("row", range(0, 12))),
    }
    runner, runs, prompts, expected = finetune_inputs()
    out["finetune"] = (lambda: widgets.finetune_explorer(runner, runs=runs, prompts=prompts, expected=expected),
                       there_and_back("step", range(12, -1, -2)) + [("rank", 4)] + there_and_back("step", [12, 10, 8])
                       + [("rank", 8), ("targets", "attention"), ("targets", "all-linear")])
    if data["model"] is not None:
        thresholds = [round(6.0 * 10 ** (-0.02 * i), 3) for i in range(0, 25)]
        out["outlier"] = (lambda: widgets.outlier_explorer(data["model"], data["tok"],
                                                            layer="model.layers.15.self_attn.q_proj",
                                                            prompt=DEFAULT_PROMPT, threshold=6.0),
                          there_and_back("threshold", thresholds))
    return out


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


def pixels(png: bytes) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def run_case(make, moves, renderer: str, check: bool) -> tuple[list, list, int, int]:
    """Drive one explorer through `moves`: ([wall s], [cpu s], frames checked, frames differing)."""
    w = build(make, renderer)
    assert w.error is None, w.error
    wall, cpu, frames = [], [], []
    for name, value in moves:
        if w.controls[name].value == value:
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        w.controls[name].value = value                   # observe -> update -> draw -> PNG
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        assert w.error is None, f"{name}={value!r}: {w.error}"
        if check:
            frames.append((bytes(w.image.value), w.values()))
    differing = 0
    for png, values in frames:
        fresh = build(make, "agg")
        fresh.update(**values)
        assert fresh.error is None, fresh.error
        differing += not np.array_equal(pixels(png), pixels(bytes(fresh.image.value)))
    return wall, cpu, len(frames), differing


def p95(ms: list[float]) -> float:
    ms = sorted(ms)
    return ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]


def memoize_methods():
    """Lesson 11's GPTQ / AWQ runs once per (layer, method, blocksize) for the fresh explorers of the
    correctness check (each would run it again in its first draw)."""
    import qlearn.widgets.methods as wm
    quantize = wm.quantize_layer

    @functools.lru_cache(maxsize=64)
    def cached(method, w_id, x_id, blocksize, w, x):
        return quantize(method, w, x, blocksize)
    wm.quantize_layer = lambda method, w, x, blocksize: cached(method, id(w), id(x), blocksize, w, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-model", action="store_true", help="seeded stand-ins instead of the embedded model")
    parser.add_argument("--only", default="", help="comma-separated explorer names")
    parser.add_argument("--repeats", type=int, default=1, help="drive each sequence N times (fresh explorers)")
    parser.add_argument("--renderer", default="fast", help="Explorer.renderer: fast or agg")
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with full renders")
    args = parser.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    data = synthetic() if args.no_model else load_real()
    sens, sens_kind = sensitivities()
    memoize_methods()
    print(f"setup {time.perf_counter() - t0:.0f} s; torch threads {torch.get_num_threads()} (explorers redraw with "
          f"{widgets.Explorer.threads}); renderer {args.renderer}; sensitivities: {sens_kind}, "
          f"{len(sens.layers)} layers; {'seeded stand-ins' if args.no_model else 'real layers'}")
    rows, total_differing = [], 0
    for name, (make, moves) in cases(data, sens).items():
        if args.only and name not in args.only.split(","):
            continue
        load = os.getloadavg()[0]
        wall, cpu, checked, differing = [], [], 0, 0
        for _ in range(args.repeats):
            w_, c_, n_, d_ = run_case(make, moves, args.renderer, not args.no_check and _ == 0)
            wall += w_
            cpu += c_
            checked, differing = checked + n_, differing + d_
        total_differing += differing
        ms, cpu_ms = [1e3 * t for t in wall], [1e3 * t for t in cpu]
        row = (name, len(ms), statistics.median(ms), p95(ms), statistics.median(cpu_ms), p95(cpu_ms), load,
               os.getloadavg()[0], checked, differing)
        rows.append(row)
        print(f"{name:<13} n={row[1]:>3}  wall median {row[2]:6.1f} ms  p95 {row[3]:6.1f} ms   cpu median "
              f"{row[4]:5.1f} p95 {row[5]:5.1f} ms   load {row[6]:.1f}->{row[7]:.1f}   frames checked {checked}, "
              f"differing {differing}", flush=True)
    over = [r[0] for r in rows if r[2] > 33 or r[3] > 66]
    print(f"target (median <= 33 ms, p95 <= 66 ms wall) met by {len(rows) - len(over)} of {len(rows)} explorers"
          + (f"; over: {', '.join(over)}" if over else ""))
    print(f"live_median_ms={max(r[2] for r in rows):.1f} live_p95_ms={max(r[3] for r in rows):.1f} "
          f"frames_differing={total_differing}")


if __name__ == "__main__":
    main()
