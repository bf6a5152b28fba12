"""Timing, memory and machine-load probes for the benchmark suite (Linux /proc based, no extra packages).

* `Probe` times one call and records the process's peak resident memory during it (VmHWM after resetting it via
  /proc/self/clear_refs) and how many cores *other* processes kept busy meanwhile (from /proc/stat minus our own
  CPU time), so runs disturbed by other load can be flagged.
* `summarise` turns repeated probes into median/min/max.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Optional

# Other processes using more than this many cores on average during a timed run mark it "disturbed".
DISTURBED_CORES = 0.25
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _cpu_totals() -> Optional[tuple[int, int]]:
    """(busy, total) jiffies summed over all CPUs, from /proc/stat."""
    text = _read("/proc/stat")
    if not text:
        return None
    fields = [int(x) for x in text.splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def _self_ticks() -> Optional[int]:
    text = _read("/proc/self/stat")
    if not text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime of all threads


def _status_kb(key: str) -> Optional[int]:
    text = _read("/proc/self/status")
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def rss_mb() -> Optional[float]:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Probe:
    """Context manager: wall seconds, peak RSS (MB) during the block, RSS before it, other processes' load."""

    def __enter__(self):
        self.rss_before_mb = rss_mb()
        self.peak_reset = _reset_peak_rss()
        self._cpu0, self._self0 = _cpu_totals(), _self_ticks()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        cpu1, self1 = _cpu_totals(), _self_ticks()
        hwm = _status_kb("VmHWM")
        self.peak_rss_mb = hwm / 1024 if (hwm is not None and self.peak_reset) else None
        self.other_load_cores = None
        if self._cpu0 and cpu1 and self._self0 is not None and self1 is not None:
            busy = cpu1[0] - self._cpu0[0]
            total = cpu1[1] - self._cpu0[1]
            if total > 0:
                ncpu = cpu_count()
                self.other_load_cores = max(0.0, (busy - (self1 - self._self0)) / (total / ncpu))
        return False

    def record(self) -> dict:
        out = {"seconds": self.seconds, "other_load_cores": self.other_load_cores,
               "peak_rss_mb": self.peak_rss_mb, "rss_before_mb": self.rss_before_mb}
        out["peak_rss_delta_mb"] = (None if self.peak_rss_mb is None or self.rss_before_mb is None
                                    else max(0.0, self.peak_rss_mb - self.rss_before_mb))
        return out


def probe(fn: Callable[[], object]) -> tuple[dict, object]:
    """Run fn() under a Probe; returns (record, fn's result)."""
    with Probe() as p:
        result = fn()
    return p.record(), result


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def malloc_trim() -> bool:
    """Return freed heap memory to the OS (glibc), so the next call's RSS rise shows what it allocates."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def memory_probe(fn: Callable[[], object]) -> tuple[dict, object]:
    """probe() after malloc_trim(): its peak_rss_delta_mb is the call's own peak allocation (allocators that keep
    freed memory would otherwise hide it on repeated calls). Page faults make this run slower than the others."""
    import gc

    gc.collect()
    malloc_trim()
    return probe(fn)


def summarise(records: list[dict], work: Optional[float] = None, unit: str = "tokens_per_s") -> dict:
    """Median/min/max seconds over runs (and `work / seconds` as `unit` when work is given)."""
    secs = [r["seconds"] for r in records]
    out = {
        "runs": len(records),
        "seconds_median": statistics.median(secs),
        "seconds_min": min(secs),
        "seconds_max": max(secs),
        "seconds_all": secs,
        "peak_rss_mb": max((r["peak_rss_mb"] for r in records if r["peak_rss_mb"] is not None), default=None),
        "peak_rss_delta_mb": max((r["peak_rss_delta_mb"] for r in records if r["peak_rss_delta_mb"] is not None),
                                 default=None),
        "other_load_cores": _med(r["other_load_cores"] for r in records),
    }
    load = out["other_load_cores"]
    out["disturbed"] = bool(load is not None and load > DISTURBED_CORES)
    if work is not None:
        out[unit] = work / out["seconds_median"]
        out[unit + "_min"] = work / out["seconds_max"]
        out[unit + "_max"] = work / out["seconds_min"]
    return out


def loadavg() -> Optional[list[float]]:
    text = _read("/proc/loadavg")
    return None if not text else [float(x) for x in text.split()[:3]]
