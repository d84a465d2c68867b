"""What a module receives in a forward pass: forward pre-hooks, in one place.

Every analysis that needs a layer's input (the outlier view, sensitivity's channel energies, the
methods' calibration statistics, a decoder layer's arguments) registers the same kind of hook:
``module.register_forward_pre_hook(hook, with_kwargs=True)`` sees ``(args, kwargs)`` before the module
runs. ``input_hooks`` registers them for a block and removes them after; raising `StopForward` in the
hook ends the forward pass there (the layers after it are not needed) and the block ends quietly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["StopForward", "input_hooks", "first_call", "layer_input"]


class StopForward(Exception):
    """Raised by a hook to end the forward pass early; `input_hooks` swallows it."""


@contextmanager
def input_hooks(modules: Mapping[str, nn.Module], fn: Callable[[str, tuple, dict], None]):
    """While the block runs, call ``fn(name, args, kwargs)`` each time ``modules[name]`` is called, before it runs.

    ``fn`` may raise `StopForward` to end the forward pass; the ``with`` block then ends without error.
    The hooks are removed on exit, error or not.

    >>> seen = []
    >>> lin = nn.Linear(3, 2)
    >>> with input_hooks({"lin": lin}, lambda name, args, kwargs: seen.append((name, tuple(args[0].shape)))):
    ...     _ = lin(torch.zeros(4, 3))
    >>> seen
    [('lin', (4, 3))]
    """
    if not isinstance(modules, Mapping) or not all(isinstance(m, nn.Module) for m in modules.values()):
        raise TypeError(f"modules must be a mapping of name -> torch.nn.Module; got {type(modules).__name__}")
    handles = [m.register_forward_pre_hook(_caller(fn, name), with_kwargs=True) for name, m in modules.items()]
    try:
        yield
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()


def _caller(fn, name):
    def hook(_module, args, kwargs):
        fn(name, args, kwargs)
    return hook


def first_call(module: nn.Module, forward: Callable[[], object]) -> tuple[tuple, dict]:
    """Run ``forward()`` until `module` is first called; return the ``(args, kwargs)`` it got (nothing after runs).

    >>> net = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    >>> args, kwargs = first_call(net[1], lambda: net(torch.ones(1, 3)))
    >>> tuple(args[0].shape), kwargs
    ((1, 2), {})
    """
    seen = {}

    def keep(_name, args, kwargs):
        seen["call"] = (args, dict(kwargs))
        raise StopForward

    with input_hooks({"module": module}, keep):
        forward()
    if "call" not in seen:
        raise RuntimeError(f"the module ({type(module).__name__}) was not called in the forward pass "
                           "(is it used by this model?)")
    return seen["call"]


def layer_input(args: tuple, kwargs: Mapping, name: str = "hidden_states") -> torch.Tensor:
    """A layer's main input from what a hook saw: the first positional argument, else ``kwargs[name]``.

    >>> layer_input((), {"hidden_states": torch.zeros(2)}).shape
    torch.Size([2])
    """
    if args:
        return args[0]
    if name not in kwargs:
        raise ValueError(f"the call had no positional argument and no {name!r} keyword; got {sorted(kwargs)}")
    return kwargs[name]
