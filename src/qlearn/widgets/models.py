"""Explorers on a real model: LLM.int8 outlier columns on a prompt, and generation side by side
in several modes (answer, memory footprint, tokens/s)."""

from __future__ import annotations

import gc
import html

import ipywidgets as widgets

from .. import plots, sources
from ..formats import names
from ..quantize import int8_vectorwise
from ._base import _WIDE, Explorer, ResultCache, slider_layout

__all__ = ["OutlierExplorer", "GenerationExplorer", "outlier_explorer", "generation_explorer"]

DEFAULT_PROMPT = "The capital of France is Paris. Quantization stores each weight in fewer bits."


def _embedded(mode: str = "fp32"):
    from ..models import load
    return load("embedded", mode=mode, verbose=False)


class OutlierExplorer(Explorer):
    """What one linear layer receives on a prompt, column by column, against LLM.int8's threshold.

    Controls: layer (any linear layer name), prompt, threshold (0.1..100, log slider; LLM.int8's
    default is 6.0). After each update: `share` (fraction of input columns at or above the
    threshold, from `ql.int8_vectorwise(inputs, threshold).outlier_cols`) and `inputs`.
    """

    name = "outlier_explorer"

    def __init__(self, model=None, tokenizer=None, layer: str = "model.layers.15.self_attn.q_proj",
                 prompt: str = DEFAULT_PROMPT, threshold: float = 6.0, canvas: str = "png"):
        if model is None:
            model, tokenizer = _embedded("fp32")
        if tokenizer is None:
            raise ValueError("tokenizer is required when a model is given (model, tokenizer = ql.load(...))")
        self.model, self.tokenizer = model, tokenizer
        names = sources.linear_layer_names(model)
        controls = {
            "layer": widgets.Combobox(options=names, value=layer, description="layer", ensure_option=False,
                                      continuous_update=False, style=_WIDE, layout=slider_layout("330px")),
            "prompt": widgets.Text(value=prompt, description="prompt", continuous_update=False,
                                   style=_WIDE, layout=slider_layout("420px")),
            "threshold": widgets.FloatLogSlider(value=threshold, base=10, min=-1, max=2, step=0.01,
                                                description="threshold", continuous_update=True,
                                                readout_format=".3g", style=_WIDE, layout=slider_layout("300px")),
        }
        self._inputs = ResultCache(4)
        self.share = self.inputs = None
        super().__init__(controls, plots.OutlierView(), title="LLM.int8 outlier columns", canvas=canvas)
        self.update()

    def release_model(self) -> OutlierExplorer:
        """Let go of the model so it can be freed (a notebook's ``del model`` alone does not free it
        while the explorer, or IPython's ``Out`` cache that holds the explorer, still refers to it).
        The threshold keeps redrawing the inputs already captured; layer and prompt are disabled.
        """
        self.model = self.tokenizer = None
        self.controls["layer"].disabled = self.controls["prompt"].disabled = True
        return self

    def _draw(self, v: dict) -> None:
        key = (v["layer"], v["prompt"])
        if self.model is None and key not in self._inputs:
            raise ValueError("this explorer released its model (release_model()); make a new one "
                             "with a loaded model to look at another layer or prompt")
        self.inputs = self._inputs.get_or(key, lambda: sources.layer_inputs(
            self.model, self.tokenizer, v["layer"], v["prompt"]))
        cols = int8_vectorwise(self.inputs, threshold=float(v["threshold"])).outlier_cols
        self.view.update(self.inputs, cols, float(v["threshold"]), layer=v["layer"])
        self.share = self.view.share


class GenerationExplorer(Explorer):
    """Ask the same prompt in several modes; answers side by side with footprint and tokens/s.

    Controls: prompt, one checkbox per mode (mode_bf16, mode_int8, ...), max_new_tokens, and the
    generate button. Editing a control does not start a run (a run loads one model per mode):
    the button does, and so does `update(**params)`. One model is in memory at a time.
    `loader(model_id, mode=...) -> (model, tok)`, `timer(model, tok, prompt, max_new_tokens) -> Generation`
    and `footprint(model)` default to ql.load, ql.models.timed_generate and ql.memory.footprint; tests
    inject fakes. After a run: `rows` [{mode, answer, footprint_mb, quant_state_mb, tokens_per_s, seconds,
    speed_tokens, fixed_length}]. The answer is the natural greedy one; tokens/s comes from a separate generate of
    exactly max_new_tokens tokens, after a warm-up, synchronized on CUDA (``timed_generate``), so every mode does
    the same work and the first mode does not pay for start-up.
    """

    name = "generation_explorer"
    # a choice among qlearn.MODES, the registry's "generate" formats: all but fp16 (bf16's path at half the
    # speed on a CPU) and fp4+dq (nf4+dq already shows what double quantization does)
    OFFERED_MODES = names("generate")   # fp32, bf16, int8, nf4, nf4+dq, fp4

    def __init__(self, prompt: str = "What is the capital of France?", modes=("bf16", "int8", "nf4+dq", "fp4"),
                 max_new_tokens: int = 30, model_id: str = "embedded", loader=None, timer=None,
                 footprint=None, run: bool = False, canvas: str = "png"):
        unknown = [m for m in modes if m not in self.OFFERED_MODES]
        if unknown:
            raise ValueError(f"modes {unknown} not offered; choose from {self.OFFERED_MODES}")
        controls = {"prompt": widgets.Textarea(value=prompt, description="prompt", continuous_update=False,
                                               layout=widgets.Layout(width="98%", height="56px"))}
        for mode in self.OFFERED_MODES:
            controls[_checkbox(mode)] = widgets.Checkbox(value=mode in modes, description=mode, indent=False,
                                                        layout=slider_layout("70px"))
        controls["max_new_tokens"] = widgets.IntSlider(value=max_new_tokens, min=1, max=200, description="new tokens",
                                                       continuous_update=True, style=_WIDE,
                                                       layout=slider_layout("260px"))
        controls["generate"] = widgets.Button(description="Generate", button_style="primary")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="", layout=slider_layout("300px"))
        self.status = widgets.HTML(value="Press <b>Generate</b> to load each mode and answer.")
        self.table = widgets.HTML(value="")
        self.model_name, self.rows = model_id, []
        self._loader, self._timer, self._footprint = loader, timer, footprint
        super().__init__(controls, plots.GenerationView(), title="Same prompt, several modes",
                         before=(widgets.HBox([self.progress, self.status]),), after=(self.table,),
                         canvas=canvas)
        self.progress.add_class("qlearn-progress")
        self.table.add_class("qlearn-answers")
        controls["generate"].on_click(lambda _button: self.update())
        self._run = run
        self.update()

    def _on_change(self, change) -> None:   # editing the prompt or a checkbox waits for the button
        if not self._busy:
            self.status.value = "Settings changed: press <b>Generate</b> to run."

    def _draw(self, v: dict) -> None:
        run, self._run = self._run, True       # the first draw (at construction) only shows the figure
        if not run:
            self.view.update(self.rows)
            return
        modes = [m for m in self.OFFERED_MODES if v[_checkbox(m)]]
        if not modes:
            raise ValueError("no mode selected: tick at least one of " + ", ".join(self.OFFERED_MODES))
        loader, timer, footprint = self._defaults()
        self.rows, self.progress.max, self.progress.value = [], len(modes), 0
        for i, mode in enumerate(modes):
            self.status.value = f"&#8987; {html.escape(mode)}: loading and generating ({i + 1}/{len(modes)})..."
            self.rows.append(_one_run(mode, self.model_name, v["prompt"], v["max_new_tokens"],
                                      loader, timer, footprint))
            self.progress.value = i + 1
            self.view.update(self.rows)
            self.show_figure()
            self.table.value = _table(self.rows)
            gc.collect()
        self.status.value = f"Done: {len(modes)} mode(s). {_speed_note(self.rows)}"

    def _defaults(self):
        from .. import memory, models
        return self._loader, self._timer or models.timed_generate, self._footprint or memory.footprint


def _checkbox(mode: str) -> str:
    """The control name of a mode's checkbox: "nf4+dq" -> "mode_nf4_dq" (a valid keyword for update)."""
    return "mode_" + mode.replace("+", "_")


def _one_run(mode, model_id, prompt, max_new_tokens, loader, timer, footprint) -> dict:
    """Load, measure, generate, release (``models.measure_mode``); an error in one mode becomes that
    row's answer. tokens/s the one way qlearn measures it: ``models.timed_generate``."""
    from ..models import measure_mode

    def measure(model, tok):
        fp = footprint(model)
        answer = timer(model, tok, prompt, max_new_tokens)
        return {"answer": answer.text, "footprint_mb": fp.reported_bytes / 1e6,
                "quant_state_mb": fp.quant_state_bytes / 1e6, "tokens_per_s": answer.tokens_per_s,
                "seconds": answer.seconds, "speed_tokens": answer.new_tokens,
                "fixed_length": getattr(answer, "fixed_length", False)}

    try:
        return measure_mode(model_id, mode, measure, loader=loader)
    except Exception as exc:   # e.g. bitsandbytes missing for int8/4-bit: show it, keep the others
        return {"mode": mode, "answer": f"error: {type(exc).__name__}: {exc}", "footprint_mb": None,
                "quant_state_mb": None, "tokens_per_s": None}


def _speed_note(rows: list[dict]) -> str:
    """How tokens/s was measured, from the rows: "tokens/s: 30 new tokens per mode at a fixed length, ..."."""
    timed = [r for r in rows if r.get("tokens_per_s") is not None]
    if not timed:
        return ""
    if all(r.get("fixed_length") for r in timed):
        return (f"tokens/s: {timed[0]['speed_tokens']} new tokens per mode at a fixed length, after a warm-up "
                "(synchronized on a GPU); the answers are natural greedy ones.")
    return "tokens/s: new tokens over the time of one generate call (lengths may differ)."


def _table(rows: list[dict]) -> str:
    def num(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    cell = "style='padding:3px 10px;border-bottom:1px solid #ddd;vertical-align:top'"
    head = "".join(f"<th {cell}>{h}</th>" for h in ("mode", "answer", "footprint MB", "+ scales MB", "tokens/s"))
    body = "".join(
        f"<tr><td {cell}><b>{html.escape(r['mode'])}</b></td><td {cell}>{html.escape(r['answer'])}</td>"
        f"<td {cell}>{num(r['footprint_mb'])}</td><td {cell}>{num(r['quant_state_mb'])}</td>"
        f"<td {cell}>{num(r['tokens_per_s'])}</td></tr>"
        for r in rows)
    return ("<table class='qlearn-table' style='border-collapse:collapse;text-align:left'>"
            f"<tr>{head}</tr>{body}</table>")


def outlier_explorer(model=None, tokenizer=None, **kwargs) -> OutlierExplorer:
    """Explore LLM.int8 outlier columns of a real layer; without a model, loads the embedded
    SmolLM2 in fp32. kwargs: layer, prompt, threshold=6.0.

    >>> w = outlier_explorer(model, tok, threshold=6.0)  # doctest: +SKIP
    >>> w.update(threshold=3.0).share >= w.update(threshold=6.0).share  # doctest: +SKIP
    True
    """
    return OutlierExplorer(model, tokenizer, **kwargs)


def generation_explorer(prompt: str = "What is the capital of France?", **kwargs) -> GenerationExplorer:
    """Answer one prompt in several modes, side by side; press Generate (or pass run=True).
    kwargs: modes=("bf16", "int8", "nf4+dq", "fp4"), max_new_tokens=30, model_id="embedded",
    loader, timer, footprint (injectable), run=False. A mode's checkbox is ``controls["mode_nf4_dq"]``.

    >>> w = generation_explorer(modes=("bf16", "nf4"))  # doctest: +SKIP
    >>> w.update()  # doctest: +SKIP
    """
    return GenerationExplorer(prompt, **kwargs)
