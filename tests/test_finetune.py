"""qlearn.finetune (lesson 12): the task, batches, LoRA on a 4-bit base, the memory split, the three ways to ship.

Most tests run on a tiny Llama (2 layers, hidden 64, the embedded model's tokenizer and vocabulary) saved to a
temporary folder and loaded through ``ql.load`` in nf4+dq, so bitsandbytes quantizes it on load as it does the
real model: seconds, not minutes. The tests marked slow train the embedded model itself.
"""

from __future__ import annotations

import re

import pytest
import torch

import qlearn as ql
from qlearn import bnb_interop
from qlearn import finetune as ft

FIELDS = re.compile(r"name=(\w+) \| item=(\w+) \| qty=(\d+) \| city=(\w+) \| day=(\w+)")


# ---- the task ---------------------------------------------------------------------------------------------

def test_the_task_is_seeded_and_every_answer_holds_the_prompts_facts():
    train, held = ft.task(64, 32)
    assert (train, held) == ft.task(64, 32) and train != ft.task(64, 32, seed=1)[0]
    for ex in train + held:
        name, item, qty, city, day = FIELDS.fullmatch(ex.answer).groups()
        assert all(word in ex.prompt for word in (name, item, qty, city, day)), ex
    unseen = ft.TEMPLATES[-1].split("{")[0]        # "Last ": the phrasing training never sees
    assert not any(ex.prompt.startswith(ft.ASK + unseen) for ex in train)
    assert any(ex.prompt.startswith(ft.ASK + unseen) for ex in held)
    assert not {ex.prompt for ex in train} & {ex.prompt for ex in held}


@pytest.fixture(scope="module")
def tok(embedded_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_path)


def test_a_batch_scores_exactly_the_answer_and_its_end_of_turn(tok):
    examples = ft.task(3, 1)[0]
    batch = ft.encode(tok, examples)
    for i, ex in enumerate(examples):
        answer = tok(ex.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        scored = batch.labels[i][batch.labels[i] != -100].tolist()
        assert scored == answer and batch.input_ids[i, -len(answer):].tolist() == answer   # left padded: at the end
        first = int(batch.attention_mask[i].argmax())          # the first real token
        assert batch.position_ids[i, first] == 0 and batch.position_ids[i, -1] == batch.attention_mask[i].sum() - 1
        assert batch.attention_mask[i, :first].sum() == 0
    assert batch.keep == 1 + max(int((lab != -100).sum()) for lab in batch.labels)


# ---- a tiny Llama in nf4+dq -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_folder(tok, tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _tiny(folder, targets="all-linear", rank=4):
    model, tok = ft.load_for_training("nf4+dq", model_id=str(folder), device_map="cpu")
    return (*ft.attach_lora(model, rank=rank, targets=targets), tok)


def test_adapters_hold_r_times_in_plus_out_per_target(tiny_folder):
    pm, cost, _ = _tiny(tiny_folder, targets="q,v", rank=4)
    shapes = ft.adapter_shapes(pm)
    assert sorted({name.rsplit(".", 1)[1] for name in shapes}) == ["q_proj", "v_proj"]
    assert shapes["model.layers.0.self_attn.v_proj"] == (4, 64, 32)     # 1 key-value head of 32
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    assert trainable == sum(r * (i + o) for r, i, o in shapes.values()) == 2 * (4 * 128 + 4 * 96)
    # prepare_model_for_kbit_training upcast every 16-bit parameter: the embedding (tied) and the 5 norms
    assert {dtype for _, dtype in cost.cast} == {torch.bfloat16} and len(cost.cast) == 6
    assert cost.added_bytes == 2 * (len(pm.base_model.model.model.embed_tokens.weight.view(-1)) + 5 * 64)


def test_training_lowers_the_held_out_loss(tiny_folder, tok):
    pm, _, _ = _tiny(tiny_folder)
    train, held = ft.task(64, 8)
    run = ft.train(pm, tok, train, held, steps=6, batch_size=4, lr=1e-2, eval_every=3, progress=False)
    assert run.eval_steps == (0, 3, 6) and run.steps == 6 and len(run.answers) == 3
    # a random tiny model learns little in 6 steps, but every checkpoint must be lower than the one before
    assert run.heldout[2] < run.heldout[1] < run.heldout[0] and run.heldout[-1] < 0.98 * run.heldout[0], run.heldout
    assert run.trainable == sum(r * (i + o) for r, i, o in ft.adapter_shapes(pm).values())


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16-training", "float32-training"])
@pytest.mark.parametrize("mode", ["nf4+dq", "fp4"])
def test_lora_on_the_rounded_values_computes_what_qlora_computes(tiny_folder, tok, mode, bf16, monkeypatch):
    """The control of lesson 12: plain layers holding the 4-bit values give QLoRA's outputs exactly (no gradient:
    bitsandbytes' gemm_4bit dequantizes to the compute dtype, then F.linear, and casts back), and with the other
    parameters float32 as after prepare_model_for_kbit_training, the same held-out loss. Both training dtypes run
    on any CPU (train_dtype follows has_avx512bf16; layers in training mode never take the fused CPU path)."""
    monkeypatch.setattr(bnb_interop, "has_avx512bf16", lambda: bf16)
    assert ft.train_dtype("cpu") == (torch.bfloat16 if bf16 else torch.float32)
    q, _ = ft.load_for_training(mode, model_id=str(tiny_folder), device_map="cpu")
    r, _ = ft.load_rounded(mode, model_id=str(tiny_folder), device_map="cpu")
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    qm, rm = dict(q.named_modules()), dict(r.named_modules())
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.o_proj"):
        assert type(rm[name]) is ft.CastingLinear and type(qm[name]) is not torch.nn.Linear
        assert rm[name].weight.dtype == qm[name].compute_dtype == ft.train_dtype("cpu")
        with torch.no_grad():      # a float32 input, as the residual stream is after the preparation
            assert torch.equal(qm[name](x), rm[name](x)) and rm[name](x).dtype == torch.float32
    held = ft.task(8, 4)[1]
    pq, prep = ft.attach_lora(q, rank=4)
    pr = ft.attach_lora(r, rank=4)[0]
    # QLoRA's float parameters besides the adapters (embedding, norms: float32 after the preparation) have the
    # same dtypes in the control
    q_dtypes = {n: p.dtype for n, p in pq.named_parameters() if p.dtype.is_floating_point and "lora_" not in n}
    assert len(q_dtypes) == len(prep.cast) > 0 and set(q_dtypes.values()) == {torch.float32}
    assert {n: p.dtype for n, p in pr.named_parameters() if n in q_dtypes} == q_dtypes
    assert ft.heldout_loss(pq, tok, held) == ft.heldout_loss(pr, tok, held)
    with pytest.raises(ValueError, match="mode must be one of"):
        ft.load_rounded("int8", model_id=str(tiny_folder), device_map="cpu")


def _random_adapter(pm, scale=0.02):
    """Give every LoRA B a random value (B starts at zero, which would make every merge trivial)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in pm.modules():
            if hasattr(m, "lora_B") and "default" in m.lora_B:
                w = m.lora_B["default"].weight
                w.copy_(torch.randn(w.shape, generator=g) * scale)


def test_the_three_routes_merge_exactly_as_defined(tiny_folder, tok):
    pm, _, _ = _tiny(tiny_folder)
    _random_adapter(pm)
    name = "model.layers.1.mlp.down_proj"
    layer = dict(pm.named_modules())[f"base_model.model.{name}"]
    base = layer.get_base_layer()
    ours = bnb_interop.record_from_layer(base).dequantize().float()   # qlearn's decode of the bytes, in bf16
    scale = layer.scaling["default"]
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).detach() * scale
    merged = ours + delta                                                        # (out, in) float32
    held = ft.task(4, 4)[1]
    adapters = ft.adapter_shapes(pm)
    routes, model_b = ft.ship(pm, tok, held, prompts=[held[0].prompt], max_new_tokens=4)
    assert [r.route for r in routes] == list(ft.ROUTES)
    # (b): qlearn's own decode of the base's bytes plus B @ A * alpha / r, rounded once to bf16
    assert torch.equal(model_b.get_submodule(name).weight, merged.to(torch.bfloat16))
    assert routes[1].stored_bytes == 2 * sum(p.numel() for p in model_b.parameters())
    # (a) is (c) plus the float32 adapter: the same 4-bit codes and state bytes either way
    assert routes[0].stored_bytes - routes[2].stored_bytes == 4 * sum(
        r * (i + o) for r, i, o in adapters.values())
    assert all(r.loss > 0 and len(r.answers) == 1 for r in routes)


def test_route_c_holds_the_bytes_of_quantize_4bit_of_the_merged_weight(tiny_folder, tok):
    pm, _, _ = _tiny(tiny_folder)
    _random_adapter(pm)
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    merged = {n: ft.merged_weight(dict(pm.named_modules())[f"base_model.model.{n}"]) for n in names}
    model_c = pm.merge_and_unload()                  # what ft.ship measures as route (c)
    for n in names:
        got = bnb_interop.record_from_layer(model_c.get_submodule(n))
        want = ql.quantize_4bit(merged[n], "nf4", 64, double_quant=True, dq_rule="bnb_cpu")
        assert torch.equal(got.packed, want.packed) and torch.equal(got.absmax, want.absmax)
        assert torch.equal(got.nested_absmax, want.nested_absmax) and torch.equal(got.offset, want.offset)


def test_half_step_is_the_distance_at_which_the_quantizer_moves_a_code(tiny_folder):
    """Move every weight (but each block's largest, which sets its absmax) 0.9x and 1.1x its half step in its
    update's direction: re-quantized, no code moves at 0.9x and every such code moves at 1.1x."""
    pm, _, _ = _tiny(tiny_folder)
    _random_adapter(pm, scale=0.05)
    layer = dict(pm.named_modules())["base_model.model.model.layers.1.mlp.down_proj"]
    r = ft.rounding(layer, "down_proj")
    w = ft.merged_weight(layer) - r.delta                                   # (out, in) on the NF4 grid
    fmt = dict(quant_type="nf4", blocksize=64, double_quant=True, dq_rule="bnb_cpu")
    blocks = w.reshape(-1, 64).abs()
    top = (blocks == blocks.amax(1, keepdim=True)).reshape(w.shape)       # the weights that set each absmax
    movable = torch.isfinite(r.half_step) & ~top
    sign = torch.where(r.delta >= 0, 1.0, -1.0)
    codes = ql.quantize_4bit(w, **fmt).codes
    near = ql.quantize_4bit(w + torch.where(movable, 0.9 * sign * r.half_step, 0.0), **fmt).codes
    past = ql.quantize_4bit(w + torch.where(movable, 1.1 * sign * r.half_step, 0.0), **fmt).codes
    assert torch.equal(near, codes)
    assert torch.equal(past != codes, movable) and movable.float().mean() > 0.9
    assert 0 < r.codes_changed < 1


def test_memory_parts_are_the_tensors_and_add_up_to_the_measured_peak(tiny_folder, tok):
    pm, _, _ = _tiny(tiny_folder)
    adapters = [p for p in pm.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in adapters]
    examples = ft.task(4, 1)[0]
    split = ft.memory_split(pm, tok, examples)
    n = sum(p.numel() for p in adapters)
    assert split.adapters == split.gradients == 4 * n              # float32 adapters, float32 gradients
    assert split.optimizer == 2 * 4 * n + 4 * len(adapters)        # AdamW: two moments and a float32 step each
    assert all(torch.equal(p, b) and p.grad is None for p, b in zip(adapters, before, strict=True))   # put back
    # what activations and gradients leave of the step's peak is the backward's short-lived tensors; in this tiny
    # model they are the vocabulary-sized ones: the gradients of the float32 logits and of their log-softmax
    batch = ft.encode(tok, examples)
    logits = 4 * batch.input_ids.shape[0] * (batch.keep - 1) * len(tok)
    assert 0 <= split.other <= 2.1 * logits, split.as_dict()
    assert split.total == split.weights + split.adapters + split.optimizer + split.peak


def test_live_tensors_counts_new_storage_once_and_frees_it():
    from qlearn.finetune.memsplit import LiveTensors

    x = torch.ones(1000)
    with LiveTensors() as live:
        view = x.view(10, 100)          # a view: no new storage
        x.add_(1)                       # in place: none either
        y = x * 2                       # 4,000 B
        z = torch.cat([y, y])           # 8,000 B
        del y
        w = z[:10].clone()              # 40 B
    assert live.peak == 12_000 and live.done().now == 8_040 and view.shape == (10, 100) and w.numel() == 10


def test_the_explorer_runner_trains_a_setting_beside_the_model_s_own_adapter(tiny_folder, tok):
    made = []

    def factory():
        made.append(_tiny(tiny_folder)[0])
        return made[-1]

    run = ft.adapter_runner(factory, tok, ft.task(8, 1)[0], steps=1, eval_every=1, batch_size=2, progress=False)
    first, second = run(2, "q,v"), run(1, "mlp")
    assert len(made) == 1                                                # loaded at the first run only
    assert first.trainable == 2 * 2 * ((64 + 64) + (64 + 32))            # r=2 on q (64->64) and v (64->32), 2 blocks
    assert second.trainable == 2 * ((64 + 128) * 2 + (128 + 64))         # r=1 on gate, up and down
    pm = made[0]
    assert set(pm.peft_config) == {"default"} and pm.active_adapter == "default"   # the explored ones are gone
    assert sum(p.numel() for p in pm.parameters() if p.requires_grad) == sum(
        r * (i + o) for r, i, o in ft.adapter_shapes(pm).values())


# ---- the explorer and the figures ---------------------------------------------------------------------------

def _run(heldout, answers, steps=4):
    return ft.Run(tuple([1.0] * steps), tuple(range(0, steps + 1, 2)), tuple(heldout), tuple(answers), 2.0, 100, 96)


def test_the_explorer_trains_a_new_setting_once_and_shows_the_answers_of_the_step():
    calls = []

    def runner(rank, targets):
        calls.append((rank, targets))
        return _run([3.0, 1.0, 0.5], [("a0",), ("b1",), ("right",)])

    first = _run([3.0, 2.0, 1.0], [("x",), ("y",), ("z",)])
    w = ql.widgets.finetune_explorer(runner, runs={(8, "all-linear"): first}, prompts=["q?"], expected=["right"])
    assert w.error is None and calls == [] and w.shown_step == 4 and w.answers == ("z",)
    w.update(rank=4)
    w.update(step=3)                                  # between checkpoints: the one at or before it
    assert calls == [(4, "all-linear")] and w.shown_step == 2 and w.answers == ("b1",)
    w.update(step=4)
    assert "#1a7f37" in w.table.value and calls == [(4, "all-linear")]   # exactly right: green; not trained again
    w.update(rank=8)
    assert w.run is first and len(w.png()) > 1000


def test_the_figures_render(tiny_folder):
    from qlearn.plots import finetune as pf
    from qlearn.plots import to_png

    bars = pf.memory_bars({"QLoRA": {"weights": 1e8, "adapters": 1e7, "activations": 4e8, "other": -1e6}})
    assert len(to_png(bars[0][0].figure)) > 1000 and bars[-1][0].get_width() == 0   # a negative part: drawn as 0
    pm, _, _ = _tiny(tiny_folder)
    _random_adapter(pm)
    r = ft.rounding(dict(pm.named_modules())["base_model.model.model.layers.0.mlp.up_proj"], "up_proj")
    assert len(to_png(pf.rounding_figure(r.step_ratio, r.delta, r.applied, "up_proj"))) > 1000


def test_bad_arguments_name_themselves(tiny_folder):
    with pytest.raises(ValueError, match="n must be an int >= 1; got 0"):
        ft.order_examples(0)
    model, tok = ft.load_for_training("nf4+dq", model_id=str(tiny_folder), device_map="cpu")
    with pytest.raises(ValueError, match="rank must be an int >= 1; got 0"):
        ft.attach_lora(model, rank=0)
    with pytest.raises(ValueError, match="targets must be one of 'all-linear'"):
        ft.attach_lora(model, targets="everything")
    with pytest.raises(ValueError, match="no LoRA adapters"):
        ft.train(model, tok, ft.task(4, 1)[0], steps=1)


# ---- the embedded model ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_qlora_on_the_embedded_model_learns_the_format(embedded_path):
    model, tok = ft.load_for_training("nf4+dq", device_map="cpu")
    pm, cost = ft.attach_lora(model, rank=8)
    assert sum(p.numel() for p in pm.parameters() if p.requires_grad) == 2_442_240
    assert cost.added_bytes == 2 * (49152 * 576 + 61 * 576)        # the tied embedding and 61 norms, to float32
    train, held = ft.task(64, 4)
    split, checkpointed = (ft.memory_split(pm, tok, train[:4], gradient_checkpointing=gc) for gc in (False, True))
    assert 0 <= split.other <= 0.1 * split.peak, split.as_dict()     # 12 MB of 460 MB measured
    assert checkpointed.activations < 0.2 * split.activations
    run = ft.train(pm, tok, train, held, steps=3, batch_size=4, lr=2e-3, progress=False)
    assert run.heldout[-1] < 0.5 * run.heldout[0], run.heldout
    assert bnb_interop.four_bit_layouts(pm) and set(bnb_interop.four_bit_layouts(pm).values()) == {"flat"}
