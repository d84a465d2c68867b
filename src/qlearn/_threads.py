"""torch's intra-op thread count for one block of code, restored after: the one place qlearn changes it.

Why a block would change it: many small ops (GPTQ's column loop, a method applied layer by layer,
a widget's redraw) or a timing on a shared machine, where a second intra-op thread waits on the
first whenever either is descheduled and timings scatter. Nothing in qlearn changes the count for
the rest of the process.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

__all__ = ["threads"]


@contextmanager
def threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (None: leave as is), then restore the caller's count.

    >>> before = torch.get_num_threads()
    >>> with threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int or None; got {n!r}")
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
