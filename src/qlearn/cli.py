"""``qlearn tour``: the headless main job. Every mode on one model, a table, and a report folder.

    qlearn tour                                   # embedded SmolLM2, bf16 int8 nf4 nf4+dq fp4
    qlearn tour --modes bf16,nf4 --max-new-tokens 12 --ppl-tokens 512 --out /tmp/report

Writes ``<out>/report.md`` with three PNG figures (memory per mode split into linear weights /
quant state / layers kept in 16-bit; perplexity per mode; the answers side by side) and
``results.csv``. The figures are built in `qlearn.plots.report` (matplotlib's object API, never pyplot).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .formats import names

__all__ = ["main", "tour", "write_report"]

TOUR_MODES = names("tour")   # ("bf16", "int8", "nf4", "nf4+dq", "fp4")
PROMPT = "What is the capital of France?"
MB = 1e6


def _table(df):
    """The comparison as printable text (MB, rounded; tokens/s and ms per token at a fixed length)."""
    out = df.assign(reported_MB=df.reported_bytes / MB, quant_state_MB=df.quant_state_bytes / MB,
                    true_MB=df.true_bytes / MB)
    cols = ["reported_MB", "quant_state_MB", "true_MB", "bits_per_weight", "load_s", "tokens_per_s", "ms_per_token",
            "perplexity"]
    return out[[c for c in cols if c in out]].round({"reported_MB": 1, "quant_state_MB": 2, "true_MB": 1,
                                                     "bits_per_weight": 3, "load_s": 1, "tokens_per_s": 1,
                                                     "ms_per_token": 1, "perplexity": 2}).to_string()


def _estimate_note():
    from . import memory

    gb = {m: memory.estimate("llama-2-7b", m) for m in ("fp16", "int8", "nf4+dq")}
    f, i, n = (gb[m].true_bytes / 1e9 for m in ("fp16", "int8", "nf4+dq"))
    return (f"Estimate for Llama-2-7B (`ql.memory.estimate(\"llama-2-7b\", mode)`, weights only): fp16 {f:.2f} GB, "
            f"int8 {i:.2f} GB, nf4 + double quant {n:.2f} GB. int8 is {i / f:.2f} of fp16, not \"roughly 1/4\" "
            f"(int8 is 1/4 of *fp32*, and only for the linear weights); nf4 is {n / i:.2f} of int8: it \"halves "
            "again\" for the linear weights but not for the whole model, because the embeddings and lm_head "
            f"({gb['fp16'].unquantized_params / 1e9:.2f} B parameters) stay 16-bit in every mode.")


def write_report(df, out, model_id="embedded", prompt=PROMPT, n_tokens=None, window=None, wall_s=None):
    """Write report.md, memory.png, perplexity.png, answers.png and results.csv into ``out``; returns the .md path."""
    import platform

    import torch

    from .backend import backend_info
    from .plots.report import answers_figure, memory_figure, perplexity_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {"memory.png": memory_figure(df), "perplexity.png": perplexity_figure(df, n_tokens, window),
               "answers.png": answers_figure(df, prompt)}
    for name, fig in figures.items():
        fig.savefig(out / name)
    df.to_csv(out / "results.csv")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    speed = (f"tokens_per_s: {int(df['speed_tokens'].iloc[0])} new tokens per mode at a fixed length "
             "(min_new_tokens = max_new_tokens: end-of-sequence suppressed, so every mode does the same work), "
             "greedy, timed after a warm-up generate (on CUDA the device is synchronized before each clock read). "
             "The answers are separate, natural greedy generations." if "speed_tokens" in df else "")
    answers = "\n".join(f"| {m} | {str(a).replace('|', '/').replace(chr(10), ' ')} |" for m, a in df.answer.items())
    md = [
        f"# qlearn tour: {model_id}", "",
        f"Device: {device}; torch {torch.__version__}; {_versions()}."
        + (f" Wall time {wall_s:.0f} s." if wall_s else ""), "",
        "```", _table(df), "```", "", speed, "",
        "reported = `model.get_memory_footprint()`; true = reported + quantization state (absmax, nested "
        "double-quant state, LLM.int8 `SCB`), which that figure leaves out. bits_per_weight = (codes + "
        "state) * 8 / quantized weights.", "",
        "![memory per mode](memory.png)", "",
        "![perplexity per mode](perplexity.png)", "",
        f"Perplexity: first {n_tokens} tokens of `pydoc_data.topics` (sorted keys, joined by blank lines), "
        f"windows of {window} tokens, no overlap."
        + (" For the 4,096-token table: `qlearn tour --ppl-tokens 4096`." if (n_tokens or 0) < 4096 else ""), "",
        f"## Answers (greedy): {prompt}", "", "| mode | answer |", "|---|---|", answers, "",
        "![answers](answers.png)", "",
        "## Memory at 7B", "", _estimate_note(), "",
        "## Which bitsandbytes paths this machine took (`ql.backend_info()`)", "",
        "Speeds and state bytes above hold for this machine: bitsandbytes runs different kernels on different "
        "CPUs (docs/formats.md, \"CPU paths\") and GPUs (`bitsandbytes/backends/cuda/ops.py`).", "", "```",
        str(backend_info()), "```", "",
        "Note: the embedded SmolLM2-135M was stored as Q4_1 (4-bit, blocks of 32) in its GGUF file: the "
        "bf16 weights here are that file dequantized, so it was already quantized once before this tour.", "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


def _versions():
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("transformers", "bitsandbytes"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} missing")
    return "; ".join(parts)


def tour(model_id="embedded", modes=TOUR_MODES, out="report", max_new_tokens=32, ppl_tokens=None,
         window=512, prompt=PROMPT):
    """Compare ``modes`` on one model, print the table, write the report; returns (DataFrame, report path).

    ``ppl_tokens`` None: 4096 on CUDA, 1024 on a CPU (bf16 matmuls are slow on CPUs without native
    bf16, so the five modes at 4096 tokens take many minutes there; pass 4096 for the full table).
    """
    import torch

    from .evaluate import compare
    from .memory import split_mode
    from .models import embedded_model_path

    if not modes:
        raise ValueError(f"modes is empty; give one or more of {', '.join(TOUR_MODES)}")
    for label in modes:
        split_mode(label)   # a typo fails now, not after minutes of loading
    if ppl_tokens is None:
        ppl_tokens = 4096 if torch.cuda.is_available() else 1024
    start = time.perf_counter()
    if model_id == "embedded":
        embedded_model_path()   # the one-time conversion, with its own progress bar
    df = compare(modes, model_id=model_id, prompt=prompt, max_new_tokens=max_new_tokens,
                 ppl_tokens=ppl_tokens, window=window)
    wall = time.perf_counter() - start
    from .backend import backend_info

    print(backend_info(), end="\n\n")
    print(_table(df))
    print()
    for mode, answer in df.answer.items():
        print(f"{mode:>7}: {answer}")
    path = write_report(df, out, model_id, prompt, ppl_tokens, window, wall)
    print(f"\nreport: {path}  ({wall:.0f} s)")
    return df, path


def _parser():
    from .memory import MODES

    p = argparse.ArgumentParser(prog="qlearn", description="Learn LLM weight quantization on a real model.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tour", help="every mode on one model: table + report folder")
    t.add_argument("--model", default="embedded", help="'embedded' (offline SmolLM2-135M), a hub id or a folder")
    t.add_argument("--modes", default=",".join(TOUR_MODES),
                   help="comma-separated, from " + ",".join(MODES) + " (default: %(default)s)")
    t.add_argument("--out", default="report", help="report folder (default: %(default)s)")
    t.add_argument("--max-new-tokens", type=int, default=32, help="answer length (default: %(default)s)")
    t.add_argument("--ppl-tokens", type=int, default=None,
                   help="perplexity tokens, 0 to skip (default: 4096 on CUDA, 1024 on CPU)")
    t.add_argument("--window", type=int, default=512, help="perplexity window (default: %(default)s)")
    t.add_argument("--prompt", default=PROMPT)
    return p


def main(argv=None):
    """Console entry point ``qlearn``; returns the exit status."""
    from .bnb_interop import quiet_logs

    args = _parser().parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    try:
        with quiet_logs():   # LLM.int8's cast warning on every matmul, for the tour only (no logger level set)
            tour(args.model, modes, args.out, args.max_new_tokens, args.ppl_tokens, args.window, args.prompt)
    except (ValueError, TypeError, OSError, ModuleNotFoundError) as err:
        print(f"qlearn tour: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
