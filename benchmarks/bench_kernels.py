"""Fused int4 against dequantize-then-matmul, per linear layer, all layers of the embedded model cycled.

    python benchmarks/bench_kernels.py                  # batch 1 and 16, one thread, 5 rounds
    python benchmarks/bench_kernels.py --synthetic      # random weights of the same shapes (no model file)
    python benchmarks/bench_kernels.py --batches 1,4,16,64 --threads 2 --json out.json
    python benchmarks/bench_kernels.py --split          # also: lesson 09's time split, gap per mode
    python benchmarks/bench_kernels.py --split --split-modes bf16,nf4   # some of the modes only
    python benchmarks/bench_kernels.py --device cuda    # on a GPU (default: CUDA when present, else CPU)

The 210 linear layers of the 30 blocks (q, k, v, o, gate, up, down; lm_head is not swapped: it is tied
to the embedding), read in bf16 from the converted embedded model, each multiplied by a batch of random
inputs in turn, path after path (qlearn.kernels.layerbench: alternating rounds, fastest kept). Paths:
bf16 F.linear; qlearn int4 decode then F.linear (the same codes the fused kernel reads); bitsandbytes
nf4 dequantize_4bit then F.linear; torch's fused int4 kernel (asymmetric, group 64); torch's int8
weight-only kernel. Also: this machine's copy bandwidth and the floor it puts on each path at batch 1.
On a CUDA device the weights and inputs live on the GPU, the fused int4 kernel is the one
``qlearn.kernels.int4_path`` picks (torch's CUDA int4 kernel from compute capability 8.0), one more path is
timed (bitsandbytes.matmul_4bit, what its 4-bit layer runs there), the bandwidth is the GPU's own
(device-to-device copy) and every clock read waits for the GPU.
The last line is ``fused_int4_vs_dequant_matmul=<ratio>``: the FASTER of the two dequantize-then-matmul
paths at batch 1 over the fused int4 kernel (so the ratio is the conservative one).

``--split`` first measures lesson 09's bar "the time split sums to the measured forward within 15%": for
every mode the lesson splits (bf16, bitsandbytes nf4, nf4+dq and int8, qlearn's int4 dequantize-then-matmul
and the fused int4 kernel on the same codes), one model in memory at a time, ``qlearn.kernels.time_split``
at batch 1 for one token and for a 64-token prompt, one thread; per mode the forward without clocks, the
clocked forward, the gap and the load average. Before them: what timing one layer costs, with module
hooks and with the wrapper time_split uses, times the 211 linear layers. The last line stays the ratio.
"""

import argparse
import json
import os
import sys

import torch

import qlearn as ql
from qlearn.kernels import copy_bandwidth, describe_int4_path, hook_overhead, int4_path, swap_linears, time_split
from qlearn.kernels.layerbench import build_paths, default_paths, time_layer_paths

NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SPLIT_MODES = ("bf16", "nf4", "nf4+dq", "int8", "int4 dequant", "int4 fused")


def embedded_weights(synthetic=False):
    """The 210 block weights (N, K) in bf16, from the converted model or random with its shapes."""
    if synthetic:
        shapes = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576),
                  "gate_proj": (1536, 576), "up_proj": (1536, 576), "down_proj": (576, 1536)}
        gen = torch.Generator().manual_seed(0)
        return [(torch.randn(*shapes[n], generator=gen) * 0.05).to(torch.bfloat16) for _ in range(30) for n in NAMES]
    from safetensors import safe_open

    path = ql.embedded_model_path() / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        keys = sorted((k for k in f.keys() if k.endswith("proj.weight")),
                      key=lambda k: (int(k.split(".")[2]), NAMES.index(k.split(".")[-2])))
        return [f.get_tensor(k).to(torch.bfloat16).clone() for k in keys]


def _split_models(modes, device="auto"):
    """(label, model) for each of ``modes``, one at a time (the previous one is freed before the next loads).
    "int4 dequant" and "int4 fused" share one bf16 load: qlearn's int4 (group 64) decode-then-matmul, then
    swapped to the fused kernel on the very same codes."""
    for mode in modes:
        if mode == "int4 fused" and "int4 dequant" in modes:
            continue                                   # measured right after int4 dequant, on its codes
        model, _ = ql.load("embedded", mode="bf16" if mode.startswith("int4") else mode, device_map=device,
                           verbose=False)
        if mode.startswith("int4"):
            swap_linears(model, "int4-dequant" if mode == "int4 dequant" else "int4", blocksize=64)
        yield mode, model
        if mode == "int4 dequant" and "int4 fused" in modes:
            swap_linears(model, "int4")
            yield "int4 fused", model
        del model
        ql.models.release_memory()


def print_split(modes, prompt=64, repeats=5, threads=1, device="auto"):
    """Lesson 09's time split per mode at batch 1 (one token, and a ``prompt``-token prompt): the gap between
    the sum of the parts and the forward without clocks, with the load average when each was measured."""
    cost = hook_overhead()
    n_layers = 211                                        # 30 blocks x 7 + lm_head, the split's layers
    print(f"# timing one layer costs: module hooks (pre + post) {1e6 * cost['hooks']:.1f} us, time_split's "
          f"wrapper {1e6 * cost['wrapper']:.1f} us; x {n_layers} layers: {1e3 * n_layers * cost['hooks']:.2f} ms "
          f"vs {1e3 * n_layers * cost['wrapper']:.2f} ms per forward")
    print(f"{'mode':13s} {'tokens':>6s} {'forward ms':>10s} {'clocked ms':>10s} {'gap %':>6s} {'dequant %':>9s}  load")
    worst = {}
    for label, model in _split_models(modes, device):
        for seq in (1, prompt):
            s = time_split(model, 1, seq, repeats=repeats, label=label, n_threads=threads)
            load = os.getloadavg()
            worst[label] = max(worst.get(label, 0.0), s.gap)
            print(f"{label:13s} {seq:6d} {1e3 * s.forward_s:10.1f} {1e3 * s.hooked_s:10.1f} {100 * s.gap:6.1f} "
                  f"{100 * s.totals()['dequantize'] / s.parts_s:9.1f}  {load[0]:.1f} {load[1]:.1f}", flush=True)
        del model                                         # so the generator's release frees it
    print("split_gap_max_pct " + " ".join(f"{k.replace(' ', '_')}={100 * v:.1f}" for k, v in worst.items()))
    return worst


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,16")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--split", action="store_true", help="also lesson 09's time split per mode (gap at batch 1)")
    p.add_argument("--split-modes", default=",".join(SPLIT_MODES), help=f"modes of --split, among {SPLIT_MODES}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    info = ql.backend_info("cpu")   # its CPU lines are printed under CPU labels below
    split_gaps = None
    if a.split:
        modes = [m.strip() for m in a.split_modes.split(",") if m.strip()]
        unknown = set(modes) - set(SPLIT_MODES)
        if unknown:
            p.error(f"--split-modes must be among {SPLIT_MODES}; got {sorted(unknown)}")
        split_gaps = print_split(modes, threads=a.threads, device=device.type)
    paths = default_paths(device)
    if info.bitsandbytes_version == "not installed":
        paths = tuple(x for x in paths if not x.startswith("bnb-"))
    weights = [w.to(device) for w in embedded_weights(a.synthetic)]
    n_bytes = {"bf16": sum(w.numel() * 2 for w in weights)}
    fns = build_paths(weights, paths)
    in_features = [w.shape[1] for w in weights]
    del weights
    load = os.getloadavg()
    print(f"# {len(in_features)} layers ({'synthetic' if a.synthetic else 'embedded SmolLM2'}), "
          f"{a.threads} thread(s), load {load[0]:.1f} {load[1]:.1f}; torch {torch.__version__}, "
          f"CPU capability {info.cpu_capability}, bitsandbytes {info.bitsandbytes_version}")
    print(f"# bitsandbytes dequantize_4bit on CPU: {info.dequantize_4bit}")
    print(f"# device {device}{' (' + info.cuda + ')' if device.type == 'cuda' else ''}; fused int4: "
          f"{describe_int4_path(int4_path(device))}")
    bw = copy_bandwidth(device=device)
    print(f"copy_bandwidth_GBps={bw / 1e9:.2f}")
    results = {"load": load, "threads": a.threads, "copy_bandwidth": bw, "batches": {}}
    for batch in [int(b) for b in a.batches.split(",")]:
        t = time_layer_paths(fns, in_features, batch=batch, rounds=a.rounds, n_threads=a.threads, device=device)
        results["batches"][batch] = t.seconds
        for path in paths:
            print(f"batch={batch} {path:13s} {1e3 * t.seconds[path]:8.3f} ms/layer  "
                  f"x{t.ratio('bf16', path):5.2f} vs bf16")
        if batch == 1:
            floor = n_bytes["bf16"] / len(in_features) / bw
            print(f"batch=1 bf16 bandwidth floor {1e3 * floor:.3f} ms/layer (weights / copy bandwidth), "
                  f"int4 group 64: {1e3 * floor * 4.5 / 16:.3f}")
            dequant = [x for x in ("int4-dequant", "bnb-nf4") if x in paths]
            for x in dequant:
                print(f"fused_int4_vs_{x.replace('-', '_')}={t.ratio(x, 'int4'):.2f}")
            ratio = min(t.seconds[x] for x in dequant) / t.seconds["int4"]
            results["fused_int4_vs_dequant_matmul"] = ratio
    if split_gaps is not None:
        results["split_gap_max"] = split_gaps
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    print(f"fused_int4_vs_dequant_matmul={ratio:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
