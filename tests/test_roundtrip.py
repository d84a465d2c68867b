"""qlearn.roundtrip: what a saved file holds, read from its header; a byte-level comparison that catches one
flipped byte; and real round trips: a tiny random Llama in bf16 and in bitsandbytes NF4 on the CPU (no
download), and the embedded model (slow)."""

from __future__ import annotations

import math

import pytest
import safetensors.torch
import torch

from qlearn import roundtrip as rtm


@pytest.mark.parametrize("name, dtype, expected", [
    ("model.layers.0.mlp.down_proj.weight", "U8", "codes"),
    ("model.layers.0.mlp.down_proj.weight", torch.int8, "codes"),
    ("model.layers.0.mlp.down_proj.weight.absmax", "F32", "scales"),
    ("model.layers.0.mlp.down_proj.weight.absmax", "U8", "scales"),          # double quant: uint8 absmax
    ("model.layers.0.mlp.down_proj.weight.nested_absmax", "F32", "scales"),
    ("model.layers.0.mlp.down_proj.SCB", "F32", "scales"),
    ("model.layers.0.mlp.down_proj.weight.quant_map", "F32", "code books"),
    ("model.layers.0.mlp.down_proj.weight.nested_quant_map", "F32", "code books"),
    ("model.layers.0.mlp.down_proj.weight.quant_state.bitsandbytes__nf4", "U8", "records"),
    ("model.layers.0.mlp.down_proj.weight_format", "U8", "records"),
    ("model.embed_tokens.weight", "BF16", "unquantized"),
    ("model.norm.weight", torch.float32, "unquantized"),
])
def test_kind(name, dtype, expected):
    assert rtm.kind(name, dtype) == expected


def test_file_tensors_reads_names_dtypes_shapes_and_bytes_from_the_header(tmp_path):
    tensors = {"a": torch.zeros(3, 5, dtype=torch.bfloat16), "b": torch.arange(7, dtype=torch.uint8),
               "c": torch.ones(2, 2, 2)}
    safetensors.torch.save_file(tensors, str(tmp_path / "model.safetensors"))
    got = rtm.file_tensors(tmp_path)
    assert got == {"a": ("BF16", (3, 5), 30), "b": ("U8", (7,), 7), "c": ("F32", (2, 2, 2), 32)}
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        rtm.file_tensors(tmp_path / "nowhere")


def test_compare_state_dicts_catches_one_byte():
    a = {"w": torch.randn(64), "z": torch.zeros(3), "i": torch.arange(4, dtype=torch.uint8)}
    b = {k: v.clone() for k, v in a.items()}
    assert rtm.compare_state_dicts(a, b)["different"] == []
    b["w"].view(torch.uint8)[17] ^= 1                       # one bit of one float
    b["z"][1] = -0.0                                        # equal as numbers, not as bytes
    b["i"] = b["i"].to(torch.int16)                         # the same values in another dtype
    out = rtm.compare_state_dicts(a, b)
    assert out == {"equal": [], "different": ["i", "w", "z"], "missing": [], "extra": []}
    assert rtm.compare_state_dicts(a, {"w": a["w"], "x": a["z"]}) == {"equal": ["w"], "different": [],
                                                                     "missing": ["i", "z"], "extra": ["x"]}


def _tiny(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "fp32")
    # loaded, not cast: `.to(bfloat16)` would also round the rotary inv_freq buffer, which is not saved
    return LlamaForCausalLM.from_pretrained(tmp_path / "fp32", dtype=torch.bfloat16).eval()


def test_roundtrip_of_a_bf16_model_is_byte_exact(tmp_path):
    model = _tiny(tmp_path)
    ids = torch.tensor([[1, 5, 9, 2]])
    rt, loaded = rtm.roundtrip(model, tmp_path / "saved", check_ids=ids, keep=True)
    assert rt.identical and rt.same_logits is True and rt.tensors == len(model.state_dict())
    state_bytes = sum(t.nbytes for t in model.state_dict().values())
    assert rt.file_bytes == {"codes": 0, "scales": 0, "code books": 0, "records": 0, "unquantized": state_bytes}
    assert rt.folder_bytes > state_bytes and rt.reported_bytes == model.get_memory_footprint()
    assert loaded is not None and torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert (tmp_path / "saved" / "model.safetensors").is_file()          # a given folder is kept


def test_roundtrip_compares_what_was_loaded_before_any_forward(tmp_path, monkeypatch):
    """On an AVX512-BF16 CPU a 4-bit layer's first forward repacks it and its state dict changes (lesson 13, Q11);
    here every forward changes a norm weight instead, on any CPU. The comparison is made on the loaded state, before
    the logits check runs its forwards: identical, and both models' logits (each changed once) still equal."""
    from transformers import LlamaForCausalLM

    model = _tiny(tmp_path)
    forward = LlamaForCausalLM.forward

    def changing(self, *args, **kwargs):
        self.model.norm.weight.data += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", changing)
    rt, _ = rtm.roundtrip(model, check_ids=torch.tensor([[1, 5, 9, 2]]))
    assert rt.identical and rt.same_logits is True
    after = rtm.compare_state_dicts(rtm._state(_tiny(tmp_path)), rtm._state(model))
    assert after["different"] == ["model.norm.weight"]      # the forward did change the model


def test_roundtrip_reports_a_changed_tensor(tmp_path, monkeypatch):
    """If loading gave back different bytes, the comparison says which tensor."""
    model = _tiny(tmp_path)
    real = rtm._state
    calls = []

    def altered(m):
        state = real(m)
        calls.append(1)
        if len(calls) == 2:                                   # the loaded model's state
            state["model.norm.weight"][0] += 1
        return state

    monkeypatch.setattr(rtm, "_state", altered)
    rt, loaded = rtm.roundtrip(model)
    assert not rt.identical and rt.compared["different"] == ["model.norm.weight"] and loaded is None


def test_roundtrip_rejects_a_plain_module():
    with pytest.raises(TypeError, match="transformers model"):
        rtm.roundtrip(torch.nn.Linear(2, 2))


@pytest.mark.skipif(not rtm.bnb_interop.available(), reason="bitsandbytes is not installed")
def test_roundtrip_of_a_bitsandbytes_nf4_model_is_byte_exact(tmp_path):
    """A real bitsandbytes NF4 + double-quant model on the CPU: codes, absmax, nested state and the JSON
    records all come back; the file's codes are half a byte a weight."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    _tiny(tmp_path)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
    with rtm.bnb_interop.quiet_logs():
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "fp32", quantization_config=config,
                                                     device_map="cpu", dtype=torch.bfloat16).eval()
    rt, _ = rtm.roundtrip(model, check_ids=torch.tensor([[3, 1, 4, 1, 5]]))
    assert rt.identical and rt.same_logits is True
    linear = sum(m.in_features * m.out_features for n, m in model.named_modules()
                 if n.startswith("model.layers") and hasattr(m, "in_features"))
    assert rt.file_bytes["codes"] == linear // 2
    assert 0 < rt.file_bytes["scales"] < linear / 64 * 4                   # uint8 absmax + nested: < float32
    assert rt.file_bytes["code books"] == 14 * (16 + 256) * 4               # 14 layers: quant_map + nested map
    assert rt.file_bytes["records"] > 0
    assert rt.true_bytes - rt.reported_bytes == rt.file_bytes["scales"] + 14 * 4   # + one float32 offset a layer


@pytest.mark.slow
def test_roundtrip_of_the_embedded_model(embedded_path):
    import qlearn as ql

    model, tok = ql.load("embedded", mode="nf4+dq", device_map="cpu", verbose=False)
    rt, _ = rtm.roundtrip(model, check_ids=tok("The capital of France is", return_tensors="pt").input_ids)
    assert rt.identical and rt.same_logits is True and rt.tensors == 1323
    assert rt.file_bytes["codes"] == 53_084_160 and rt.reported_bytes == 109_777_792
    assert rt.file_bytes["scales"] + 210 * 4 == rt.true_bytes - rt.reported_bytes == 1_685_880
    assert math.isclose(sum(rt.file_bytes.values()), rt.folder_bytes, rel_tol=0.01)
