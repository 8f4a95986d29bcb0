"""Shared bits of the benchmarks: machine description, timing, peak-memory sampling."""

from __future__ import annotations

import os
import platform
import threading
import time

import torch


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    desc = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.python_version()}"
    if torch.cuda.is_available():
        desc += f", GPU {torch.cuda.get_device_name()}"
    return desc


class PeakRSS:
    """This process's peak resident memory inside the block: `.peak_extra` is the highest value
    above the level at entry, in bytes (CPU memory; use CUDA's own counters on a GPU).

    On Linux the kernel's high-water mark (VmHWM) is reset at entry and read at exit, so nothing
    runs during the block. (A thread reading /proc/self/statm every 2 ms, as this class did, slowed
    code that page-faults a lot, such as SAE training with fresh [batch, d_sae] tensors, by up to
    a third.) Elsewhere the thread samples the resident size instead.
    """

    def __enter__(self):
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.start = self._rss()
        self.peak = self.start
        self._thread = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
            self._high_water_mark()
        except (OSError, StopIteration, ValueError):
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    @staticmethod
    def _high_water_mark() -> int:
        with open("/proc/self/status") as f:
            return 1024 * int(next(line.split()[1] for line in f if line.startswith("VmHWM:")))

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self._thread is None:
            self.peak = max(self.peak, self._high_water_mark())
        else:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def peak_extra(self) -> int:
        return self.peak - self.start


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def markdown_table(rows: list[dict]) -> str:
    """Rows of equal keys as a Markdown table (for benchmarks/RESULTS.md)."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
