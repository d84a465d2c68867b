"""Fused int4 against dequantize-then-matmul, per linear layer, all layers of the embedded model cycled.

    python benchmarks/bench_kernels.py                  # batch 1 and 16, one thread, 5 rounds
    python benchmarks/bench_kernels.py --synthetic      # random weights of the same shapes (no model file)
    python benchmarks/bench_kernels.py --batches 1,4,16,64 --threads 2 --json out.json

The 210 linear layers of the 30 blocks (q, k, v, o, gate, up, down; lm_head is not swapped: it is tied
to the embedding), read in bf16 from the converted embedded model, each multiplied by a batch of random
inputs in turn, path after path (qlearn.kernels.layerbench: alternating rounds, fastest kept). Paths:
bf16 F.linear; qlearn int4 decode then F.linear (the same codes the fused kernel reads); bitsandbytes
nf4 dequantize_4bit then F.linear; torch's fused int4 kernel (asymmetric, group 64); torch's int8
weight-only kernel. Also: this machine's copy bandwidth and the floor it puts on each path at batch 1.
The last line is ``fused_int4_vs_dequant_matmul=<ratio>``: the FASTER of the two dequantize-then-matmul
paths at batch 1 over the fused int4 kernel (so the ratio is the conservative one).
"""

import argparse
import json
import os
import sys

import torch

import qlearn as ql
from qlearn.kernels import copy_bandwidth
from qlearn.kernels.layerbench import PATHS, build_paths, time_layer_paths

NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,16")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    info = ql.backend_info()
    paths = PATHS if info.bitsandbytes_version != "not installed" else tuple(x for x in PATHS if x != "bnb-nf4")
    weights = embedded_weights(a.synthetic)
    n_bytes = {"bf16": sum(w.numel() * 2 for w in weights)}
    fns = build_paths(weights, paths)
    in_features = [w.shape[1] for w in weights]
    del weights
    load = os.getloadavg()
    print(f"# {len(in_features)} layers ({'synthetic' if a.synthetic else 'embedded SmolLM2'}), "
          f"{a.threads} thread(s), load {load[0]:.1f} {load[1]:.1f}; torch {torch.__version__}, "
          f"CPU capability {info.cpu_capability}, bitsandbytes {info.bitsandbytes_version}")
    print(f"# bitsandbytes dequantize_4bit on CPU: {info.dequantize_4bit}")
    bw = copy_bandwidth()
    print(f"copy_bandwidth_GBps={bw / 1e9:.2f}")
    results = {"load": load, "threads": a.threads, "copy_bandwidth": bw, "batches": {}}
    for batch in [int(b) for b in a.batches.split(",")]:
        t = time_layer_paths(fns, in_features, batch=batch, rounds=a.rounds, n_threads=a.threads)
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
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    print(f"fused_int4_vs_dequant_matmul={ratio:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
