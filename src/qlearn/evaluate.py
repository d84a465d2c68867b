"""Evaluation on a real model: perplexity on a fixed offline text, and a side-by-side mode comparison.

The offline text is English prose that every CPython install carries: ``pydoc_data.topics``
(the help topics), its keys sorted and the entries joined by blank lines. The first ``max_tokens``
tokens (tokenized without special tokens) are scored in windows of ``window`` tokens, so a number is
reproducible from (model, tokenizer, max_tokens, window, stride) alone, without a network.

Measured on the embedded SmolLM2-135M (CPU, bitsandbytes 0.50.2), 4,096 tokens, windows of 512
(4,088 tokens scored): fp32 14.70, bf16 14.71, fp16 14.71, int8 14.97, nf4 18.75, nf4+dq 18.73,
fp4 22.00; absmax int4 in blocks of 64 (weights fake-quantized) 22.86. With 1,024 tokens (the CPU
default of ``qlearn tour``): bf16 14.24, int8 14.58, nf4 18.66, nf4+dq 18.65, fp4 20.56.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

__all__ = ["Perplexity", "offline_text", "eval_tokens", "perplexity", "compare", "parse_mode"]

WIKITEXT2 = "wikitext-2"


def offline_text() -> str:
    """The fixed evaluation prose: ``pydoc_data.topics``, keys sorted, joined by blank lines (~465k chars).

    >>> offline_text()[:13]
    '\\nThe "assert"'
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def _hub_text(name):
    try:
        import datasets
    except ImportError as err:
        raise ImportError(f"dataset={name!r} needs the 'datasets' package: pip install datasets") from err
    try:
        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    except Exception as err:   # offline, hub unreachable, ...: say which and how to stay offline
        raise OSError(f"could not fetch dataset {name!r} from the hub ({err}); "
                      "use dataset=None for the offline text") from err
    return "\n\n".join(rows["text"])


def eval_tokens(tok, text=None, max_tokens=4096, dataset=None):
    """The first ``max_tokens`` token ids of the evaluation text, int64 tensor of shape (1, n).

    >>> eval_tokens(tok, max_tokens=4096).shape  # doctest: +SKIP
    torch.Size([1, 4096])
    """
    if dataset is not None:
        if dataset != WIKITEXT2:
            raise ValueError(f"unknown dataset {dataset!r}; allowed: None (offline text), {WIKITEXT2!r}")
        if text is not None:
            raise ValueError("give text or dataset, not both")
        text = _hub_text(dataset)
    if text is None:
        text = offline_text()
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty str; got {type(text).__name__} of length {len(text or '')}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2:
        raise ValueError(f"max_tokens must be an int >= 2; got {max_tokens!r}")
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]   # (1, all)
    return ids[:, :max_tokens]


@dataclass(frozen=True)
class Perplexity:
    """exp(mean negative log-likelihood per predicted token). ``float(result)`` gives the number."""

    perplexity: float
    nll: float            # mean NLL in nats per predicted token
    n_tokens: int         # tokens of text used
    n_predicted: int      # tokens scored (the first token of the text has no context)
    window: int
    stride: int

    def __float__(self):
        return self.perplexity


def perplexity(model, tok, text=None, max_tokens=4096, window=512, stride=None, dataset=None,
               progress=True):
    """Perplexity of ``model`` on ``text`` (default: the offline ``pydoc_data.topics`` prose).

    Windows of ``window`` tokens start every ``stride`` tokens (default: ``window``, no overlap);
    each window scores only the tokens the previous one did not, with the rest as context.
    Embedded SmolLM2, 4,096 tokens, window 512: bf16 14.71, int8 14.97, nf4 18.76, fp4 22.00.

    >>> perplexity(model, tok).perplexity  # doctest: +SKIP
    14.71...
    """
    from tqdm.auto import tqdm

    stride = window if stride is None else stride
    for name, value in (("window", window), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an int >= 2; got {value!r}")
    if stride > window:
        raise ValueError(f"stride ({stride}) must not exceed window ({window}): tokens would go unscored")
    ids = eval_tokens(tok, text, max_tokens, dataset).to(model.device)   # (1, n)
    n = ids.shape[1]
    starts = list(range(0, max(n - window, 0) + stride, stride)) if n > window else [0]
    nll_sum, scored, prev_end = 0.0, 0, 0
    for begin in tqdm(starts, desc="perplexity", unit="window", disable=not progress, leave=False):
        end = min(begin + window, n)
        chunk = ids[:, begin:end]                          # (1, <=window)
        labels = chunk.clone()
        labels[:, : max(prev_end - begin, 0)] = -100       # context only: scored by an earlier window
        with torch.inference_mode():
            logits = model(chunk).logits[:, :-1].float()   # (1, len-1, vocab)
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        nll_sum += loss.item()
        scored += int((target != -100).sum())
        prev_end = end
        if end == n:
            break
    nll = nll_sum / scored
    return Perplexity(math.exp(nll), nll, n, scored, window, stride)


def parse_mode(label):
    """A comparison row label -> (mode, double_quant): "nf4" is plain NF4, "nf4+dq" adds double quant.

    >>> parse_mode("nf4+dq"), parse_mode("nf4"), parse_mode("int8")
    (('nf4', True), ('nf4', False), ('int8', None))
    """
    from .models import FOUR_BIT_MODES, MODES

    if not isinstance(label, str):
        raise TypeError(f"a mode label must be a str; got {type(label).__name__} {label!r}")
    mode, _, extra = label.partition("+")
    allowed = f"{', '.join(MODES)}, or nf4+dq / fp4+dq"
    if mode not in MODES or extra not in ("", "dq") or (extra and mode not in FOUR_BIT_MODES):
        raise ValueError(f"unknown mode {label!r}; allowed: {allowed}")
    return mode, (extra == "dq") if mode in FOUR_BIT_MODES else None


def _measure(label, model_id, prompt, max_new_tokens, ppl_tokens, window, device_map):
    """Load one mode, measure it, free it; returns one row (dict)."""
    from . import memory
    from .models import _generate_ids, load, release_memory

    mode, dq = parse_mode(label)
    t0 = time.perf_counter()
    model, tok = load(model_id, mode=mode, double_quant=dq, device_map=device_map, verbose=False)
    load_s = time.perf_counter() - t0
    fp = memory.footprint(model)
    t0 = time.perf_counter()
    new_ids, answer = _generate_ids(model, tok, prompt, max_new_tokens)
    gen_s = time.perf_counter() - t0
    ppl = perplexity(model, tok, max_tokens=ppl_tokens, window=window) if ppl_tokens else None
    row = dict(mode=label, reported_bytes=fp.total_bytes, quant_state_bytes=fp.quant_state_bytes,
               true_bytes=fp.true_bytes, linear_weight_bytes=fp.linear_weight_bytes,
               other_bytes=fp.total_bytes - fp.linear_weight_bytes,
               bits_per_weight=fp.bits_per_quantized_weight, load_s=load_s,
               tokens_per_s=len(new_ids) / gen_s, perplexity=ppl.perplexity if ppl else float("nan"),
               answer=answer)
    del model, tok
    release_memory()
    return row



def compare(modes=("bf16", "int8", "nf4", "fp4"), model_id="embedded",
            prompt="What is the capital of France?", max_new_tokens=50, ppl_tokens=4096, window=512,
            device_map="auto", progress=True):
    """One row per mode: footprint (reported and true bytes), bits per weight, speed, perplexity, answer.

    Modes are loaded one at a time (one model in memory). Labels: fp32, bf16, fp16, int8, nf4, fp4,
    and nf4+dq / fp4+dq for double quant ("nf4" alone is plain NF4 here). ``ppl_tokens=0`` skips
    perplexity. Returns a pandas DataFrame indexed by mode.

    >>> compare(("bf16", "nf4"), max_new_tokens=12, ppl_tokens=1024)  # doctest: +SKIP
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if isinstance(modes, str):
        modes = (modes,)
    for label in modes:
        parse_mode(label)   # fail before loading anything
    if isinstance(prompt, str) and not prompt.strip():
        raise ValueError(f"prompt is empty ({prompt!r}); give the model a question")
    rows = [_measure(label, model_id, prompt, max_new_tokens, ppl_tokens, window, device_map)
            for label in tqdm(modes, desc="compare", unit="mode", disable=not progress)]
    return pd.DataFrame(rows).set_index("mode")
