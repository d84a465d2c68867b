"""Mixed precision against uniform NF4 + double quant at the same bytes and at +5% bytes, with the spread
over calibration draws (lesson 10 quotes this script's numbers).

Sensitivities come from the calibration text (``qlearn.sensitivity``: measured KL per layer in the
anchor format nf4+dq/64, predicted for the other formats from each layer's output error) and are
cached; perplexity is measured on the default evaluation text (4,096 tokens, 512-token windows).
Every plan is applied with ``qlearn.fakequant`` (weights quantized and dequantized in place, values
rounded to bf16 as a bf16 model holds them), and the model runs in float32 holding those bf16 values:
about 2.5x faster than bf16 on a CPU without bf16 matmul units, and on CUDA free of the noise floor
bf16 compute put under every layer's KL on an H200 (int8 layers summed 0.286 nats in bf16, 0.003 in
fp32). On that H200 bf16 scored 15.49 against 14.71 here: the evaluation text was then the running
Python's own help topics (3.12 there, 3.11 here), which differ; it now ships with qlearn (docs/texts.md),
and float32 perplexity is the same number on every Python and torch release tested (make test-colab).
Uniform nf4+dq at blocks of 256 / 128 / 64 / 32 (this script's --frontier rows; AMD EPYC, 2026-12-04):
21.798 / 19.809 / 18.748 / 18.157.

    python benchmarks/bench_mixed.py                 # full settings
    python benchmarks/bench_mixed.py --tokens 512    # a quick look (not the bars)
    python benchmarks/bench_mixed.py --calib 2,128,2 # lesson 10's calibration (128 scored positions)

Calibration: 4 x 256 tokens of the calibration text, KL on every 2nd position (512 positions). With lesson
10's 2 x 128 (128 positions) the per-layer KLs are noisy enough to mislead the equal-bytes plan. Measured on
an AVX512-BF16 Xeon, 2 cores, 2026-12-03 (bf16 14.705, uniform nf4+dq/64 18.748; gap closed at equal bytes /
at +5%):
- 2 x 128, KL predicted for the other formats: 0.091 / 0.395; sensitivities 106 s;
- 2 x 128, KL measured for every ladder format (--measure-ladder): 0.019 / 0.478; 337 s;
- 4 x 256 (this default): 0.115 / 0.484; sensitivities 253 s (the one measured format: 193 s).
Every variant beat the random plan and the llama.cpp-style rule at the same bytes.

``--draws N`` re-solves the plans on N disjoint stretches of the calibration text (``mixed.CalibrationDraw``;
draw 0 is the run above) and prints the gap closed per draw and its mean, standard deviation and range:
how much of a plan's result is the calibration draw.
``--calib 2,128,2 --draws 5`` (lesson 10's calibration, all 210 layers, 4,096 tokens; AMD EPYC, 2 cores, one
thread, 2026-12-05; bf16 14.704, uniform nf4+dq/64 18.748), gap closed per draw 0-4: equal bytes 0.091 / 0.075 /
0.123 / 0.138 / 0.105 (mean 0.106, sd 0.025); +5% 0.395 / 0.482 / 0.460 / 0.492 / 0.442 (mean 0.454, sd 0.038);
the random plans -0.416 ± 0.011 and +0.018 ± 0.045: the plan beat them and uniform in 5 of 5 draws at both budgets.

The last line is ``gap_closed_equal_bytes=<fraction> gap_closed_plus5=<fraction>``, with
gap closed = (ppl uniform - ppl plan) / (ppl uniform - ppl bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

import torch

import qlearn as ql
from qlearn import mixed, sensitivity
from qlearn.fakequant import fake_quantize

FORMATS = mixed.PLAN_FORMATS + ("int4-zp/32",)
BASE = "nf4+dq/64"


def perplexity(model, tok, plan, args):
    plan = plan if isinstance(plan, dict) else plan.as_dict()
    with fake_quantize(model, plan, values_dtype=torch.bfloat16):
        return float(ql.perplexity(model, tok, max_tokens=args.tokens, window=args.window, progress=False))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="embedded", help="model id or folder (default: the embedded SmolLM2)")
    parser.add_argument("--validate", action="store_true", help="also measure the KL of every layer in "
                        "nf4+dq/256 and int8 (the proxy's check)")
    parser.add_argument("--measure-ladder", action="store_true", help="measure (not predict) the KL of "
                        "the ladder's formats too")
    parser.add_argument("--calib", default="4,256,2", help="calibration n_seqs,seq_len,every (default 4,256,2: "
                        "512 scored positions; see the module docstring)")
    parser.add_argument("--frontier", action="store_true", help="also plans at more budgets")
    parser.add_argument("--draws", type=int, default=1, help="calibration draws to re-solve the plans on (draw 0 "
                        "is the main run; each further draw costs one sensitivity run and 4 perplexities)")
    parser.add_argument("--json", default=None, help="write every number here")
    parser.add_argument("--bnb", action="store_true", help="also load the part of the +5%% plan that bitsandbytes "
                        "can express (nf4+dq/64 + layers kept 16-bit via llm_int8_skip_modules) and measure it")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, tok = ql.load(args.model, mode="fp32", verbose=False)
    print(f"device {model.device}, dtype {model.dtype}, threads {torch.get_num_threads()}")
    t0, cpu0 = time.perf_counter(), time.process_time()
    measure = mixed.LADDER[:-1] if args.measure_ladder else ()
    calibration = mixed.CalibrationDraw(*map(int, args.calib.split(",")))
    sens = sensitivity.sensitivities(model, tok, FORMATS, anchor=BASE, calibration=calibration, progress=False,
                                     measure=measure)
    # CPU seconds / threads: what the wall time would be on idle cores (this machine is often shared)
    print(f"sensitivities of {len(sens.layers)} layers: {time.perf_counter() - t0:.1f} s wall here, "
          f"{time.process_time() - cpu0:.1f} s of CPU on {torch.get_num_threads()} threads, load "
          f"{os.getloadavg()[0]:.1f} (0 if cached; the computing run's own wall seconds: "
          + ", ".join(f"{k} {v:.1f}" for k, v in sens.seconds.items()) + ")")
    explorer_latency(sens)
    t = mixed.tables(sens)
    base = mixed.uniform(t, BASE)
    b0 = base.bits_per_weight
    plans = {"uniform": base, "plan": mixed.solve(t, b0, "plan (equal bytes)"),
             "plan+5": mixed.solve(t, 1.05 * b0, "plan (+5% bytes)")}
    plans["random"] = mixed.shuffled(t, plans["plan"], seed=args.seed)
    plans["random+5"] = mixed.shuffled(t, plans["plan+5"], seed=args.seed)
    plans["llama"] = mixed.llama_rule(t, b0)
    plans["llama+5"] = mixed.llama_rule(t, 1.05 * b0)
    if args.frontier:
        for fmt in ("nf4+dq/256", "nf4+dq/128", "nf4+dq/32", "nf4/64", "fp4+dq/64", "int8"):
            plans[f"uniform {fmt}"] = mixed.uniform(t, fmt)
        for bits in (4.04, 4.08, 4.2, 4.25, 4.5, 5.0, 6.0):
            plans[f"plan@{bits}"] = mixed.solve(t, bits, f"plan @ {bits}")
    results = {"bf16": {"ppl": perplexity(model, tok, {}, args), "bits": 16.0}}
    for key, plan in plans.items():
        t1 = time.perf_counter()
        results[key] = {"ppl": perplexity(model, tok, plan, args), "bits": plan.bits_per_weight,
                        "predicted_kl": plan.cost, "counts": plan.counts(), "formats": plan.as_dict()}
        print(f"{key:18s} {plan.bits_per_weight:7.4f} bits  predicted KL {plan.cost:8.4f}  "
              f"ppl {results[key]['ppl']:7.3f}  ({time.perf_counter() - t1:.1f} s)  {plan.counts()}")
    gap = results["uniform"]["ppl"] - results["bf16"]["ppl"]
    for key in results:
        results[key]["gap_closed"] = (results["uniform"]["ppl"] - results[key]["ppl"]) / gap
    if args.draws > 1:
        results["draws"] = over_draws(model, tok, calibration, measure, results, args)
    if args.validate:
        results["validation"] = validate(model, tok, sens)
    print(f"bf16 {results['bf16']['ppl']:.3f}, uniform {BASE} {results['uniform']['ppl']:.3f} "
          f"({b0:.4f} bits/weight); plan {results['plan']['ppl']:.3f} at {plans['plan'].bits_per_weight:.4f}, "
          f"random {results['random']['ppl']:.3f}, llama rule {results['llama']['ppl']:.3f} at "
          f"{plans['llama'].bits_per_weight:.4f}; +5%: plan {results['plan+5']['ppl']:.3f}, "
          f"random {results['random+5']['ppl']:.3f}, llama {results['llama+5']['ppl']:.3f}")
    if args.bnb:
        del model
        results["bnb"] = real_bnb(t, 1.05 * b0, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "sensitivity": sens.__dict__, "args": vars(args)}, f)
    print(f"gap_closed_equal_bytes={results['plan']['gap_closed']:.3f} "
          f"gap_closed_plus5={results['plan+5']['gap_closed']:.3f}")


def over_draws(model, tok, calibration, measure, results, args):
    """The plans re-solved on draws 1 .. args.draws - 1 of the calibration text (draw 0: ``results``); bf16,
    uniform and the llama.cpp-style rule do not depend on the draw. Returns the gap closed per draw and its spread."""
    import statistics

    gap = results["uniform"]["ppl"] - results["bf16"]["ppl"]
    rows = [{"draw": 0, **{k: results[k]["gap_closed"] for k in ("plan", "plan+5", "random", "random+5")}}]
    for draw in range(1, args.draws):
        t0 = time.perf_counter()
        calib = mixed.CalibrationDraw(calibration.n_seqs, calibration.seq_len, calibration.every, draw=draw)
        sens = sensitivity.sensitivities(model, tok, FORMATS, anchor=BASE, calibration=calib, progress=False,
                                         measure=measure)
        t = mixed.tables(sens)
        b0 = mixed.uniform(t, BASE).bits_per_weight
        plan, plan5 = mixed.solve(t, b0), mixed.solve(t, 1.05 * b0)
        plans = {"plan": plan, "plan+5": plan5, "random": mixed.shuffled(t, plan, seed=args.seed),
                 "random+5": mixed.shuffled(t, plan5, seed=args.seed)}
        row = {"draw": draw}
        for key, p in plans.items():
            row[key] = (results["uniform"]["ppl"] - perplexity(model, tok, p, args)) / gap
        rows.append(row)
        print(f"draw {draw}: gap closed plan {row['plan']:+.3f}, +5% {row['plan+5']:+.3f}, random "
              f"{row['random']:+.3f}, random +5% {row['random+5']:+.3f} ({time.perf_counter() - t0:.0f} s)")
    spread = {}
    for key in ("plan", "plan+5", "random", "random+5"):
        v = [r[key] for r in rows]
        spread[key] = {"mean": statistics.mean(v), "sd": statistics.stdev(v), "min": min(v), "max": max(v)}
        print(f"{key:9s} over {len(v)} draws: gap closed mean {spread[key]['mean']:+.3f}, sd {spread[key]['sd']:.3f}, "
              f"range {spread[key]['min']:+.3f} .. {spread[key]['max']:+.3f}")
    for budget in ("", "+5"):
        wins = sum(r[f"plan{budget}"] > r[f"random{budget}"] for r in rows)
        above = sum(r[f"plan{budget}"] > 0 for r in rows)
        print(f"plan{budget or ' (equal bytes)'}: beat the random plan in {wins} of {len(rows)} draws, "
              f"beat uniform in {above} of {len(rows)}")
    return {"per_draw": rows, "spread": spread}


def explorer_latency(sens, budgets=(4.05, 4.127, 4.3, 4.6, 5.2, 6.0)):
    """The explorer's latency bar: once sensitivities are cached, a budget change redraws in at most 2 s.

    Times the explorer's construction (tables, the frontier curve) and each slider move as a learner makes it
    (``controls["budget"].value = b``: re-solve the plan over every layer, redraw, render the PNG).
    """
    import statistics

    from qlearn.widgets.mixed import mixed_precision_explorer

    t0 = time.perf_counter()
    w = mixed_precision_explorer(sens)
    w.png()
    build = time.perf_counter() - t0
    moves = []
    for b in budgets:
        t0 = time.perf_counter()
        w.controls["budget"].value = b
        w.png()
        moves.append(time.perf_counter() - t0)
    print(f"explorer over {len(sens.layers)} layers x {len(w.tables.formats)} formats: built in {build:.2f} s; "
          f"a budget move redraws in median {statistics.median(moves):.3f} s, max {max(moves):.3f} s "
          f"(bar: 2 s; load {os.getloadavg()[0]:.1f}, {torch.get_num_threads()} threads)")


def real_bnb(t, budget, args):
    """Solve over {nf4+dq/64, bf16} (what one BitsAndBytesConfig can say: 4-bit blocks are 64 in transformers),
    load it for real with llm_int8_skip_modules, and compare its measured bytes with the plan's."""
    from transformers import AutoModelForCausalLM

    cols = [t.formats.index(f) for f in ("nf4+dq/64", "bf16")]
    sub = mixed.Tables(t.layers, ("nf4+dq/64", "bf16"), t.cost[:, cols], t.bits[:, cols], t.numel)
    plan = mixed.solve(sub, budget, "nf4+dq/64 + bf16 layers")
    keep = [n for n, f in plan.as_dict().items() if f == "bf16"]
    config = ql.models.quantization_config("nf4+dq")
    config.llm_int8_skip_modules = ["lm_head", *keep]
    path = ql.models.embedded_model_path() if args.model == "embedded" else args.model
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config, dtype=torch.bfloat16,
                                                 device_map="cpu" if not torch.cuda.is_available() else "cuda")
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if n in set(t.layers)}
    fp = ql.memory.footprint(model)
    predicted = plan.bits_per_weight * float(t.numel.sum()) / 8
    measured = fp.linear_weight_bytes + fp.quant_state_bytes
    out = {"kept_16bit": keep, "module_kinds": dict(sorted(Counter(kinds.values()).items())),
           "predicted_linear_bytes": predicted, "linear_weight_bytes": fp.linear_weight_bytes,
           "quant_state_bytes": fp.quant_state_bytes, "true_bytes": fp.true_bytes, "reported_bytes": fp.reported_bytes}
    print(f"real bitsandbytes: {len(keep)} layers kept 16-bit {keep[:4]}...; modules {out['module_kinds']}; linear "
          f"weights + quant state {measured:,} bytes, plan predicted {predicted:,.0f} "
          f"({plan.bits_per_weight:.4f} bits/weight); whole model true bytes {fp.true_bytes:,}")
    return out


def validate(model, tok, sens):
    """Measured KL per layer in two more formats against the predicted (anchor KL x error ratio)."""
    ref = sensitivity.reference(model, tok, mixed.CalibrationDraw(**sens.calibration))
    out = {}
    for fmt in ("nf4+dq/256", "int8", "fp4+dq/64"):
        t0 = time.perf_counter()
        measured = sensitivity.layer_kl(ref, fmt)
        pred = torch.tensor([sens.kl[n][fmt] for n in measured])
        meas = torch.tensor(list(measured.values()))
        rank = lambda v: v.argsort().argsort().double()   # noqa: E731
        spearman = float(torch.corrcoef(torch.stack([rank(pred), rank(meas)]))[0, 1])
        out[fmt] = {"measured": measured, "spearman": spearman, "sum_pred": float(pred.sum()),
                    "sum_measured": float(meas.sum()), "seconds": time.perf_counter() - t0}
        print(f"validate {fmt}: Spearman {spearman:.3f}, summed KL predicted {float(pred.sum()):.4f} "
              f"measured {float(meas.sum()):.4f} ({time.perf_counter() - t0:.1f} s)")
    return out


if __name__ == "__main__":
    main()
