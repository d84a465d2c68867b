"""Shared fixtures. ``embedded_path``: the embedded SmolLM2, converted once per session (or reused).

``make test`` runs the suite on two pytest-xdist workers (one torch thread each): every test file
stays on one worker, so its module fixtures (a model loaded once per mode) are built once, while the
lesson notebooks are spread one by one.

The conversion goes to the normal qlearn cache (``$QLEARN_CACHE`` or ~/.cache/qlearn), so a second
test session on the same machine finds it ready. Fixtures that load a model are for tests marked
``slow``; keep one model in memory at a time.
"""

import logging
import socket

import pytest


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    """Under xdist (``--dist loadgroup``): one group per test file, one per lesson notebook run."""
    for item in items:
        group = item.path.stem
        callspec = getattr(item, "callspec", None)
        if group == "test_notebooks" and callspec is not None and "path" in callspec.params:
            group = f"{group}-{callspec.id}"
        item.add_marker(pytest.mark.xdist_group(group))


class _GroupsApplied:
    """On an xdist worker with ``--dist loadgroup``: stop if the groups did not reach the test ids.

    xdist schedules by a suffix ``@group`` on each test id. With pytest 9.2 and xdist 3.8 the suffix
    was silently lost, every file was split over both workers and test_models' model fixture was
    built twice (2 x 135 s): this turns that into an error that names the versions.
    """

    @pytest.hookimpl(trylast=True)   # after xdist's own hook has renamed the tests
    def pytest_collection_modifyitems(self, config, items):
        if not config.getvalue("loadgroup"):
            return
        ungrouped = [item.nodeid for item in items if "@" not in item.nodeid.rsplit("]", 1)[-1]]
        if ungrouped:
            import xdist

            raise pytest.UsageError(
                f"pytest-xdist {xdist.__version__} did not apply --dist loadgroup groups under pytest "
                f"{pytest.__version__} (first ungrouped test: {ungrouped[0]}); pyproject.toml pins a pytest "
                "that works with it"
            )


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        config.pluginmanager.register(_GroupsApplied(), "qlearn-groups-applied")


@pytest.fixture(scope="session")
def embedded_path():
    """Path of the converted embedded model folder (bf16 safetensors + tokenizer).

    Converted with every socket connection refused: "embedded" must never touch the network.
    """
    from qlearn.models import embedded_model_path

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted while converting the embedded model: {args[1:]}")

    connect, socket.socket.connect = socket.socket.connect, refuse
    try:
        return embedded_model_path()
    finally:
        socket.socket.connect = connect


@pytest.fixture(autouse=True, scope="session")
def _quiet_bitsandbytes():
    """LLM.int8 logs "inputs will be cast ... to float16" on every matmul: keep test logs readable."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    yield


@pytest.fixture(autouse=True)
def _replayable_random():
    """Every test starts from torch seed 0, so a tensor drawn without an explicit generator replays too."""
    import torch

    torch.manual_seed(0)
    yield
