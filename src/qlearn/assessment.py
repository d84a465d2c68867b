"""Lesson 08's assessment: measure the model once (`measure`), build the questions from what was measured and
from qlearn's math at run time (`build_quiz`), score them with explanations (`report`).

No expected answer is typed in: each comes from this run's `Run` (footprints, a layer's weights and inputs, a
real ``Linear8bitLt`` against three simulations, the model's nf4+dq bytes against qlearn's) or from qlearn's
functions called now (``memory.bits_per_param``, ``estimate``, ``int8_vectorwise``, the methods). The lesson
shows only ``quiz.ask(key)``; the answer and its explanation appear when the learner's answer is checked.
Worked number: Q2 is ``bits_per_param("nf4", 128)`` = 4 + 32 / 128 = 4.25.

>>> quiz = build_quiz(demo_run())
>>> len(quiz.questions), quiz.check("Q2", 4.25).status, quiz.check("Q2", 4.5).status
(20, 'right', 'wrong')
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import bnb_interop, int8matmul, memory
from .quiz import Quiz, Result

__all__ = ["PROMPT", "Run", "measure", "demo_run", "Assessment", "build_quiz", "report"]

PROMPT = "The capital of France is Paris. Quantization stores each weight in fewer bits."
WEIGHT_LAYER = "model.layers.0.mlp.down_proj"


@dataclass(frozen=True)
class Run:
    """What lesson 08 measured. footprint: get_memory_footprint() bytes by mode (bf16, int8, nf4, nf4+dq);
    true_bytes: ql.memory.footprint(model).true_bytes (bf16, nf4+dq); x (tokens, in) / w (out, in) float32:
    the input and bf16 weight of `outlier_layer`; w_real float32 (out, in): `WEIGHT_LAYER`'s bf16 weight;
    int8_diff / zero_threshold_diff: max |real Linear8bitLt output - candidate| for candidates a, b, c (see
    Q12, Q13); dq_bytes_equal: qlearn's symmetric blockwise absmax gave the nf4+dq model's bytes; cpu_fused:
    a CPU Linear4bit forward repacks and runs a fused kernel; cpu_path: bitsandbytes' path in words."""

    all_params: int
    linear_params: int
    footprint: dict
    true_bytes: dict
    outlier_layer: str
    x: torch.Tensor
    w: torch.Tensor
    w_real: torch.Tensor
    int8_diff: dict
    zero_threshold_diff: dict
    dq_bytes_equal: bool
    cpu_fused: bool
    cpu_path: str
    prompt: str = PROMPT


def _int8_candidates(layer, x: torch.Tensor, w: torch.Tensor) -> dict:
    """max |layer(x) - candidate| for (a) fp16 outlier weights (the paper), (b) weights dequantized from the
    int8 codes (CB·SCB/127), (c) the raw int8 codes, at the layer's own threshold; float32 throughout (the layer
    runs on its own device, the simulations on the CPU)."""
    with torch.no_grad(), bnb_interop.quiet_logs():
        real = layer(x.float().to(layer.weight.device)).float().cpu()
    t = layer.state.threshold
    p = int8matmul.int8_matmul(x, w, threshold=t, rescale=int8matmul.BNB_RESCALE)
    cols = p.outlier_cols
    raw = p.int8_part + x[:, cols].float() @ p.w_codes[:, cols].float().T
    cands = {"a": int8matmul.int8_matmul(x, w, threshold=t, outlier_weights="fp16",
                                         rescale=int8matmul.BNB_RESCALE).outputs, "b": p.outputs, "c": raw}
    return {k: float((v - real).abs().max()) for k, v in cands.items()}


def _zero_threshold_candidates(layer, x: torch.Tensor, w: torch.Tensor) -> dict:
    """With threshold 0: max |layer(x) - candidate| for (a) every column in 16-bit (x times the int8-dequantized
    weight), (b) plain vector-wise int8, (c) the layer switched off to 16-bit (x @ w.T)."""
    old = layer.state.threshold
    bnb_interop.set_threshold(layer, 0.0)
    try:
        with torch.no_grad(), bnb_interop.quiet_logs():
            real = layer(x.float().to(layer.weight.device)).float().cpu()
    finally:
        bnb_interop.set_threshold(layer, old)
    plain = int8matmul.int8_matmul(x, w, threshold=0.0, rescale=int8matmul.BNB_RESCALE)
    w_deq = plain.w_codes.float() * plain.w_scale / 127
    cands = {"a": x.float() @ w_deq.T, "b": plain.outputs, "c": x.float() @ w.float().T}
    return {k: float((v - real).abs().max()) for k, v in cands.items()}


def measure(model_id: str = "embedded", prompt: str = PROMPT) -> Run:
    """Load `model_id` in bf16, int8, nf4 and nf4+dq, one at a time (`models.measure_mode`), and measure what the
    questions need. About a minute on a CPU for the embedded model (skipped below: it loads the model four times).

    >>> run = measure("embedded")  # doctest: +SKIP
    """
    from . import backend, models, outliers
    from .quantize import quantize_4bit

    def bf16(model, tok):
        linear = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
        names = [f"model.layers.{i}.{k}" for i in range(0, len(model.model.layers), 3)
                 for k in ("self_attn.q_proj", "mlp.down_proj")]
        inputs = outliers.inputs_of(model, tok, names, prompt)             # {name: (tokens, in) float32}
        worst = max(inputs, key=lambda n: inputs[n].abs().max().item())
        weight = lambda n: model.get_submodule(n).weight.detach().float().clone()   # noqa: E731
        return {"all": sum(p.numel() for p in model.parameters()), "linear": sum(m.weight.numel() for m in linear),
                "fp": model.get_memory_footprint(), "true": memory.footprint(model).true_bytes, "layer": worst,
                "x": inputs[worst].cpu(), "w": weight(worst).cpu(), "w_real": weight(WEIGHT_LAYER).cpu()}

    b = models.measure_mode(model_id, "bf16", bf16)
    i8 = models.measure_mode(model_id, "int8", lambda m, t: {
        "fp": m.get_memory_footprint(), "diff": _int8_candidates(m.get_submodule(b["layer"]), b["x"], b["w"]),
        "zero": _zero_threshold_candidates(m.get_submodule(b["layer"]), b["x"], b["w"])})
    n4 = models.measure_mode(model_id, "nf4", lambda m, t: {"fp": m.get_memory_footprint()})

    def dq(model, tok):                                                 # read before any forward (no CPU repack)
        rec = bnb_interop.record_from_layer(model.get_submodule(WEIGHT_LAYER))
        mine = quantize_4bit(b["w_real"].to(rec.packed.device), "nf4", rec.blocksize, double_quant=True,
                             rule=rec.rule, dq_rule=rec.dq_rule)
        same = all(torch.equal(getattr(mine, f), getattr(rec, f)) for f in ("packed", "absmax", "offset",
                                                                             "nested_absmax"))
        return {"fp": model.get_memory_footprint(), "true": memory.footprint(model).true_bytes, "same": same}

    d = models.measure_mode(model_id, "nf4+dq", dq)
    info = backend.backend_info("cpu")
    return Run(b["all"], b["linear"], {"bf16": b["fp"], "int8": i8["fp"], "nf4": n4["fp"], "nf4+dq": d["fp"]},
               {"bf16": b["true"], "nf4+dq": d["true"]}, b["layer"], b["x"], b["w"], b["w_real"], i8["diff"],
               i8["zero"], d["same"], info.linear4bit_repacks, info.linear4bit, prompt)


def demo_run(seed: int = 0) -> Run:
    """A `Run` of synthetic values (no model): for tests and the docstring. Shapes as the embedded model's."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(17, 1536, generator=g)
    x[:, 7] *= 30                                                        # one outlier feature
    w, w_real = torch.randn(576, 1536, generator=g) * 0.02, torch.randn(576, 1536, generator=g) * 0.02
    return Run(134_515_008, 106_168_320, {"bf16": 269_030_016, "int8": 162_861_952, "nf4": 109_777_792,
                                          "nf4+dq": 109_777_792}, {"bf16": 269_030_016, "nf4+dq": 111_463_672},
               "model.layers.3.mlp.down_proj", x, w, w_real, {"a": 0.01, "b": 0.0, "c": 3.0},
               {"a": 0.05, "b": 0.0, "c": 0.04}, True, False, "decodes to 16-bit, then a normal matmul")


class Assessment(Quiz):
    """A `Quiz` whose right answers also show the explanation (a wrong one shows it already)."""

    def check(self, key: str, answer) -> Result:
        result = super().check(key, answer)
        if result.right and self[key].explanation:
            result = Result(key, "right", f"right. {self[key].explanation}")
            self.results[key] = result
        return result


def report(quiz: Quiz) -> str:
    """Markdown: the score, the score by topic, then each answered question's verdict and explanation (the
    unanswered ones only by key, so nothing is revealed)."""
    right, answered, total = quiz.score()
    lines = [f"**Score: {right} / {total}** ({answered} answered)."]
    by_topic = {}
    for q in quiz.questions:
        r = quiz.results.get(q.key)
        got = by_topic.setdefault(q.topic.split(" (")[0].split(",")[0], [0, 0])   # "lesson 06, transfer" -> 06
        got[0] += bool(r and r.right)
        got[1] += 1
    scores = (f"{t} {by_topic[t][0]}/{by_topic[t][1]}" for t in sorted(by_topic))
    lines.append("\nBy lesson: " + "; ".join(scores) + ".\n")
    todo = [q.key for q in quiz.questions if quiz.results.get(q.key) is None
            or quiz.results[q.key].status in ("unanswered", "invalid")]
    for q in quiz.questions:
        r = quiz.results.get(q.key)
        if r is not None and r.status in ("right", "wrong"):
            lines.append(f"- **{q.key}** {'right' if r.right else 'wrong'} ({q.topic}): {q.explanation}")
    if todo:
        lines.append(f"\nNot answered yet: {', '.join(todo)} (answer, rerun their cells, then this one).")
    return "\n".join(lines)


def build_quiz(run: Run) -> Assessment:
    """The 20 questions of lesson 08 (`qlearn.questions`), each expected answer computed now from `run` and
    qlearn's math. Worked number: Q3, nf4+dq at blocksize 128, is 4 + 8/128 + 32/(128·256) = 4.0635 bits."""
    from .questions import questions

    return Assessment(questions(run))
