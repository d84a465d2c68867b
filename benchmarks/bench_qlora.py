"""QLoRA against LoRA at equal steps and data on the embedded model, and the three ways to ship the result.

Each mode is loaded on its own (one model in memory at a time), gets fresh LoRA adapters (r=8, alpha=16, every
linear layer, the same seed), and trains the same steps on the same batches of the order-logging task
(`qlearn.finetune.task`): LoRA on the 16-bit weights (bf16, or float32 where this CPU has no bf16 arithmetic:
the same values) and QLoRA on nf4+dq, nf4 and fp4 (``prepare_model_for_kbit_training``; compute in the same
dtype); and, as the control, LoRA on plain layers holding nf4+dq's dequantized values
(``lora@nf4+dq``, `qlearn.finetune.load_rounded`). Measured per mode: held-out loss (NLL per answer token)
before and after, seconds a step, tokens a
second, trainable parameters, and one step's memory split without and with gradient checkpointing
(`qlearn.finetune.memory_split`). On nf4+dq: the rounding of one merged layer onto the NF4 grid and the three
ways to ship (4-bit base + adapter; merged into bf16; merged then nf4+dq again): held-out perplexity, answers
and bytes.

    python benchmarks/bench_qlora.py                        # LoRA and QLoRA nf4+dq, 12 steps of 4 orders
    python benchmarks/bench_qlora.py --modes lora,nf4+dq,nf4,fp4 --eval-every 6   # the four modes of lesson 12
    python benchmarks/bench_qlora.py --threads 1            # on a busy machine: no OpenMP spin between threads

The last line is ``qlora_over_lora_heldout=<ratio> merged_requant_ppl_rise=<fraction> s_per_step=<seconds>``:
QLoRA (nf4+dq) held-out loss over LoRA's after the same steps, the held-out perplexity of route (c) (merged,
re-quantized) over route (a) (4-bit base + adapter) minus 1, and QLoRA's seconds per training step.

Measured 2026-12-05 on an AMD EPYC with AVX2 and no AVX512-BF16 (so float32 compute and a float32 LoRA base),
2 cores shared with another job (load average 1.6 to 2.0), default settings (12 steps of 4 orders, lr 1e-3,
r=8 on all linear layers), 270 s in all. Held-out loss (16 orders, nats per answer token) from the start and
after 12 steps: LoRA 3.0408 -> 0.0307; QLoRA nf4+dq 3.5501 -> 0.0657; LoRA on nf4+dq's values 3.5501 -> 0.0657
(the same start to six decimals and the same curve: QLoRA's training is LoRA's; its gap to LoRA is the 4-bit
base, whose rounding costs this 135M model much more than it costs the paper's 7B-65B models). s a step
2.2-3.0 with the load. Last lines: ``QLoRA nf4+dq over LoRA on the same (nf4+dq) values: 1.0003`` and
``qlora_over_lora_heldout=2.1359 merged_requant_ppl_rise=27.2462 s_per_step=2.190``. With
``--modes lora,nf4+dq,nf4,fp4 --eval-every 6`` (1,123 s): nf4 3.521 -> 0.0622, fp4 3.352 -> 0.0486. At 36 steps
(``--steps 36 --heldout 32``, 723 s) LoRA reached 0.0032 and QLoRA 0.0041 (ratio 1.27): both answer the held-out
orders exactly, and at such losses the ratio is that of two small numbers. One step of 4 orders: activations
418.1 MB (42.2 with gradient checkpointing), gradients 9.8, AdamW 19.5, short-lived 31.9; weights 538.1 MB for LoRA
(float32) and 168.2 for QLoRA (111.5 as loaded, +56.7 from the float32 embedding and norms). Shipping: 4-bit +
adapter 121.2 MB, perplexity 1.068; merged into bf16 269.0 MB, 1.066; merged then nf4+dq 111.5 MB, 30.16, because
no code of ``model.layers.3.mlp.down_proj`` moved (every update under half an NF4 step; 0.8% of it kept).

Measured 2026-12-06 on a CPU with AVX512-BF16 (bf16 training; LoRA's base bf16), load average 0.6 to 1.9, default
settings, 125 s in all: LoRA 3.0264 -> 0.0379 (1.38 s a step), QLoRA nf4+dq 3.5352 -> 0.0648 (1.08 s a step: the
4-bit base is faster here), LoRA on nf4+dq's values 3.5352 -> 0.0648. That control equals QLoRA only because
`load_rounded` makes its embedding and norms float32 and its layers cast as ``Linear4bit`` does
(`qlearn.finetune.CastingLinear`); with a bf16 residual stream it started at 3.525961 and ended 0.8516x QLoRA.
Shipping: 121.2 MB / ppl 1.0669, 269.0 MB / 1.0663, 111.5 MB / 30.99. Last line:
``qlora_over_lora_heldout=1.7094 merged_requant_ppl_rise=28.0461 s_per_step=1.077``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import qlearn as ql
from qlearn import finetune as ft
from qlearn._threads import threads

LAYER = "model.layers.3.mlp.down_proj"   # the layer whose re-quantization is shown


def one_mode(mode, args, train, held, prompts, expected):
    t0 = time.perf_counter()
    if "@" in mode:   # LoRA on the values a 4-bit mode computes with: plain layers, the same numbers as QLoRA's
        model, tok = ft.load_rounded(mode.split("@")[1], device_map=args.device)
    else:
        model, tok = ft.load_for_training(ft.lora_mode() if mode == "lora" else mode, device_map=args.device)
    load_s = time.perf_counter() - t0
    pm, cost = ft.attach_lora(model, rank=args.rank, targets="all-linear")
    row = {"mode": mode, "load_s": load_s, "prepare_cast": len(cost.cast), "prepare_added_mb": cost.added_bytes / 1e6}
    if mode in ("lora", "nf4+dq"):
        for gc in (False, True):
            split = ft.memory_split(pm, tok, train[:args.batch], gradient_checkpointing=gc)
            row[f"memory_gc_{int(gc)}"] = {k: v / 1e6 if v is not None else None for k, v in split.as_dict().items()}
    run = ft.train(pm, tok, train, held, steps=args.steps, batch_size=args.batch, lr=args.lr,
                   eval_every=args.eval_every, prompts=prompts if mode == "nf4+dq" else (), max_new_tokens=32,
                   progress=False)
    row.update(start_loss=run.heldout[0], final_loss=run.heldout[-1],
               curve=dict(zip(run.eval_steps, run.heldout, strict=True)),
               s_per_step=run.s_per_step,
               tokens_per_s=run.tokens_per_s, trainable=run.trainable, train_loss=list(run.train_loss))
    if mode == "nf4+dq":
        layer = dict(pm.named_modules())[f"base_model.model.{LAYER}"]
        r = ft.rounding(layer, LAYER)
        row["rounding"] = dict(codes_changed=r.codes_changed, below_half_step=r.below_half_step, kept=r.kept,
                               error=r.error)
        routes, _ = ft.ship(pm, tok, held, prompts=prompts, max_new_tokens=32)
        row["routes"] = [dict(route=s.route, mb=s.stored_bytes / 1e6, loss=s.loss, ppl=s.perplexity,
                              exact=sum(a == e for a, e in zip(s.answers, expected, strict=True)), answers=s.answers)
                         for s in routes]
        row["answers_before"], row["answers_after"] = run.answers[0], run.answers[-1]
    del pm, model
    ql.models.release_memory()
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="lora,nf4+dq,lora@nf4+dq",
                        help="also nf4, fp4 (lesson 12 trains all four); lora@MODE: LoRA on MODE's dequantized values")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=None, help="held-out loss every N steps (default: ends)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--heldout", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=4, help="held-out orders answered by each shipping route")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    train, held = ft.task(256, args.heldout)
    prompts, expected = [h.prompt for h in held[:args.prompts]], [h.answer for h in held[:args.prompts]]
    device = ql.models.resolve_device(args.device)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; training dtype {ft.train_dtype(device)}"
          f"; {args.steps} steps of {args.batch}, lr {args.lr}, r={args.rank}", flush=True)
    rows = {}
    with threads(args.threads):
        for mode in args.modes.split(","):
            rows[mode] = one_mode(mode, args, train, held, prompts, expected)
            r = rows[mode]
            print(f"{mode:7s} held-out {r['start_loss']:.4f} -> {r['final_loss']:.4f}  {r['s_per_step']:.2f} s/step  "
                  f"{r['tokens_per_s']:.0f} tokens/s  {r['trainable']:,} trainable  load {r['load_s']:.0f} s; "
                  f"prepare upcast {r['prepare_cast']} tensors (+{r['prepare_added_mb']:.1f} MB)", flush=True)
            print("         held-out by step: " + ", ".join(f"{k}: {v:.4f}" for k, v in r["curve"].items()), flush=True)
            for gc in (0, 1):
                if f"memory_gc_{gc}" in r:
                    m = r[f"memory_gc_{gc}"]
                    print(f"         memory, checkpointing {'on ' if gc else 'off'}: " + ", ".join(
                        f"{k} {v:.1f}" for k, v in m.items() if v is not None) + " MB", flush=True)
    q = rows.get("nf4+dq")
    if q:
        print("rounding of {}: {}".format(LAYER, {k: round(v, 4) for k, v in q["rounding"].items()}))
        for s in q["routes"]:
            print(f"  {s['route']:28s} {s['mb']:8.1f} MB  held-out loss {s['loss']:.4f}  ppl {s['ppl']:.4f}  "
                  f"exact answers {s['exact']}/{len(expected)}  first: {s['answers'][0]!r}")
        print("answers before:", q["answers_before"], "\nanswers after: ", q["answers_after"])
    total = time.perf_counter() - t0
    print(f"whole benchmark {total:.0f} s; load average now {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    if q and "lora" in rows:
        a, c = q["routes"][0]["ppl"], q["routes"][2]["ppl"]
        if "lora@nf4+dq" in rows:
            print(f"QLoRA nf4+dq over LoRA on the same (nf4+dq) values: "
                  f"{q['final_loss'] / rows['lora@nf4+dq']['final_loss']:.4f}; start losses {q['start_loss']:.6f} and "
                  f"{rows['lora@nf4+dq']['start_loss']:.6f}")
        print(f"qlora_over_lora_heldout={q['final_loss'] / rows['lora']['final_loss']:.4f} "
              f"merged_requant_ppl_rise={c / a - 1:.4f} s_per_step={q['s_per_step']:.3f}")


if __name__ == "__main__":
    main()
