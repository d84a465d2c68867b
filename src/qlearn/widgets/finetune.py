"""The fine-tuning explorer (lesson 12): rank, target modules and step -> loss curves and the model's answers.

A setting not seen before is trained when chosen (``runner(rank, targets)``, from
`qlearn.finetune.adapter_runner`: a whole run, seconds to minutes on a CPU); every run is kept, so going back to a
setting redraws at once, and the step slider is live (a step moves the marker and the answers, not the curves).
The answers shown are the ones the run recorded at its checkpoint at or before the chosen step.
"""

from __future__ import annotations

import html

import ipywidgets as widgets

from ..finetune.lora import TARGETS
from ..plots.finetune import LossView
from ._base import _WIDE, Explorer, slider_layout

__all__ = ["FinetuneExplorer", "finetune_explorer"]

RANKS = (1, 2, 4, 8, 16, 32)


class FinetuneExplorer(Explorer):
    """Controls: rank, targets, step. ``runs``: {(rank, targets): Run} trained so far (pass the lesson's own run
    to start with it); ``prompts`` / ``expected``: the held-out questions the runs answered and the right answers.
    After each update: ``run`` (the current Run), ``shown_step`` (its checkpoint at or before the step) and
    ``answers`` (what it answered there)."""

    name = "finetune_explorer"

    def __init__(self, runner, runs: dict | None = None, prompts=(), expected=(), rank: int = 8,
                 targets: str = "all-linear", step: int | None = None, max_steps: int | None = None,
                 canvas: str = "png"):
        self.runner, self.runs = runner, dict(runs or {})
        self.prompts, self.expected = tuple(prompts), tuple(expected)
        steps = max_steps or max([r.eval_steps[-1] for r in self.runs.values()], default=20)
        every = min([r.eval_steps[1] - r.eval_steps[0] for r in self.runs.values() if len(r.eval_steps) > 1],
                    default=1)
        controls = {
            "rank": widgets.Dropdown(options=sorted({*RANKS, rank}), value=rank, description="rank r",
                                     style=_WIDE, layout=slider_layout("150px")),
            "targets": widgets.Dropdown(options=list(TARGETS), value=targets, description="LoRA on",
                                        style=_WIDE, layout=slider_layout("200px")),
            "step": widgets.IntSlider(value=steps if step is None else step, min=0, max=steps, step=every,
                                      description="step", continuous_update=True, layout=slider_layout("300px")),
        }
        self.table = widgets.HTML(value="")
        self.run = self.shown_step = self.answers = None
        super().__init__(controls, LossView(), title="LoRA on the 4-bit model: rank, target modules, steps",
                         after=(self.table,), canvas=canvas)
        self.update()

    def _draw(self, v: dict) -> None:
        key = (v["rank"], v["targets"])
        if key not in self.runs:
            self.runs[key] = self.runner(*key)
        self.run = self.runs[key]
        done = [s for s in self.run.eval_steps if s <= v["step"]] or [self.run.eval_steps[0]]
        self.shown_step = done[-1]
        self.answers = self.run.answers[self.run.eval_steps.index(self.shown_step)]
        label = {k: f"r={k[0]}, {k[1]}" for k in self.runs}
        title = (f"r={key[0]} on {key[1]}: {self.run.trainable:,} trainable parameters, "
                 f"{self.run.s_per_step:.1f} s a step; answers below at step {self.shown_step}")
        self.view.update({label[k]: r for k, r in self.runs.items()}, label[key], v["step"], title)
        self.table.value = _answers_html(self.prompts, self.expected, self.answers)


def _answers_html(prompts, expected, answers) -> str:
    """A small table: question, the right answer, the model's answer (green when exactly right)."""
    rows = []
    for i, said in enumerate(answers):
        want = expected[i] if i < len(expected) else ""
        color = "#1a7f37" if said == want else "#9a3412"
        asked = html.escape(prompts[i] if i < len(prompts) else "")
        rows.append(f"<tr><td>{asked}</td><td><code>{html.escape(want)}</code></td>"
                    f"<td style='color:{color}'><code>{html.escape(said)}</code></td></tr>")
    head = "<tr><th align='left'>question</th><th align='left'>right answer</th><th align='left'>model</th></tr>"
    return f"<table style='font-size:12px'>{head}{''.join(rows)}</table>"


def finetune_explorer(runner, **kwargs) -> FinetuneExplorer:
    """Explore LoRA settings on a 4-bit model; ``runner(rank, targets) -> Run`` (`qlearn.finetune.adapter_runner`).

    >>> runner = ql.finetune.adapter_runner(peft_model, tok, train, held)  # doctest: +SKIP
    >>> w = finetune_explorer(runner, runs={(8, "all-linear"): run})  # doctest: +SKIP
    >>> w.update(step=10).shown_step  # doctest: +SKIP
    10
    """
    return FinetuneExplorer(runner, **kwargs)
