"""LoRA adapters on a loaded model (peft), a short training loop, the held-out loss: QLoRA when the base is 4-bit.

QLoRA (Dettmers et al. 2023, arXiv 2305.14314) trains small low-rank adapters ``B @ A`` (rank r, scaled by
alpha / r) beside frozen weights stored in NF4 with double quantization. Everything here is peft and transformers:
``LoraConfig`` + ``get_peft_model``, ``prepare_model_for_kbit_training`` for a 4-bit base, torch's AdamW; the loop
is a few lines with a tqdm bar. Loss is the mean NLL of the answer tokens (prompt tokens are not scored).

4-bit layers stay in training mode throughout: on an AVX512-BF16 CPU an eval-mode forward repacks a
``Linear4bit``'s weight into bitsandbytes' inference-only layout (``Linear4bit.forward``), which neither trains
(its fused kernel has no backward) nor merges.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import check_int
from .data import Batch, encode

__all__ = ["TARGETS", "PrepareCost", "Run", "train_dtype", "lora_mode", "load_for_training", "load_rounded",
           "CastingLinear", "attach_lora", "set_checkpointing", "checkpointing", "adapter_shapes", "heldout_loss",
           "answers", "train", "adapter_runner"]

# target-module choices: peft's "all-linear" (QLoRA's choice), attention only, q and v (the LoRA paper's), the MLP
TARGETS = {"all-linear": "all-linear", "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
           "q,v": ("q_proj", "v_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def train_dtype(device="cpu") -> torch.dtype:
    """The dtype training computes in: bf16 on a GPU of capability >= 8.0 or a CPU with AVX512-BF16; else fp16 on an
    older GPU and float32 on a CPU without bf16 arithmetic (an AMD EPYC with AVX2 here ran a bf16 matmul 40x slower
    than float32: 1.28 s against 0.032 s for (304 x 576) @ (576 x 1536))."""
    from .. import bnb_interop
    from ..backend import default_compute_dtype

    if torch.device(device).type == "cuda":
        return default_compute_dtype(device)
    return torch.bfloat16 if bnb_interop.has_avx512bf16() else torch.float32


def lora_mode(device="cpu") -> str:
    """The mode plain LoRA trains on: "bf16", or "fp32" where bf16 arithmetic is emulated (the same weights:
    the checkpoint's bf16 values are exact in float32)."""
    return "bf16" if train_dtype(device) == torch.bfloat16 else "fp32"


def load_for_training(mode: str, model_id="embedded", device_map="auto"):
    """``ql.load`` with the 4-bit compute dtype set to `train_dtype`, left in training mode (see the module note)."""
    from ..models import load, resolve_device

    compute = train_dtype(resolve_device(device_map)) if mode.split("+")[0] in ("nf4", "fp4") else None
    model, tok = load(model_id, mode=mode, compute_dtype=compute, device_map=device_map, verbose=False)
    return model.train(), tok


class CastingLinear(torch.nn.Linear):
    """An ``nn.Linear`` that computes in its weight's dtype and hands back its input's dtype, as bitsandbytes'
    ``Linear4bit`` does (input cast to the compute dtype, output cast back): where QLoRA trains in bf16 on a
    float32 residual stream, the control's layers then round exactly where QLoRA's do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype)).to(x.dtype)


def load_rounded(mode: str = "nf4+dq", model_id="embedded", device_map="auto"):
    """The 16-bit model (``lora_mode``) whose linear layers hold exactly the values a 4-bit ``mode`` (nf4, fp4,
    nf4+dq, fp4+dq; blocks of 64) computes with, in training mode.

    Each weight is quantized by bitsandbytes itself (`qlearn.bnb_interop`, the bytes ``ql.load`` would store)
    and dequantized in the training dtype, as bitsandbytes' ``gemm_4bit`` does before its matmul (fake
    quantization, `qlearn.fakequant`). Everything else is made as QLoRA's model is after
    ``prepare_model_for_kbit_training``: the other 16-bit parameters (embedding, norms) float32, so the residual
    stream is float32, and each linear layer a `CastingLinear` (computes in the training dtype, returns float32).
    LoRA on this model computes what QLoRA on ``mode`` computes, with plain layers: the control that separates
    what the 4-bit *base* costs from anything the 4-bit *training* adds. The lm_head tied to the embedding is
    left as it is, as bitsandbytes leaves it (so float32 too).
    """
    from .. import bnb_interop
    from .._checks import check_choice
    from ..fakequant import fake_quantize, quantizable_layers
    from ..models import load, resolve_device

    check_choice(mode, "mode", ("nf4", "fp4", "nf4+dq", "fp4+dq"))
    quant_type, double_quant = mode.split("+")[0], mode.endswith("+dq")
    device = resolve_device(device_map)
    model, tok = load(model_id, mode=lora_mode(device), device_map=device_map, verbose=False)

    def stored(w):   # quantized from the checkpoint's bf16 values, as loading in 4 bits does
        return bnb_interop.quantize_4bit_record(w.to(torch.bfloat16), quant_type, 64, double_quant)

    layers = quantizable_layers(model)
    fake_quantize(model, {name: stored for name in layers}, keep_originals=False, values_dtype=train_dtype(device))
    modules = dict(model.named_modules())
    linear_weights = {id(modules[name].weight) for name in layers}
    for p in model.parameters():     # what prepare_model_for_kbit_training does to the parameters it can upcast
        if p.dtype in (torch.float16, torch.bfloat16) and id(p) not in linear_weights:
            p.data = p.data.float()
    for name in layers:
        modules[name].__class__ = CastingLinear
    return model.train(), tok


@dataclass(frozen=True)
class PrepareCost:
    """What ``prepare_model_for_kbit_training`` changed: parameters cast to float32 and the bytes that added."""

    cast: tuple       # ((name, dtype before), ...) for every parameter it upcast
    added_bytes: int
    gradient_checkpointing: bool


def attach_lora(model, rank: int = 8, alpha: int | None = None, targets="all-linear", gradient_checkpointing=False,
                seed: int = 0):
    """Fresh LoRA adapters on ``model`` (peft): ``(peft_model, PrepareCost)``. A 4-bit or 8-bit base goes through
    ``prepare_model_for_kbit_training`` first (it freezes the base, upcasts every 16-bit parameter to float32 and,
    when asked, turns on gradient checkpointing). alpha None: 2 * rank. targets: a key of `TARGETS` or module names.
    LoRA r=8 on every linear layer of the embedded model: 2,442,240 trainable parameters.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    check_int(rank, "rank", minimum=1)
    targets = TARGETS.get(targets, targets) if isinstance(targets, str) else tuple(targets)
    if isinstance(targets, str) and targets != "all-linear":
        raise ValueError(f"targets must be one of {', '.join(map(repr, TARGETS))} or module names; got {targets!r}")
    before = {n: (p.dtype, p.numel()) for n, p in model.named_parameters()}
    kbit = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    if kbit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    else:
        set_checkpointing(model, gradient_checkpointing)
    cast = tuple((n, before[n][0]) for n, p in model.named_parameters() if p.dtype != before[n][0])
    added = sum(before[n][1] * (4 - before[n][0].itemsize) for n, _ in cast)
    config = LoraConfig(r=rank, lora_alpha=2 * rank if alpha is None else alpha, target_modules=targets,
                        lora_dropout=0.0, task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)   # peft draws A from the global generator
        # peft 0.21 reads transformers' old flag name, which transformers 5 warns about on every call
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    return peft_model.train(), PrepareCost(cast, added, gradient_checkpointing)


def set_checkpointing(model, on: bool) -> None:
    """Gradient checkpointing on (reentrant, inputs made to require grad, as peft's preparation does) or off.
    transformers 5 calls it activation checkpointing (``activation_checkpointing_enable``); older names are used
    where the new ones are missing."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if on:
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": True})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.enable_input_require_grads()
    elif checkpointing(model):
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()
        model.disable_input_require_grads()


def checkpointing(model) -> bool:
    """Whether gradient checkpointing is on (transformers 5 renamed the flag ``is_activation_checkpointing``)."""
    new = getattr(model, "is_activation_checkpointing", None)
    return bool(new if new is not None else getattr(model, "is_gradient_checkpointing", False))


def adapter_shapes(model) -> dict:
    """{layer name: (rank, in_features, out_features)} of every LoRA layer; its adapters hold r * (in + out)."""
    return {name.removeprefix("base_model.model."): (m.r["default"], m.in_features, m.out_features)
            for name, m in model.named_modules() if hasattr(m, "lora_A") and "default" in getattr(m, "r", {})}


def _nll(model, batch: Batch):
    """(summed NLL of the answer tokens, their count): logits only for the last ``batch.keep`` positions."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                logits_to_keep=batch.keep, use_cache=False)
    logits = out.logits[:, :-1]                                   # (b, keep - 1, vocab)
    target = batch.labels[:, -(batch.keep - 1):]                  # (b, keep - 1)
    return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100, reduction="sum"), \
        int((target != -100).sum())


def heldout_loss(model, tok, examples, batch_size: int = 8) -> float:
    """Mean NLL (nats) per answer token over ``examples``; exp of it is the answers' perplexity."""
    total = count = 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            s, n = _nll(model, encode(tok, examples[i:i + batch_size], model.device))
            total, count = total + float(s), count + n
    return total / count


def answers(model, tok, prompts, max_new_tokens: int = 24) -> tuple:
    """Greedy answers to ``prompts`` (``ql.generate``: the chat template, stops at end-of-turn)."""
    from ..models import generate

    return tuple(generate(model, tok, p, max_new_tokens=max_new_tokens) for p in prompts)


@dataclass(frozen=True)
class Run:
    """One training run: train loss per step, held-out loss and greedy answers at each checkpoint step."""

    train_loss: tuple
    eval_steps: tuple
    heldout: tuple
    answers: tuple          # per checkpoint: one answer per prompt
    seconds: float          # training steps only (no evaluation)
    tokens: int             # tokens trained on (padding excluded)
    trainable: int

    @property
    def steps(self) -> int:
        return len(self.train_loss)

    @property
    def s_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def train(model, tok, examples, heldout=(), steps: int = 20, batch_size: int = 4, lr: float = 1e-3,
          eval_every: int | None = None, prompts=(), max_new_tokens: int = 24, seed: int = 0,
          progress: bool = True) -> Run:
    """Train the adapters of ``model`` (peft) with AdamW for ``steps`` steps of ``batch_size`` examples, cycling
    through a seeded permutation of ``examples``; at step 0, every ``eval_every`` steps and at the end, score the
    ``heldout`` loss and answer ``prompts`` greedily. Embedded model, nf4+dq, r=8 on all linear layers, float32
    compute: 12 steps of 4 orders at lr 1e-3 took the held-out loss (16 orders) from 3.55 to 0.066 nats per answer
    token (benchmarks/bench_qlora.py).
    """
    from tqdm.auto import tqdm

    check_int(steps, "steps", minimum=0)
    check_int(batch_size, "batch_size", minimum=1)
    if not adapter_shapes(model):
        raise ValueError("model has no LoRA adapters: attach them first (attach_lora)")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    checks = sorted({0, steps, *range(0, steps, eval_every or max(steps, 1))})
    losses, evals, held, said, seconds, tokens = [], [], [], [], 0.0, 0
    bar = tqdm(total=steps, desc="training", unit="step", disable=not progress, leave=False, file=sys.stderr)
    for step in range(steps + 1):
        if step in checks:
            evals.append(step)
            held.append(heldout_loss(model, tok, heldout) if len(heldout) else float("nan"))
            said.append(answers(model, tok, prompts, max_new_tokens))
            bar.set_postfix(heldout=f"{held[-1]:.3f}")
        if step == steps:
            break
        batch = encode(tok, [examples[order[(step * batch_size + i) % len(order)]] for i in range(batch_size)],
                       model.device)
        start = time.perf_counter()
        total, count = _nll(model, batch)
        (total / count).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - start
        losses.append(total.item() / count)
        tokens += batch.tokens
        bar.update(1)
    bar.close()
    return Run(tuple(losses), tuple(evals), tuple(held), tuple(said), seconds, tokens, sum(p.numel() for p in params))




def adapter_runner(model, tok, examples, heldout=(), prompts=(), steps: int = 20, eval_every: int = 5,
                   batch_size: int = 4, lr: float = 1e-3, max_new_tokens: int = 32, progress: bool = True):
    """A function ``(rank, targets) -> Run`` for the fine-tuning explorer: it trains a fresh adapter of that rank on
    those modules of ``model`` (a peft model, whose own adapter is set aside meanwhile) with the same data, steps
    and seed, then deletes it. One call costs a training run (``steps`` steps). ``model`` may be a function that
    returns the peft model: it is called at the first run only, so nothing is loaded until a setting is tried."""
    from peft import LoraConfig

    held = {}

    def run(rank: int, targets="all-linear") -> Run:
        check_int(rank, "rank", minimum=1)
        if "model" not in held:
            held["model"] = model() if callable(model) and not isinstance(model, torch.nn.Module) else model
        peft_model = held["model"]
        name = f"explore-r{rank}-{targets}".replace(",", "-").replace(".", "-")
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS.get(targets, targets),
                            lora_dropout=0.0, task_type="CAUSAL_LM")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            peft_model.add_adapter(name, config)
        peft_model.set_adapter(name)   # only the active adapter requires grad
        try:
            return train(peft_model, tok, examples, heldout, steps, batch_size, lr, eval_every, prompts,
                         max_new_tokens, progress=progress)
        finally:
            peft_model.set_adapter("default")
            peft_model.delete_adapter(name)

    return run
