"""Device-dependent choices of the model layer, tested without a GPU: the 4-bit compute dtype that loading picks
for a GPU of a given compute capability (torch's answers monkeypatched), and honest speed (fixed length, warm,
synchronized on CUDA) in timed_generate, compare's rows, the generation explorer and the tour's report."""

import pytest
import torch

import qlearn as ql
from qlearn import models
from qlearn.models import Generation, quantization_config, timed_generate


def _fake_gpu(monkeypatch, capability=(7, 5), name="Tesla T4"):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


# ---- the compute dtype follows the hardware ----

@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((6, 1), torch.float16),
                                               ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)], ids=str)
def test_quantization_config_follows_the_gpu(monkeypatch, capability, dtype):
    _fake_gpu(monkeypatch, capability)
    for mode in ("nf4", "nf4+dq", "fp4", "fp4+dq"):
        assert quantization_config(mode).bnb_4bit_compute_dtype == dtype                     # "auto": the GPU
        assert quantization_config(mode, device_map="cuda:0").bnb_4bit_compute_dtype == dtype
        assert quantization_config(mode, device_map={"": 0}).bnb_4bit_compute_dtype == dtype
        assert quantization_config(mode, device_map="cpu").bnb_4bit_compute_dtype == torch.bfloat16
        assert quantization_config(mode, torch.float32).bnb_4bit_compute_dtype == torch.float32   # as asked
    assert quantization_config("int8").load_in_8bit and quantization_config("bf16") is None


def test_quantization_config_on_this_machine():
    expected = torch.bfloat16 if not torch.cuda.is_available() else ql.backend.default_compute_dtype("cuda")
    assert quantization_config("nf4+dq").bnb_4bit_compute_dtype == expected


@pytest.mark.parametrize("device_map, device", [("cpu", "cpu"), ({"model": "cpu", "lm_head": 1}, "cuda:1"),
                                                ({"": "cuda:0"}, "cuda:0"), ({"a": "cpu", "b": "disk"}, "cpu")])
def test_compute_device_of_a_device_map(device_map, device):
    assert models._compute_device(device_map) == device


class _FakeLoaded(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))


def _fake_from_pretrained(monkeypatch):
    """transformers' loaders replaced: from_pretrained records its keyword arguments and returns a tiny module."""
    import transformers

    seen = {}

    def model_loader(path, **kwargs):
        seen.update(kwargs)
        return _FakeLoaded()

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_loader)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda path, **kwargs: object())
    return seen


def test_load_on_a_t4_computes_in_fp16_and_says_why(monkeypatch, tmp_path, capsys):
    _fake_gpu(monkeypatch, (7, 5))
    seen = _fake_from_pretrained(monkeypatch)
    ql.load(str(tmp_path), mode="nf4+dq", device_map="auto")
    err = capsys.readouterr().err
    assert seen["device_map"] == "cuda" and seen["quantization_config"].bnb_4bit_compute_dtype == torch.float16
    assert "on cuda (CUDA device found)" in err
    assert "4-bit compute dtype float16 (compute capability 7.5 < 8.0 has no native bf16" in err
    ql.load(str(tmp_path), mode="nf4", compute_dtype=torch.bfloat16, device_map="auto")
    assert seen["quantization_config"].bnb_4bit_compute_dtype == torch.bfloat16
    assert "4-bit compute dtype bfloat16 (as asked)" in capsys.readouterr().err


def test_load_on_a_cpu_keeps_bf16_and_says_so(monkeypatch, tmp_path, capsys):
    _fake_gpu(monkeypatch, (7, 5))            # a T4 in the machine, but the model goes to the CPU
    seen = _fake_from_pretrained(monkeypatch)
    ql.load(str(tmp_path), mode="fp4", device_map="cpu")
    assert seen["quantization_config"].bnb_4bit_compute_dtype == torch.bfloat16
    assert "4-bit compute dtype bfloat16 (the CPU default" in capsys.readouterr().err
    ql.load(str(tmp_path), mode="int8", device_map="cpu")
    ql.load(str(tmp_path), mode="nf4", device_map="cpu", verbose=False)
    assert "compute dtype" not in capsys.readouterr().err   # int8 has none; verbose=False says nothing


# ---- honest speed: fixed length, warm, synchronized ----

class _Tok:
    pad_token_id, eos_token_id, chat_template = 0, 0, None

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"t{int(i)}" for i in ids)


class _Model:
    """generate(): stops after 3 tokens unless min_new_tokens forces more; each call takes 10 s on a fake clock."""

    def __init__(self, device, clock, log):
        self.device, self.clock, self.log = torch.device(device), clock, log

    def generate(self, input_ids, max_new_tokens, min_new_tokens=None, **kwargs):
        n = max_new_tokens if min_new_tokens is not None else min(3, max_new_tokens)
        assert min_new_tokens in (None, max_new_tokens)
        self.log.append(("generate", n, kwargs.get("disable_compile")))
        self.clock[0] += 10.0
        return torch.cat([input_ids, torch.arange(1, n + 1)[None]], dim=1)


def _fake_run(monkeypatch, device):
    clock, log = [0.0], []
    monkeypatch.setattr(models, "_prompt_ids", lambda tok, prompt, device: {"input_ids": torch.tensor([[7, 8]])})
    monkeypatch.setattr(models.time, "perf_counter", lambda: clock[0])

    def synchronize(device=None):
        log.append(("synchronize", str(device)))
        clock[0] += 0.5                        # the GPU finishing what was queued

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    return _Model(device, clock, log), log


def test_timed_generate_on_cuda_is_fixed_length_warm_and_synchronized(monkeypatch):
    model, log = _fake_run(monkeypatch, "cuda:0")
    g = timed_generate(model, _Tok(), "What is the capital of France?", max_new_tokens=16, disable_compile=True)
    assert log == [("generate", 3, True),                     # the natural answer (stops early)
                   ("generate", 16, True),                    # warm-up, fixed length, not timed
                   ("synchronize", "cuda:0"), ("generate", 16, True), ("synchronize", "cuda:0")]
    assert g.text == "t1 t2 t3" and g.answer_tokens == 3 and g.new_tokens == 16 and g.fixed_length
    assert g.seconds == 10.5                                  # the timed call and the GPU's finish, nothing else
    assert g.tokens_per_s == 16 / 10.5 and g.ms_per_token == pytest.approx(1e3 * 10.5 / 16)


def test_timed_generate_on_a_cpu_waits_for_nothing(monkeypatch):
    model, log = _fake_run(monkeypatch, "cpu")
    g = timed_generate(model, _Tok(), "Hi?", max_new_tokens=5, warmup=False)
    assert log == [("generate", 3, None), ("generate", 5, None)]
    assert g.seconds == 10.0 and g.new_tokens == 5 and g.answer_tokens == 3


def test_generation_record():
    g = Generation("Paris.", new_tokens=8, seconds=0.5)
    assert not g.fixed_length and g.answer_tokens is None and g.tokens_per_s == 16.0 and g.ms_per_token == 62.5


# ---- where the speed is shown ----

def test_generation_explorer_says_the_length_was_fixed():
    class Fake:
        def __init__(self, mode):
            self.mode = mode

    class Footprint:
        reported_bytes, quant_state_bytes = 269e6, 0.0

    w = ql.widgets.generation_explorer(
        "Hello?", modes=("bf16", "nf4"), max_new_tokens=12, loader=lambda model_id, mode: (Fake(mode), None),
        timer=lambda m, t, p, n: Generation("hi", n, 0.6, answer_tokens=1, fixed_length=True),
        footprint=lambda m: Footprint())
    w.update()
    assert w.error is None, w.error
    assert [(r["speed_tokens"], r["fixed_length"], r["tokens_per_s"]) for r in w.rows] == [(12, True, 20.0)] * 2
    assert "12 new tokens per mode at a fixed length, after a warm-up" in w.status.value
    assert w.figure.axes[1].get_xlabel() == "tokens / s (12 tokens, fixed length, warm)"


def test_report_says_how_speed_was_measured(tmp_path):
    import pandas as pd

    from qlearn.cli import _table, write_report

    df = pd.DataFrame([dict(mode=m, reported_bytes=b, quant_state_bytes=0, true_bytes=b, linear_weight_bytes=b / 2,
                            other_bytes=b / 2, bits_per_weight=16.0, load_s=1.0, tokens_per_s=t, ms_per_token=1e3 / t,
                            speed_tokens=32, perplexity=15.0, answer="Paris.")
                       for m, b, t in (("bf16", 269e6, 20.0), ("nf4", 110e6, 25.0))]).set_index("mode")
    assert "ms_per_token" in _table(df).splitlines()[0]
    md = write_report(df, tmp_path, n_tokens=64, window=512).read_text()
    assert "32 new tokens per mode at a fixed length (min_new_tokens = max_new_tokens" in md
    assert str(ql.backend_info()) in md


def test_models_docstring_examples():
    import doctest

    assert doctest.testmod(models).failed == 0
