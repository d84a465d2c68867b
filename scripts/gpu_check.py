"""One short check to run when a CUDA GPU is lent: qlearn vs bitsandbytes' CUDA kernels, then every mode
of the embedded model on the GPU. Prints one JSON document (and writes it to --out or $OUT/gpu_check.json).

    python scripts/gpu_check.py                     # ~1-2 minutes on one GPU, incl. the one-time conversion
    python scripts/gpu_check.py --skip-models       # kernels only (seconds)
    python scripts/gpu_check.py --lessons           # also every lesson executed on the GPU (nbclient, FAST)
    python scripts/gpu_check.py --summary gpu_check.json   # the verdicts of a saved report
    bash scripts/gpu_kit.sh prepare                 # wheels and model in three carries for a lent GPU machine

Part 1, kernels: quantize_4bit (nf4/fp4, blocksizes, dtypes, double quant) and int8_vectorwise on CUDA
tensors, qlearn (its default rule on a CUDA tensor, "bnb_cuda") vs bitsandbytes.functional: every byte
equal (packed codes with the zero's sign, absmax, nested codes, offset) and the dequantized values equal,
sign of zero included; int8_vectorwise on CUDA in float16 only (bitsandbytes' CUDA kernel refuses bf16).
The CPU rule's mismatches on the same input are reported beside it, as counts.
Part 1b (lesson 09), GEMV: per linear layer at batch 1 and 16, bf16 F.linear vs dequantize_4bit + F.linear
vs bitsandbytes.matmul_4bit (the fused 4-bit GEMV at batch 1), with the device's copy bandwidth.
Part 2, models: per mode, load seconds, tokens/s (greedy, fixed length), torch.cuda.max_memory_allocated,
footprint (reported, quant state), the Paris answer and perplexity on the offline text.
Part 3, generation speed (--speed): ms per token at fixed length, warm, synchronized, for bf16 and nf4 with
transformers' default generate and with ``disable_compile=True``, and a profile of each (top ops).
Part 4, lessons (--lessons): each notebook run top to bottom with nbclient (QLEARN_FAST=1), one kernel per
lesson; per lesson: passed or the error, seconds, peak GPU memory (torch.cuda.max_memory_allocated in the
lesson's kernel, read by one extra cell at the end).
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


def check_4bit(quant_type, blocksize, dtype, double_quant, shape=(1024, 1001)):
    """qlearn on a CUDA tensor (rule "bnb_cuda" by default) vs bitsandbytes.functional.quantize_4bit: every byte."""
    import bitsandbytes.functional as F

    import qlearn as ql

    x = _rand(shape, dtype, seed=blocksize)   # 1,025,024 values: a partial last block at every blocksize
    x[5, :64] = 0.0                           # a run of zeros
    packed, state = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant)
    ours = ql.quantize_4bit(x, quant_type=quant_type, blocksize=blocksize, double_quant=double_quant,
                            dq_rule=None if x.is_cuda else "bnb_cpu")   # the nested rule of the device's kernels
    cpu_rule = ql.quantize_4bit(x.cpu(), quant_type=quant_type, blocksize=blocksize, double_quant=double_quant)
    theirs_deq = F.dequantize_4bit(packed, state)
    ours_deq = ours.dequantize()
    row = dict(quant_type=quant_type, blocksize=blocksize, dtype=str(dtype).removeprefix("torch."),
               double_quant=double_quant, rule=ours.rule,
               bytes_differ=int((ours.packed.view(-1) != packed.view(-1)).sum()),
               bytes_differ_cpu_rule=int((cpu_rule.packed.view(-1) != packed.view(-1).cpu()).sum()),
               deq_equal=bool(torch.equal(ours_deq, theirs_deq)),
               deq_sign_equal=bool(torch.equal(torch.signbit(ours_deq), torch.signbit(theirs_deq))))
    if double_quant:
        row["nested_codes_differ"] = int((ours.absmax != state.absmax).sum())
        row["offset_equal"] = bool(torch.equal(ours.offset.view(-1), state.offset.view(-1).float()))
        row["nested_absmax_equal"] = bool(torch.equal(ours.nested_absmax, state.state2.absmax))
        ok_state = row["nested_codes_differ"] == 0 and row["offset_equal"] and row["nested_absmax_equal"]
    else:
        row["absmax_equal"] = ok_state = bool(torch.equal(ours.absmax, state.absmax))
    row["ok"] = row["bytes_differ"] == 0 and ok_state and row["deq_equal"] and row["deq_sign_equal"]
    return row


def check_int8(dtype, threshold):
    """qlearn's int8_vectorwise against bitsandbytes' int8_vectorwise_quant on the same (512, 768) input with an
    outlier column. dtype: float16 on CUDA (the only dtype its CUDA kernel takes); the default (CPU) backend
    zeroes the outliers of its input in place, so each side gets its own copy."""
    import bitsandbytes.functional as F

    import qlearn as ql

    x = _rand((4096, 768), dtype, seed=7)
    x[:, 3] *= 20   # an outlier column
    ours = ql.int8_vectorwise(x.clone(), threshold=threshold)
    cpu_rule = ql.int8_vectorwise(x.clone(), threshold=threshold, rule="bnb_cpu")
    codes, row_stats, outlier_cols = F.int8_vectorwise_quant(x.clone(), threshold=threshold)
    theirs_cols = outlier_cols if outlier_cols is not None else torch.empty(0, dtype=torch.int64)
    return dict(dtype=str(dtype).removeprefix("torch."), threshold=threshold, rule=ours.rule,
                codes_differ=int((ours.codes != codes).sum()),
                codes_differ_cpu_rule=int((cpu_rule.codes != codes).sum()),
                row_absmax_equal=bool(torch.equal(ours.row_absmax, row_stats.float())),
                outlier_cols_equal=bool(torch.equal(ours.outlier_cols.cpu(), theirs_cols.cpu().long())),
                ok=bool(torch.equal(ours.codes, codes) and torch.equal(ours.row_absmax, row_stats.float())))


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


def check_speed(modes=("bf16", "nf4"), tokens=64, profile_tokens=8):
    """Fixed-length greedy generation (min_new_tokens = max_new_tokens), warm, synchronized: ms per new token
    with transformers' default ``generate`` and with ``disable_compile=True``, and the generation config that
    decides between them; then a torch.profiler run of each variant (top ops by self CPU and CUDA time)."""
    import transformers
    from torch.profiler import ProfilerActivity, profile

    import qlearn as ql

    out = {"transformers": transformers.__version__, "modes": {}}
    for mode in modes:
        model, tok = ql.load("embedded", mode=mode, device_map="cuda", verbose=False)
        enc = tok("What is the capital of France?", return_tensors="pt").to("cuda")
        cfg = model.generation_config
        row = {"cache_implementation": str(getattr(cfg, "cache_implementation", None)),
               "compile_config": str(getattr(cfg, "compile_config", None)), "variants": {}}

        def gen(n, model=model, enc=enc, **kw):
            with torch.inference_mode():
                model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, **kw)

        for label, kw in (("default", {}), ("disable_compile", {"disable_compile": True})):
            gen(8, **kw)                                              # warm-up
            times = {}
            for n in (1, tokens + 1):
                torch.cuda.synchronize()
                t = time.perf_counter()
                gen(n, **kw)
                torch.cuda.synchronize()
                times[n] = time.perf_counter() - t
            ms = (times[tokens + 1] - times[1]) / tokens * 1e3          # per token, prompt and start-up excluded
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                gen(profile_tokens, **kw)
                torch.cuda.synchronize()
            avg = prof.key_averages()
            top_cpu = sorted(avg, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
            top_cuda = sorted(avg, key=lambda e: getattr(e, "self_device_time_total", 0), reverse=True)[:8]
            row["variants"][label] = {
                "ms_per_token": round(ms, 3), "tokens_per_s": round(1e3 / ms, 1),
                "top_self_cpu_us": [(e.key, round(e.self_cpu_time_total), e.count) for e in top_cpu],
                "top_self_cuda_us": [(e.key, round(getattr(e, "self_device_time_total", 0)), e.count)
                                     for e in top_cuda],
                "cuda_total_us": round(sum(getattr(e, "self_device_time_total", 0) for e in avg)),
                "cpu_total_us": round(sum(e.self_cpu_time_total for e in avg))}
        out["modes"][mode] = row
        del model
        torch.cuda.empty_cache()
    return out


PEAK_CELL = ("import json as _j, torch as _t\n"
             "print('QLEARN_PEAK', _j.dumps(_t.cuda.max_memory_allocated() if _t.cuda.is_available() else -1))")


def check_lessons(only=None, timeout_s=900):
    """Every lesson top to bottom on this machine (nbclient, kernel python3, cwd notebooks/, QLEARN_FAST=1)."""
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient

    os.environ.setdefault("QLEARN_FAST", "1")
    nb_dir = Path(__file__).resolve().parent.parent / "notebooks"
    rows = []
    for path in sorted(nb_dir.glob("[0-9][0-9]_*.ipynb")):
        if only and path.name[:2] not in only:
            continue
        nb = nbformat.read(path, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(PEAK_CELL))
        start = time.perf_counter()
        row = {"lesson": path.stem}
        try:
            NotebookClient(nb, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(nb_dir)}},
                           allow_errors=False).execute()
            row["passed"] = True
        except Exception as err:   # noqa: BLE001 - report any lesson's error and go on to the next
            row["passed"] = False
            row["error"] = f"{type(err).__name__}: {str(err)[-1500:]}"
        row["seconds"] = round(time.perf_counter() - start, 1)
        peak = [o.get("text", "") for o in nb.cells[-1].get("outputs", []) if o.get("output_type") == "stream"]
        peak = [ln.split()[1] for t in peak for ln in t.splitlines() if ln.startswith("QLEARN_PEAK")]
        row["peak_gpu_MB"] = round(int(peak[0]) / 1e6, 1) if peak and int(peak[0]) >= 0 else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def summary(report: dict) -> str:
    """A few lines from a saved report: the verdicts, the failures, the lessons and the speed table."""
    lines = [f"kernels_ok {report.get('kernels_ok')}  device_paths_ok {report.get('device_paths_ok')}  "
             f"lessons {report.get('lessons_passed')}"]
    for key in ("kernel_paths", "method_paths"):
        if report.get(key, {}).get("failures"):
            lines.append(f"{key} failures: {json.dumps(report[key]['failures'])[:800]}")
    for row in report.get("kernels_4bit", []) + report.get("kernels_int8", []):
        if not row.get("ok"):
            lines.append(f"kernel mismatch: {json.dumps(row)}")
    for row in report.get("lessons", []):
        lines.append(f"{row['lesson']}: {'passed' if row['passed'] else 'FAILED'} {row['seconds']} s, "
                     f"peak GPU {row['peak_gpu_MB']} MB" + ("" if row["passed"] else f"\n  {row['error'][-600:]}"))
    for mode, row in report.get("speed", {}).get("modes", {}).items():
        ms = {k: v["ms_per_token"] for k, v in row["variants"].items()}
        lines.append(f"speed {mode}: ms/token {ms}; cache_implementation {row['cache_implementation']}")
    return "\n".join(lines)


def main(argv=None):
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--summary":
        with open(sys.argv[2]) as f:
            print(summary(json.load(f)))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default="bf16,fp16,int8,nf4,nf4+dq,fp4")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--ppl-tokens", type=int, default=4096)
    p.add_argument("--skip-models", action="store_true")
    p.add_argument("--skip-gemv", action="store_true", help="skip lesson 09's per-layer GEMV timing")
    p.add_argument("--speed", action="store_true", help="generation speed, default vs disable_compile, profiled")
    p.add_argument("--lessons", action="store_true", help="execute every lesson on the GPU (nbclient)")
    p.add_argument("--only", default="", help="with --lessons: lesson numbers, e.g. 05,06")
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
    if DEVICE == "cuda":   # lessons 09 and 11's device paths: fused int4 layers, time split, methods on the GPU
        from qlearn.kernels.gpucheck import check_cuda as check_kernel_paths
        from qlearn.methods.gpucheck import check_cuda as check_method_paths

        for key, check in (("kernel_paths", check_kernel_paths), ("method_paths", check_method_paths)):
            try:
                report[key] = check("cuda")
            except Exception as err:   # noqa: BLE001 - report it and go on
                report[key] = {"ok": False, "failures": [f"{type(err).__name__}: {err}"]}
        report["device_paths_ok"] = report["kernel_paths"]["ok"] and report["method_paths"]["ok"]
    if not args.skip_gemv and DEVICE == "cuda":
        report["gemv_4bit"] = check_gemv()
    _save(report, args.out)
    if not args.skip_models and DEVICE == "cuda":
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        report["models"] = check_models(modes, args.new_tokens, args.ppl_tokens)
        _save(report, args.out)
    if args.speed and DEVICE == "cuda":
        report["speed"] = check_speed()
        _save(report, args.out)
    if args.lessons:
        only = {n.strip().zfill(2) for n in args.only.split(",") if n.strip()}
        report["lessons"] = check_lessons(only)
        report["lessons_passed"] = f"{sum(r['passed'] for r in report['lessons'])} of {len(report['lessons'])}"
    text = _save(report, args.out)
    print(text)
    ok = (report["kernels_ok"] and report.get("device_paths_ok", True)
          and all(r["passed"] for r in report.get("lessons", [])))
    return 0 if ok else 1


def _save(report, path):
    """Write the report so far (a run cut short still leaves what it measured)."""
    text = json.dumps(report, indent=1)
    if path:
        with open(path, "w") as f:
            f.write(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
