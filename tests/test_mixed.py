"""Sensitivity (calibration text, partial reruns) and the mixed-precision solver and baselines."""

import itertools
import math

import pytest
import torch

from qlearn import mixed, sensitivity
from qlearn.fakequant import fake_quantize, quantizable_layers
from qlearn.mixed import LADDER, PLAN_FORMATS, Tables, format_bits, llama_rule, make_plan, shuffled, solve, uniform

# ---- calibration text vs evaluation text ------------------------------------------------------------

def test_calibration_ids_come_from_the_calibration_text(embedded_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_path)
    ids = sensitivity.Calibration(n_seqs=2, seq_len=128).ids(tok)
    assert ids.shape == (2, 128) and ids.dtype == torch.int64
    assert tok.decode(ids[0, :6]).startswith("Heap queues")
    with pytest.raises(ValueError, match="tokens"):
        sensitivity.Calibration(n_seqs=1000, seq_len=1000).ids(tok)


@pytest.mark.parametrize("field", ["n_seqs", "seq_len", "every"])
def test_bad_calibration_settings(field):
    with pytest.raises(ValueError, match=field):
        sensitivity.Calibration(**{field: 0})


# ---- partial reruns on a tiny Llama -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # initializer_range 0.1 (default 0.02): with std-0.02 weights the logits are so close to uniform that
    # quantizing one layer moves the KL by ~1e-9, inside float32 rounding (it measured -3.8e-9 on an AVX-512
    # CPU); at 0.1 the smallest KL below is ~7e-5
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         initializer_range=0.1)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))
    return model, ids


def _full_kl(model, ref):
    with torch.inference_mode():
        logq = torch.log_softmax(model(ref.ids).logits[:, ref.positions].float(), -1)
    return float((ref.logp.exp() * (ref.logp - logq)).sum(-1).mean())


def test_rerunning_from_the_layers_block_equals_the_full_forward(tiny):
    model, ids = tiny
    ref = sensitivity.Reference(model, ids, every=3)
    assert ref.positions.tolist() == [2, 5, 8, 11, 14, 17, 20, 23] and len(ref.block_inputs) == 3
    assert ref.kl_from(0) == 0.0 and ref.kl_from(2) == 0.0
    names = quantizable_layers(model)
    assert len(names) == 21 and "lm_head" not in names
    kl = sensitivity.layer_kl(ref, "nf4/32", [names[8], names[20]])       # block 1 k_proj, block 2 down_proj
    for name in (names[8], names[20]):
        with fake_quantize(model, {name: "nf4/32"}):
            assert kl[name] == pytest.approx(_full_kl(model, ref), rel=1e-4, abs=1e-9)
        assert kl[name] > 0
    blocks = sensitivity.block_kl(ref, "nf4/32")
    assert sorted(blocks) == [0, 1, 2] and all(v > 0 for v in blocks.values())


def test_weighted_error_is_the_energy_weighted_squared_error(tiny):
    model, ids = tiny
    ref = sensitivity.Reference(model, ids, every=1)
    name = quantizable_layers(model)[0]
    err = sensitivity.weighted_error(ref, ["nf4/64", "int8", "bf16"], [name])
    w = dict(model.named_modules())[name].weight.detach()
    with torch.no_grad():
        normed = model.model.layers[0].input_layernorm(ref.block_inputs[0]).reshape(-1, 64)   # q_proj's input
    energy = (normed.float() ** 2).mean(0)
    from qlearn.fakequant import quantizer
    for fmt in ("nf4/64", "bf16"):             # this float32 model's "bf16" error: its weights rounded to bf16
        d = quantizer(fmt)(w).dequantize(torch.float32) - w
        assert err[fmt][name] == pytest.approx(float(((d ** 2) * energy).sum()), rel=1e-5)
    assert 0 < err["bf16"][name] < err["int8"][name] < err["nf4/64"][name]


# ---- the solver ------------------------------------------------------------------------------------------

def _random_tables(seed, layers=6, formats=3):
    g = torch.Generator().manual_seed(seed)
    per_weight = torch.tensor([4.0, 5.0, 8.0, 16.0][:formats], dtype=torch.float64)
    numel = torch.tensor([100.0, 300.0] * (layers // 2), dtype=torch.float64)
    cost = torch.rand(layers, formats, generator=g, dtype=torch.float64).sort(dim=1, descending=True).values
    names = tuple(f"model.layers.{i // 2}.{'self_attn.v_proj' if i % 2 else 'mlp.up_proj'}" for i in range(layers))
    return Tables(names, ("a", "b", "c", "d")[:formats], cost, per_weight * numel[:, None], numel)


def _brute_force(t, total_bits):
    best = None
    for combo in itertools.product(range(len(t.formats)), repeat=len(t.layers)):
        index = torch.tensor(combo)
        if float(t.bits[torch.arange(len(combo)), index].sum()) <= total_bits + 1e-9:
            cost = float(t.cost[torch.arange(len(combo)), index].sum())
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("budget", [4.6, 5.5, 7.0])
def test_solver_fits_and_its_lagrangian_plan_is_optimal_at_its_own_bits(seed, budget):
    t = _random_tables(seed)
    plan = solve(t, budget)
    assert plan.bits_per_weight <= budget + 1e-12
    optimum = _brute_force(t, budget * float(t.numel.sum()))
    assert optimum <= plan.cost + 1e-12
    assert plan.cost <= optimum * 1.25 + 1e-12      # greedy fill: near the optimum on these instances
    for lam in (1e-4, 1e-3):              # theorem: a Lagrangian plan is optimal at its own bits
        p = make_plan(t, mixed._pick(t, lam), "lam")
        assert p.cost == pytest.approx(_brute_force(t, p.bits_per_weight * float(t.numel.sum())), abs=1e-12)


def test_budget_edges():
    t = _random_tables(0)
    assert solve(t, 4.0).formats == ("a",) * 6                     # only the cheapest fits
    assert solve(t, 8.0).cost == pytest.approx(float(t.cost[:, 2].sum()))   # all at the top format
    with pytest.raises(ValueError, match="below the cheapest plan"):
        solve(t, 3.9)
    with pytest.raises(TypeError, match="bits per weight"):
        solve(t, "4")


def test_shuffled_keeps_bits_and_counts_and_moves_layers():
    t = _random_tables(1, layers=8)
    plan = solve(t, 5.0)
    rnd = shuffled(t, plan, seed=0)
    assert rnd.bits_per_weight == plan.bits_per_weight and rnd.counts() == plan.counts()
    assert rnd.formats != plan.formats and rnd.cost >= plan.cost
    assert shuffled(t, plan, seed=0) == rnd


def test_llama_rule_puts_v_and_down_one_step_up():
    t = _random_tables(2, layers=8, formats=4)
    rule = llama_rule(t, 5.0, ladder=("a", "b", "c", "d"))
    assert rule.bits_per_weight <= 5.0
    special = [i for i, n in enumerate(t.layers) if n.endswith("v_proj")]
    assert all(rule.formats[i] in ("b", "c") for i in special)
    assert all(rule.formats[i] == "a" for i in range(8) if i not in special)


def test_format_bits_come_from_memory():
    import qlearn as ql

    assert format_bits("nf4+dq/64", 576) == ql.memory.bits_per_param("nf4+dq", 64) == 4.126953125
    assert format_bits("fp4/256", 1536) == 4.125 and format_bits("bf16", 576) == 16.0
    assert format_bits("int8", 1536) == 8 + 32 / 1536
    assert len(PLAN_FORMATS) == 18 and set(LADDER) <= set(PLAN_FORMATS)
    with pytest.raises(ValueError, match="not a bitsandbytes mode"):
        format_bits("int4-zp/32", 576)


def test_uniform_and_measured_record_bits_agree():
    import qlearn as ql

    w = torch.randn(192, 576, generator=torch.Generator().manual_seed(0)).bfloat16()
    record = ql.quantize_4bit(w, "nf4", 64, double_quant=True)
    blocks = w.numel() // 64                            # 1728 absmax, 6.75 nested blocks of 256 -> 7 scales
    left_out = 32 + 32 * (math.ceil(blocks / 256) - blocks / 256)   # the offset and the partial nested block
    assert record.nbytes * 8 == pytest.approx(format_bits("nf4+dq/64", 576) * w.numel() + left_out, abs=1e-6)
    t = _random_tables(0)
    with pytest.raises(ValueError, match="not in the tables"):
        uniform(t, "nf4")
    assert uniform(t, "b").bits_per_weight == 5.0


def test_docstring_examples():
    import doctest

    result = doctest.testmod(mixed)
    assert result.failed == 0 and result.attempted >= 3


# ---- the explorer ------------------------------------------------------------------------------------------

class _FakeSensitivity:
    """The embedded model's 210 layer shapes, seeded KL and errors shaped like the real ones
    (bigger blocks and fewer bits: more KL), without a model run."""

    def __init__(self, seed=0):
        shapes = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576),
                  "gate_proj": (1536, 576), "up_proj": (1536, 576), "down_proj": (576, 1536)}
        g = torch.Generator().manual_seed(seed)
        self.formats = PLAN_FORMATS
        self.layers = tuple(f"model.layers.{b}.{'mlp' if 'p_proj' in k or 'down' in k else 'self_attn'}.{k}"
                            for b in range(30) for k in shapes)
        self.numel = {n: shapes[n.split(".")[-1]][0] * shapes[n.split(".")[-1]][1] for n in self.layers}
        self.in_features = {n: shapes[n.split(".")[-1]][1] for n in self.layers}
        scale = torch.rand(len(self.layers), generator=g) * 0.01
        self.kl, self.error = {}, {}
        for i, n in enumerate(self.layers):
            row = {f: float(scale[i]) * 2.0 ** (-4 * (format_bits(f, self.in_features[n]) - 4)) for f in self.formats}
            row["bf16"] = 0.0
            self.kl[n], self.error[n] = row, {f: 100 * v for f, v in row.items()}


def test_explorer_slider_resolves_the_plan_and_redraws(tmp_path):
    from qlearn.widgets.mixed import mixed_precision_explorer

    sens = _FakeSensitivity()
    w = mixed_precision_explorer(sens, budget=4.127, curve_points=3)
    t = mixed.tables(sens)
    assert w.plan == solve(t, 4.127) and w.plan.bits_per_weight <= 4.127
    first = w.png()
    w.controls["budget"].value = 4.333                               # what dragging the slider does
    assert w.error is None and w.plan == solve(t, 4.333)
    assert w.predicted_mb == pytest.approx(w.plan.bits_per_weight * sum(sens.numel.values()) / 8e6)
    x, y = w.view.dots.get_data()
    assert list(x) == [t.formats.index(f) for f in w.plan.formats] and list(y) == list(range(210))
    assert w.png() != first and "4.33" in w.figure._suptitle.get_text()
    w.update(colour="weighted error")
    assert w.view.image.get_label() == "weighted error" and w.error is None
    w.update(budget=1.0)                                             # clamped to the cheapest plan
    assert w.plan.bits_per_weight >= w.least and "outside" in w.message.value
    (tmp_path / "mixed_explorer.png").write_bytes(w.png())
