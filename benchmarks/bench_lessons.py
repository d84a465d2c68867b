"""Peak memory of each lesson's kernel: every notebook run top to bottom, its kernel's peak RSS.

    python benchmarks/bench_lessons.py                 # all lessons, full settings (QLEARN_FAST unset)
    python benchmarks/bench_lessons.py --only 04,06    # some lessons
    python benchmarks/bench_lessons.py --fast --cells  # QLEARN_FAST=1; also the cells that raised the peak

Each notebook runs the way tests/test_notebooks.py runs it (nbclient, kernel python3, cwd
notebooks/). The number that matters is the kernel process's peak resident set size: Binder gives
a learner 1-2 GB for exactly that process. It is read from /proc/<pid>/status ``VmHWM`` (the
kernel's own high-water mark, exact) after every cell; a thread also polls ``VmRSS`` every 50 ms
as a cross-check (it can only miss short peaks, so it reads at most VmHWM), and ``RssAnon``: the
part that is not pages of mapped files (a mapped checkpoint counts in RSS but is page cache the
system can drop, anonymous memory is not). Linux only.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 1800


def status_bytes(pid: int, field: str) -> int:
    """One field of /proc/<pid>/status (e.g. VmHWM = peak RSS, VmRSS = RSS now), in bytes.

    The file says ``kB`` and means KiB: ``VmHWM:  1130496 kB`` is 1,157,627,904 bytes (1.16 GB).
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"{field} not in /proc/{pid}/status")


class KernelWatch:
    """Follows one notebook run: the kernel pid, VmHWM after each cell, VmRSS polled in a thread."""

    def __init__(self, poll_s: float = 0.05):
        self.pid = None
        self.poll_s = poll_s
        self.hwm = 0          # VmHWM after the last cell (the peak so far)
        self.polled = 0       # largest VmRSS the polling thread saw
        self.anon = 0         # largest RssAnon the polling thread saw
        self.cells = []       # [(cell index, VmHWM and VmRSS bytes after it, its first line)]
        self._stop = threading.Event()

    def on_notebook_start(self, notebook, **_):
        """nbclient hook, called once the kernel is up: find its process and start polling."""
        self.pid = self.client.km.provisioner.process.pid
        threading.Thread(target=self._poll, daemon=True).start()

    def on_cell_executed(self, cell, cell_index, **_):
        """nbclient hook, after each cell (the kernel is still alive): record the high-water mark."""
        self.hwm = status_bytes(self.pid, "VmHWM")
        first = next((ln for ln in cell.source.splitlines() if ln.strip() and not ln.startswith("#")), "")
        self.cells.append((cell_index, self.hwm, status_bytes(self.pid, "VmRSS"), first[:60]))

    def _poll(self):
        while not self._stop.is_set():
            try:
                self.polled = max(self.polled, status_bytes(self.pid, "VmRSS"))
                self.anon = max(self.anon, status_bytes(self.pid, "RssAnon"))
            except (OSError, KeyError):   # the kernel has exited
                return
            time.sleep(self.poll_s)

    def stop(self):
        self._stop.set()


def run_lesson(path: Path, save: Path | None = None) -> tuple[KernelWatch, float]:
    """Execute one notebook in a fresh kernel; returns its KernelWatch and the wall seconds. With ``save``,
    the executed notebook (outputs and figures) is written into that folder, also when a cell failed."""
    nb = nbformat.read(path, as_version=4)
    watch = KernelWatch()
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(NB_DIR)}},
                            on_notebook_start=watch.on_notebook_start, on_cell_executed=watch.on_cell_executed)
    watch.client = client
    t0 = time.perf_counter()
    try:
        client.execute()
    finally:
        watch.stop()
        if save is not None:
            save.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, save / path.name)
    return watch, time.perf_counter() - t0


def print_cells(watch: KernelWatch, min_rise_mb: float = 20.0) -> None:
    """The cells after which the peak rose by at least ``min_rise_mb`` MB, and the RSS they left."""
    prev = 0
    for index, hwm, rss, first in watch.cells:
        if (hwm - prev) / 1e6 >= min_rise_mb:
            print(f"      cell {index:>2}: peak {hwm / 1e9:5.2f} GB (+{(hwm - prev) / 1e6:4.0f} MB), "
                  f"left {rss / 1e9:4.2f} GB  {first}")
        prev = hwm


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated lesson numbers, e.g. 04,06")
    p.add_argument("--fast", action="store_true", help="QLEARN_FAST=1 (the test suite's smaller runs)")
    p.add_argument("--cells", action="store_true", help="also list the cells that raised the peak")
    p.add_argument("--save", type=Path, default=None, help="write each executed notebook into this folder")
    args = p.parse_args(argv)
    if not Path("/proc/self/status").exists():
        sys.exit("bench_lessons reads /proc/<pid>/status: Linux only")
    if args.fast:
        os.environ["QLEARN_FAST"] = "1"
    else:
        os.environ.pop("QLEARN_FAST", None)
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    wanted = {s.strip().zfill(2) for s in args.only.split(",") if s.strip()}
    paths = [p for p in sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb")) if not wanted or p.name[:2] in wanted]
    print(f"settings: {'fast (QLEARN_FAST=1)' if args.fast else 'full'}, {os.cpu_count()} CPUs")
    print(f"{'lesson':<30} {'peak RSS GB':>11} {'polled GB':>9} {'anon GB':>7} {'wall s':>7}")
    total, failed = 0.0, []
    for path in paths:
        t0 = time.perf_counter()
        try:
            watch, seconds = run_lesson(path, args.save)
        except Exception as exc:   # a failing lesson is reported; the others still run
            failed.append(path.stem)
            last = str(exc).strip().splitlines()[-1][:200]
            print(f"{path.stem:<30} FAILED after {time.perf_counter() - t0:.0f} s: {last}", flush=True)
            continue
        total += seconds
        print(f"{path.stem:<30} {watch.hwm / 1e9:11.2f} {watch.polled / 1e9:9.2f} {watch.anon / 1e9:7.2f} "
              f"{seconds:7.0f}", flush=True)
        if args.cells:
            print_cells(watch)
    print(f"{'total':<30} {'':>11} {'':>9} {'':>7} {total:7.0f}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
