"""One short check to run when a CUDA GPU is lent: qlearn vs bitsandbytes' CUDA kernels, then every mode
of the embedded model on the GPU. Prints one JSON document (and writes it to --out or $OUT/gpu_check.json).

    python scripts/gpu_check.py                     # ~1-2 minutes on one GPU, incl. the one-time conversion
    python scripts/gpu_check.py --skip-models       # kernels only (seconds)

Part 1, kernels: quantize_4bit (nf4/fp4, blocksizes, dtypes, double quant) and int8_vectorwise on CUDA
tensors, qlearn vs bitsandbytes.functional: packed bytes / codes equal, absmax equal, dequantized values
equal (FP4's +0/-0 pattern and the nested 8-bit rounding are reported as counts, not failures);
int8_vectorwise on CUDA in float16 only (bitsandbytes' CUDA kernel refuses bf16).
Part 1b (lesson 09), GEMV: per linear layer at batch 1 and 16, bf16 F.linear vs dequantize_4bit + F.linear
vs bitsandbytes.matmul_4bit (the fused 4-bit GEMV at batch 1), with the device's copy bandwidth.
Part 2, models: per mode, load seconds, tokens/s (greedy, fixed length), torch.cuda.max_memory_allocated,
footprint (reported, quant state), the Paris answer and perplexity on the offline text.
"""

import argparse
import json
import logging
import os
import sys
import time

import torch

DEVICE = "cuda"


def _rand(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype).to(DEVICE)


def check_4bit(quant_type, blocksize, dtype, double_quant, shape=(1024, 1000)):
    import bitsandbytes.functional as F

    import qlearn as ql

    x = _rand(shape, dtype, seed=blocksize)
    packed, state = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type,
                                    compress_statistics=double_quant)
    ours = ql.quantize_4bit(x, quant_type=quant_type, blocksize=blocksize, double_quant=double_quant)
    theirs_bytes, our_bytes = packed.view(-1), ours.packed.view(-1)
    a = torch.stack([our_bytes >> 4, our_bytes & 15], 1).view(-1)
    b = torch.stack([theirs_bytes >> 4, theirs_bytes & 15], 1).view(-1)
    diff = a != b
    signed_zero = int((diff & ((a & 7) == 0) & ((b & 7) == 0)).sum())
    theirs_deq = F.dequantize_4bit(packed, state).float()
    row = dict(quant_type=quant_type, blocksize=blocksize, dtype=str(dtype).removeprefix("torch."),
               double_quant=double_quant, codes_differ=int(diff.sum()), of_which_signed_zero=signed_zero,
               deq_equal=bool(torch.equal(ours.dequantize().float(), theirs_deq)),
               deq_max_abs_diff=float((ours.dequantize().float() - theirs_deq).abs().max()))
    if double_quant:
        row["nested_codes_differ"] = int((ours.absmax != state.absmax).sum())   # exact-nearest rule
        lut = ql.quantize_4bit(x, quant_type=quant_type, blocksize=blocksize, double_quant=True, dq_rule="bnb_cpu")
        row["nested_codes_differ_bnb_cpu_rule"] = int((lut.absmax != state.absmax).sum())
        row["offset_equal"] = bool(torch.equal(ours.offset.view(-1), state.offset.view(-1).float()))
    else:
        row["absmax_equal"] = bool(torch.equal(ours.absmax, state.absmax))
    row["ok"] = row["codes_differ"] == signed_zero and (row["deq_equal"] or double_quant)
    return row


def check_int8(dtype, threshold):
    """qlearn's int8_vectorwise against bitsandbytes' int8_vectorwise_quant on the same (512, 768) input with an
    outlier column. dtype: float16 on CUDA (the only dtype its CUDA kernel takes); the default (CPU) backend
    zeroes the outliers of its input in place, so each side gets its own copy."""
    import bitsandbytes.functional as F

    import qlearn as ql

    x = _rand((512, 768), dtype, seed=7)
    x[:, 3] *= 20   # an outlier column
    ours = ql.int8_vectorwise(x.clone(), threshold=threshold)
    codes, row_stats, outlier_cols = F.int8_vectorwise_quant(x.clone(), threshold=threshold)
    theirs_cols = outlier_cols if outlier_cols is not None else torch.empty(0, dtype=torch.int64)
    return dict(dtype=str(dtype).removeprefix("torch."), threshold=threshold,
                codes_differ=int((ours.codes != codes).sum()),
                row_absmax_equal=bool(torch.equal(ours.row_absmax, row_stats.float())),
                outlier_cols_equal=bool(torch.equal(ours.outlier_cols.cpu(), theirs_cols.cpu().long())),
                ok=bool(torch.equal(ours.codes, codes)))


def check_models(modes, new_tokens, ppl_tokens):
    import qlearn as ql
    from qlearn import memory
    from qlearn.evaluate import perplexity
    from qlearn.models import measure_mode, timed_generate

    t0 = time.perf_counter()
    ql.embedded_model_path()
    rows = [dict(conversion_s=time.perf_counter() - t0)]

    def measure(model, tok):
        fp = memory.footprint(model)
        after_load = torch.cuda.max_memory_allocated()
        answer = timed_generate(model, tok, "What is the capital of France?", new_tokens)
        return dict(device=str(model.device), tokens_per_s=answer.tokens_per_s, answer=answer.text,
                    max_memory_allocated_after_load=after_load, max_memory_allocated=torch.cuda.max_memory_allocated(),
                    reported_bytes=fp.reported_bytes, quant_state_bytes=fp.quant_state_bytes,
                    perplexity=float(perplexity(model, tok, max_tokens=ppl_tokens, progress=False)))

    for mode in modes:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        rows.append(measure_mode("embedded", mode, measure, device_map="auto"))
    return rows


def _cuda_ms(fn, rounds=5):
    """Fastest of `rounds` timings of fn() in ms (CUDA events around it, one warm-up)."""
    best = float("inf")
    for i in range(rounds + 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if i:
            best = min(best, start.elapsed_time(end))
    return best


def check_gemv(shapes=((576, 576), (192, 576), (1536, 576), (576, 1536)), copies=30, batches=(1, 16)):
    """Lesson 09 on a GPU: per linear layer, bf16 F.linear vs bitsandbytes dequantize_4bit + F.linear vs
    bitsandbytes.matmul_4bit (at batch 1 in inference: the fused 4-bit GEMV, which reads the packed codes and
    never writes 16-bit weights; larger batches dequantize, then matmul). Random bf16 weights of the given
    (N, K) shapes, `copies` of each, cycled so they do not sit in the L2 cache. Also the device copy bandwidth.
    The embedded model's shapes by default, plus a 7B-sized MLP pair."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf
    import torch.nn.functional as F

    src = torch.ones(256 << 20, device=DEVICE, dtype=torch.uint8)
    out = {"copy_bandwidth_GBps": 2 * src.numel() / _cuda_ms(lambda: torch.empty_like(src).copy_(src)) / 1e6,
           "rows": []}

    def run(path, xs, ws, qs):
        for x, w, (packed, state) in zip(xs, ws, qs, strict=True):
            if path == "bf16":
                F.linear(x, w)
            elif path == "bnb dequantize+matmul":
                F.linear(x, bnbf.dequantize_4bit(packed, state).to(x.dtype))
            else:
                bnb.matmul_4bit(x, packed.t(), quant_state=state)

    for shape_set in (shapes, ((11008, 4096), (4096, 11008))):
        ws = [_rand(shape, torch.bfloat16, seed=i) * 0.05 for i in range(copies) for shape in shape_set]
        qs = [bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4") for w in ws]
        for batch in batches:
            xs = [_rand((1, batch, w.shape[1]), torch.bfloat16, seed=99) for w in ws]
            with torch.inference_mode():
                ms = {k: _cuda_ms(lambda k=k, xs=xs, ws=ws, qs=qs: run(k, xs, ws, qs)) / len(ws)
                      for k in ("bf16", "bnb dequantize+matmul", "bnb matmul_4bit")}
            weight_bytes = sum(w.numel() for w in ws) * 2 / len(ws)
            out["rows"].append(dict(shapes=[list(s) for s in shape_set], batch=batch, ms_per_layer=ms,
                                    bf16_floor_ms=weight_bytes / out["copy_bandwidth_GBps"] / 1e6,
                                    matmul_4bit_vs_bf16=ms["bf16"] / ms["bnb matmul_4bit"],
                                    matmul_4bit_vs_dequant=ms["bnb dequantize+matmul"] / ms["bnb matmul_4bit"]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default="bf16,fp16,int8,nf4,nf4+dq,fp4")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--ppl-tokens", type=int, default=4096)
    p.add_argument("--skip-models", action="store_true")
    p.add_argument("--skip-gemv", action="store_true", help="skip lesson 09's per-layer GEMV timing")
    out = os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None
    p.add_argument("--out", default=out)
    p.add_argument("--device", default="cuda", help="'cpu' dry-runs the kernel checks on bitsandbytes' CPU backend")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import bitsandbytes
    import transformers

    report = dict(device=torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE, torch=torch.__version__,
                  bitsandbytes=bitsandbytes.__version__, transformers=transformers.__version__)
    report["kernels_4bit"] = [check_4bit(qt, bs, dt, dq) for qt in ("nf4", "fp4") for bs in (64, 128, 4096)
                              for dt in (torch.float32, torch.float16, torch.bfloat16) for dq in (False, True)]
    # bitsandbytes' CUDA int8_vectorwise_quant takes float16 only (it raises "A must be float16" on bf16,
    # backends/cuda/ops.py); LLM.int8 casts activations to fp16 before it. Its default (CPU) backend takes any dtype.
    int8_dtypes = (torch.float16,) if DEVICE == "cuda" else (torch.float16, torch.bfloat16)
    report["kernels_int8"] = [check_int8(dt, th) for dt in int8_dtypes for th in (0.0, 6.0)]
    report["kernels_ok"] = all(r["ok"] for r in report["kernels_4bit"] + report["kernels_int8"])
    if not args.skip_gemv and DEVICE == "cuda":
        report["gemv_4bit"] = check_gemv()
    if not args.skip_models and DEVICE == "cuda":
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        report["models"] = check_models(modes, args.new_tokens, args.ppl_tokens)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0 if report["kernels_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
