"""Evaluation on a real model: perplexity on a fixed offline text, and a side-by-side mode comparison.

The offline text is English prose shipped in the package (`qlearn.texts`): CPython 3.11.7's help
topics (``pydoc_data.topics``), its keys sorted and the entries joined by blank lines, frozen so that
every Python scores the same tokens (its sha256 is ``OFFLINE_TEXT_SHA256``). The first ``max_tokens``
tokens (tokenized without special tokens) are scored in windows of ``window`` tokens, so a number is
reproducible from (model, tokenizer, max_tokens, window, stride) alone, without a network.

Measured on the embedded SmolLM2-135M (CPU, bitsandbytes 0.50.2), 4,096 tokens, windows of 512
(4,088 tokens scored): fp32 14.70, bf16 14.71, fp16 14.71, int8 14.97, nf4 18.75, nf4+dq 18.73,
fp4 22.00; absmax int4 in blocks of 64 (weights fake-quantized) 22.86. With 1,024 tokens (the CPU
default of ``qlearn tour``): bf16 14.24, int8 14.58, nf4 18.66, nf4+dq 18.65, fp4 20.56.
"""

from __future__ import annotations

import math

import torch

from . import bnb_interop, texts
from ._checks import check_int

__all__ = ["OFFLINE_TEXT_SHA256", "Perplexity", "offline_text", "eval_tokens", "perplexity", "summed_nll", "compare"]

WIKITEXT2 = "wikitext-2"


OFFLINE_TEXT_SHA256 = texts.TEXTS["evaluation"][1]   # 71f2ff5d99bdc1f9...: CPython 3.11.7's help topics


def offline_text() -> str:
    """The fixed evaluation prose: CPython 3.11.7's help topics, keys sorted, joined by blank lines (465,126
    chars), read from the package and checked against ``OFFLINE_TEXT_SHA256``.

    >>> offline_text()[:12]
    'The "assert"'
    """
    return texts.evaluation_text()


def _hub_text(name):
    try:
        import datasets
    except ImportError as err:
        raise ImportError(f"dataset={name!r} needs the 'datasets' package: pip install 'qlearn[hub]' "
                          "(or pip install datasets)") from err
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
    check_int(max_tokens, "max_tokens", minimum=2)
    return _first_tokens(tok, text, max_tokens)


def _first_tokens(tok, text, max_tokens, margin=64):
    """The first ``max_tokens`` ids of ``text`` (1, n), tokenizing only as much of it as that needs.

    A cut in the text changes only the tokens next to it (at most the last 4, over 19,667 cuts tried
    on the offline text with SmolLM2's tokenizer), so a prefix that yields ``margin`` more tokens than
    wanted gives the same first ``max_tokens`` as the whole text. Tokenizing the whole offline text
    (465k characters, 113k tokens) took 78 MB; 4,096 tokens need about 17k characters.
    """
    chars = 8 * (max_tokens + margin)                       # ~4 characters a token in English prose
    while True:
        ids = tok(text[:chars], add_special_tokens=False, return_tensors="pt")["input_ids"]   # (1, m)
        if chars >= len(text) or ids.shape[1] >= max_tokens + margin:
            return ids[:, :max_tokens]
        chars *= 2


class Perplexity(float):
    """A perplexity, exp(mean negative log-likelihood per predicted token): a float (compare it, format
    it, do arithmetic), that also carries how it was measured.

    >>> p = Perplexity(14.71, nll=2.6885, n_tokens=4096, n_predicted=4088, window=512, stride=512)
    >>> p < 20, f"{p:.1f}", p.window
    (True, '14.7', 512)
    """

    def __new__(cls, value, nll, n_tokens, n_predicted, window, stride):
        self = super().__new__(cls, value)
        self.nll = nll                    # mean NLL in nats per predicted token
        self.n_tokens = n_tokens          # tokens of text used
        self.n_predicted = n_predicted    # tokens scored (the first token of the text has no context)
        self.window, self.stride = window, stride
        return self

    def __repr__(self):
        return (f"Perplexity({float(self):.4f}, nll={self.nll:.4f}, n_tokens={self.n_tokens}, "
                f"n_predicted={self.n_predicted}, window={self.window}, stride={self.stride})")


def perplexity(model, tok, text=None, max_tokens=4096, window=512, stride=None, dataset=None,
               progress=True):
    """Perplexity of ``model`` on ``text`` (default: the offline ``pydoc_data.topics`` prose).

    Windows of ``window`` tokens start every ``stride`` tokens (default: ``window``, no overlap);
    each window scores only the tokens the previous one did not, with the rest as context.
    Embedded SmolLM2, 4,096 tokens, window 512: bf16 14.71, int8 14.97, nf4 18.76, fp4 22.00.

    >>> perplexity(model, tok)  # doctest: +SKIP
    Perplexity(14.7100, nll=2.6885, n_tokens=4096, n_predicted=4088, window=512, stride=512)
    """
    from tqdm.auto import tqdm

    stride = window if stride is None else stride
    for name, value in (("window", window), ("stride", stride)):
        check_int(value, name, minimum=2)
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
        with torch.inference_mode(), bnb_interop.quiet_logs():      # LLM.int8: no cast warning per matmul
            logits = model(chunk, use_cache=False).logits[0, :-1]   # (len-1, vocab), the model's dtype
            target = labels[0, 1:]                                  # (len-1,)
            nll_sum += summed_nll(logits, target)
        del logits
        scored += int((target != -100).sum())
        prev_end = end
        if end == n:
            break
    nll = nll_sum / scored
    return Perplexity(math.exp(nll), nll, n, scored, window, stride)


def summed_nll(logits, target, rows=64):
    """Sum of -log p(target) over the scored positions (target -100 = not scored), as a float.

    logits: (positions, vocab), any float dtype; target: (positions,) int64. The softmax runs in
    float32 on ``rows`` positions at a time, so the float32 copy is (rows, vocab): for SmolLM2's
    vocabulary of 49,152, 64 x 49,152 x 4 B = 12.6 MB, where a whole 512-token window would take
    511 x 49,152 x 4 B = 100 MB (and as much again for the log-softmax). Same sum, up to float rounding.

    >>> round(summed_nll(torch.zeros(3, 4), torch.tensor([0, -100, 2])), 4)   # 2 x log(4)
    2.7726
    """
    total = 0.0
    for i in range(0, target.shape[0], rows):
        part = logits[i:i + rows].float()                      # (<=rows, vocab) float32
        total += torch.nn.functional.cross_entropy(part, target[i:i + rows], ignore_index=-100,
                                                   reduction="sum").item()
    return total


def _measure(mode, model_id, prompt, max_new_tokens, ppl_tokens, window, device_map, generate_kwargs=None):
    """One row of ``compare``: load ``mode``, measure it, free it (``models.measure_mode``)."""
    from . import memory
    from .models import measure_mode, timed_generate

    def measure(model, tok):
        before = memory.footprint(model)                  # as loaded
        answer = timed_generate(model, tok, prompt, max_new_tokens, **(generate_kwargs or {}))
        after = memory.footprint(model)                   # after forwards: a CPU repack shows here
        ppl = perplexity(model, tok, max_tokens=ppl_tokens, window=window, progress=False) if ppl_tokens else None
        return dict(reported_bytes=before.reported_bytes, quant_state_bytes=before.quant_state_bytes,
                    quant_state_bytes_after_forward=after.quant_state_bytes, true_bytes=before.true_bytes,
                    linear_weight_bytes=before.linear_weight_bytes,
                    other_bytes=before.reported_bytes - before.linear_weight_bytes,
                    bits_per_weight=before.bits_per_quantized_weight, tokens_per_s=answer.tokens_per_s,
                    ms_per_token=answer.ms_per_token, speed_tokens=answer.new_tokens,
                    perplexity=float(ppl) if ppl is not None else float("nan"), answer=answer.text)

    return measure_mode(model_id, mode, measure, device_map=device_map)


def compare(modes=("bf16", "int8", "nf4", "nf4+dq", "fp4"), model_id="embedded",
            prompt="What is the capital of France?", max_new_tokens=50, ppl_tokens=4096, window=512,
            device_map="auto", progress=True, generate_kwargs=None):
    """One row per mode: footprint (reported and true bytes), bits per weight, speed, perplexity, answer.

    Modes (``MODES``) are loaded one at a time (one model in memory). Footprints are read as loaded;
    ``quant_state_bytes_after_forward`` is the state after generating (it grows where bitsandbytes
    repacks 4-bit layers on the CPU: ``backend_info()``). ``answer``: the natural greedy answer (at most
    ``max_new_tokens``). tokens_per_s / ms_per_token: ``models.timed_generate``, exactly ``max_new_tokens``
    tokens (``speed_tokens``) after a warm-up generate, synchronized on CUDA, so every mode does the same
    work. ``generate_kwargs`` go to ``model.generate`` (e.g. ``{"disable_compile": True}``).
    ``ppl_tokens=0`` skips perplexity. Returns a pandas DataFrame indexed by mode.

    >>> compare(("bf16", "nf4"), max_new_tokens=12, ppl_tokens=1024)  # doctest: +SKIP
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .memory import split_mode

    if isinstance(modes, str):
        modes = (modes,)
    for mode in modes:
        split_mode(mode)   # fail before loading anything
    if isinstance(prompt, str) and not prompt.strip():
        raise ValueError(f"prompt is empty ({prompt!r}); give the model a question")
    rows = [_measure(mode, model_id, prompt, max_new_tokens, ppl_tokens, window, device_map, generate_kwargs)
            for mode in tqdm(modes, desc="compare", unit="mode", disable=not progress)]
    return pd.DataFrame(rows).set_index("mode")
