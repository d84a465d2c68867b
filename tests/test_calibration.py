"""qlearn.calibration: the two calibration texts and their token ids (pinned), and the calibration pass of
qlearn.methods.apply (the inputs it captures, the thread count it leaves)."""

import hashlib
import re

import pytest
import torch

from qlearn import calibration, sensitivity
from qlearn._threads import threads
from qlearn.capture import first_call
from qlearn.methods import apply
from qlearn.methods.gptq import gptq, hessian

# sha256 of the int64 ids' bytes with the embedded SmolLM2 tokenizer, as qlearn 0.2's two separate functions
# gave them (sensitivity.calibration_ids, methods.apply.calibration_ids): a lesson's ids must not move
PINNED = {
    ("sensitivity", None, None): ((2, 128), "494957c68ef3eea7157f5a0befe345f1124058721d04e1757617f57f538f4453"),
    ("sensitivity", 1024, 256): ((4, 256), "3811979146b28b01d746e59d2a3e4238f7aa1d0dda05688bfbcee4c788d26c37"),
    ("methods", None, None): ((4, 512), "cfce26fb0c7350f2577193fa1ff53d48c20801ec0c49b5011b6658671d02f768"),
    ("methods", 4096, None): ((8, 512), "f26d13b5a6bce2373c76b92ba522d6abf31d1b1b25030b258847fe32f19e3955"),
    ("methods", 512, 128): ((4, 128), "323a1f0771af34fe50bb72b758a6c61673bf2b726bc11928c4e1e5f37f41c234"),
}


def chars(text, add_special_tokens=False, return_tensors="pt"):
    """A stand-in tokenizer: one id per character."""
    return {"input_ids": torch.tensor([[ord(c) for c in text]])}


def _ngrams(text, n=8):
    words = re.findall(r"[a-z]+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@pytest.mark.parametrize("kind", calibration.KINDS)
def test_each_calibration_text_shares_no_run_of_8_words_with_the_evaluation_text(kind):
    from qlearn.evaluate import offline_text

    calib = calibration.calibration_text(kind)
    assert len(calib.split()) > 2000
    assert not _ngrams(calib) & _ngrams(offline_text())


@pytest.mark.slow
def test_the_ids_of_both_kinds_are_the_pinned_ones(embedded_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_path)
    for (kind, n_tokens, window), (shape, sha256) in PINNED.items():
        ids = calibration.calibration_ids(tok, kind, n_tokens=n_tokens, window=window)
        assert ids.dtype == torch.int64 and tuple(ids.shape) == shape, (kind, n_tokens, window)
        assert hashlib.sha256(ids.numpy().tobytes()).hexdigest() == sha256, (kind, n_tokens, window)
    assert tok.decode(calibration.calibration_ids(tok, "sensitivity")[0, :6]).startswith("Heap queues")
    assert torch.equal(sensitivity.Calibration(n_seqs=4, seq_len=256).ids(tok),
                       calibration.calibration_ids(tok, "sensitivity", n_tokens=1024, window=256))
    # only a prefix of the text is tokenized: its ids are those of the whole text
    for kind in calibration.KINDS:
        whole = tok(calibration.calibration_text(kind), add_special_tokens=False)["input_ids"]
        n = 4096 if kind == "methods" else 1024
        assert calibration.calibration_ids(tok, kind, n_tokens=n).view(-1).tolist() == whole[:n]


def test_ids_are_the_texts_first_tokens_in_windows():
    ids = calibration.calibration_ids(chars, "methods", n_tokens=12, window=4)
    text = calibration.calibration_text("methods")
    assert ids.tolist() == [[ord(c) for c in text[i:i + 4]] for i in (0, 4, 8)]
    assert calibration.calibration_ids(chars, "sensitivity").shape == (2, 128)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="wiki"), "kind must be one of 'sensitivity', 'methods'; got 'wiki'"),
    (dict(kind="methods", n_tokens=1000), "n_tokens must be a positive multiple of window=512; got 1000"),
    (dict(kind="methods", n_tokens=True, window=1), "n_tokens must be an int >= 1; got True"),
    (dict(kind="methods", window=0), "window must be an int >= 1; got 0"),
    (dict(kind="sensitivity", n_tokens=21_856, window=1), "gives 21855 tokens, fewer than n_tokens=21856"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        calibration.calibration_ids(chars, **kwargs)


# ---- the calibration pass on a tiny Llama ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))
    return LlamaForCausalLM(config).eval(), ids


class _AsIs:
    """A record that stores the weight unchanged (float32)."""

    def __init__(self, w):
        self.w = w.float().clone()
        self.codes, self.nbytes, self.bits_per_param = self.w, 4 * self.w.numel(), 32.0

    def dequantize(self, dtype=None):
        return self.w if dtype is None else self.w.to(dtype)


def test_sequential_collects_what_each_linear_receives(tiny):
    model, ids = tiny
    name = "model.layers.0.self_attn.q_proj"
    x = first_call(dict(model.named_modules())[name], lambda: model(input_ids=ids))[0][0].detach()
    x = x.reshape(-1, x.shape[-1]).float()                                  # (tokens, in)
    seen = {}

    def keep(layer, w, stats):
        seen[layer] = stats
        return _AsIs(w)

    with apply.sequential(model, ids, keep, max_rows=16):
        pass
    st = seen[name]
    assert len(seen) == 14 and st.n == 48
    assert torch.equal(st.hessian, hessian(x)) and torch.equal(st.mean_abs, x.abs().sum(0) / 48)
    assert torch.equal(st.sample, x[::3][:16])


def test_gptq_and_apply_leave_the_callers_thread_count(tiny, monkeypatch):
    model, ids = tiny
    with threads(2):
        gptq(torch.randn(4, 32), torch.eye(32), blocksize=32)
        assert torch.get_num_threads() == 2
        apply.apply_method(model, "nf4").restore()
        assert torch.get_num_threads() == 2

        def fails(*args, **kwargs):
            assert torch.get_num_threads() == 1          # the method runs on one thread ...
            raise RuntimeError("stop")

        monkeypatch.setattr(apply, "fake_quantize", fails)
        with pytest.raises(RuntimeError, match="stop"):
            apply.apply_method(model, "nf4")
        assert torch.get_num_threads() == 2               # ... and gives the caller's count back on an error
