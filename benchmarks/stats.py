"""Statistics and measurement for ``mobileclip bench``: latency percentiles, throughput and the
physical limit (pure), the process's memory (:class:`MemoryProbe`), the machine's measured matmul
peak, and the interleaved timing of cases (:func:`time_cases`)."""
from __future__ import annotations

import math
import re
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

from mobileclip.errors import ConfigError
from mobileclip.precision import ieee_fp32, ieee_fp32_matmul  # noqa: F401 (IEEE fp32 on CUDA lives in the core)

if TYPE_CHECKING:
    from .runtimes import Runtime

MIN_ROUNDS = 5                 # interleaved slots per case, at least


# =========================================================================== statistics (pure)

def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks.

    The same definition as ``numpy.percentile``'s default: position ``(n - 1) * q / 100`` in
    the sorted samples. ``percentile([1, 2, ..., 10], 90) == 9.1``.
    """
    if not len(samples):
        raise ConfigError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ConfigError(f"percentile q must be in [0, 100], got {q}")
    xs = sorted(float(v) for v in samples)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_stats(samples_ms: Sequence[float]) -> dict:
    """p50/p90/p99, mean, min (ms), the number of calls and their total time (s)."""
    return {"n_runs": len(samples_ms), "timed_s": float(sum(samples_ms)) / 1000.0,
            "mean_ms": float(sum(samples_ms)) / len(samples_ms), "min_ms": float(min(samples_ms)),
            "p50_ms": percentile(samples_ms, 50), "p90_ms": percentile(samples_ms, 90),
            "p99_ms": percentile(samples_ms, 99)}


def throughput(batch: int, mean_ms: float) -> float:
    """Samples per second: ``batch`` samples per call over the mean call latency."""
    return batch * 1000.0 / mean_ms


def matmul_gflops(n: int, seconds: float) -> float:
    """GFLOP/s of one ``n x n`` by ``n x n`` matmul taking ``seconds`` (2 n^3 FLOPs)."""
    return 2.0 * n ** 3 / seconds / 1e9


def limit_ms(gflops_per_sample: float, batch: int, peak_gflops: float) -> float:
    """The latency (ms) a machine running at ``peak_gflops`` would need for ``batch`` samples."""
    return gflops_per_sample * batch / peak_gflops * 1000.0


def gap(measured_ms: float, limit: float) -> float:
    """How many times slower than the physical limit a measured latency is."""
    return measured_ms / limit


# =========================================================================== memory

def _status_kb(key: str) -> Optional[int]:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) if m else None


class MemoryProbe:
    """Resident memory of this process, in MB.

    Where Linux lets a process reset its own RSS high-water mark (writing ``5`` to
    ``/proc/self/clear_refs``), :meth:`reset` does so before each step of a case, so the
    peak read afterwards belongs to that step (``mode == "per-case"``). Otherwise the peak is
    the process's high-water mark so far (``getrusage``; ``mode == "process"``), which only
    grows. Either way RSS counts everything the process holds (all models loaded so far),
    so rows also carry the increase over the RSS just before the step.
    """

    def __init__(self) -> None:
        self.mode = "per-case" if self._try_reset() else "process"

    @staticmethod
    def _try_reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return _status_kb("VmHWM") is not None
        except OSError:
            return False

    def reset(self) -> None:
        if self.mode == "per-case":
            self._try_reset()

    @staticmethod
    def rss_mb() -> float:
        kb = _status_kb("VmRSS")
        if kb is not None:
            return kb / 1024.0
        return MemoryProbe.peak_mb()  # no /proc (macOS): the high-water mark is the best we have

    @staticmethod
    def peak_mb() -> float:
        kb = _status_kb("VmHWM")
        if kb is not None:
            return kb / 1024.0
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return ru / (1024.0 * 1024.0) if sys.platform == "darwin" else ru / 1024.0  # bytes on macOS, KiB on Linux

    def describe(self) -> str:
        if self.mode == "per-case":
            return ("peak_rss_mb: the process's RSS high-water mark while the case ran (VmHWM, reset through "
                    "/proc/self/clear_refs before each of its warm-up and timed slots); it includes everything "
                    "the process holds. run_rss_mb: that peak minus the RSS just before the slot (what one call "
                    "adds: activations, scratch, first-call allocations in warm-up). load_rss_mb: RSS added by "
                    "loading the row's model (torch: the whole model, both towers) or creating its session.")
        return ("peak_rss_mb: the process's RSS high-water mark so far (getrusage; this kernel does not let it be "
                "reset, so it only grows across cases). run_rss_mb: that mark minus the RSS before the case's slot "
                "(a lower bound of what a call adds). load_rss_mb: RSS added by loading the row's model or session.")


# =========================================================================== peak


def device_sync(device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously: a time taken without this measures the
    launch, not the work); nothing to wait for elsewhere."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak(device: str, threads: int, seconds: float = 1.0, n: Optional[int] = None,
                 dtype: str = "fp32") -> dict:
    """The machine's measured peak: a large square matmul timed repeatedly, best GFLOP/s.

    CPU: ``torch.mm`` on ``n = 2048`` fp32 with ``threads`` torch threads (the same count the
    cases use). CUDA: ``n = 8192`` (TF32 off for fp32), synchronised after every call.
    """
    import torch

    dev = torch.device(device)
    n = n or (8192 if dev.type == "cuda" else 2048)
    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if dev.type == "cpu":
        torch.set_num_threads(threads)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev, tdtype)
    b = torch.randn(n, n, generator=g).to(dev, tdtype)

    def sync():
        device_sync(dev)

    times = []
    with ieee_fp32_matmul(), torch.inference_mode():
        for _ in range(2):
            torch.mm(a, b)
        sync()
        t_end = time.perf_counter() + seconds
        while len(times) < 3 or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync()
            times.append(time.perf_counter() - t0)
    return {"gflops": matmul_gflops(n, min(times)), "median_gflops": matmul_gflops(n, percentile(times, 50)),
            "n": n, "dtype": dtype, "repeats": len(times), "how": f"torch.mm {n}x{n} {dtype} on {device}"
            + (f", {threads} threads" if dev.type == "cpu" else "") + ", best repeat"}


# =========================================================================== timing (interleaved)

@dataclass
class Case:
    row: dict
    runtime: Runtime
    fn: Optional[Callable[[], object]] = None
    samples: list = field(default_factory=list)
    peak_rss: float = 0.0
    run_rss: float = 0.0
    peak_cuda: float = 0.0
    per_slot: int = 1


@contextmanager
def _measure(case: Case, probe: MemoryProbe, cuda: bool) -> Iterator[None]:
    """Memory around one slot of a case (its warm-up or a run of timed calls)."""
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    probe.reset()
    rss0 = probe.rss_mb()
    yield
    peak = probe.peak_mb()
    case.peak_rss = max(case.peak_rss, peak)
    case.run_rss = max(case.run_rss, peak - rss0)
    if cuda:
        import torch

        case.peak_cuda = max(case.peak_cuda, torch.cuda.max_memory_allocated() / 1e6)


def error_reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _per_slot(call_s: float, min_runs: int, min_seconds: float) -> int:
    """Calls per interleaved slot, so that a case meets both minimums in about MIN_ROUNDS slots."""
    need = max(min_runs, math.ceil(min_seconds / max(call_s, 1e-6)))
    return max(1, math.ceil(need / MIN_ROUNDS))


def time_cases(cases: list, warmup: int, min_runs: int, min_seconds: float, probe: MemoryProbe,
               cuda: bool = False) -> None:
    """Warm up every case (at least one call), then time them in interleaved rounds until each has >= ``min_runs``
    calls and >= ``min_seconds`` of timed calls. A case whose warm-up raises is marked failed
    (or skipped, for ``torch.compile``) with the reason and left out of the rounds."""
    live = []
    for c in cases:
        try:
            with _measure(c, probe, cuda):
                t0 = time.perf_counter()
                for _ in range(max(1, warmup)):
                    c.fn()
                    c.runtime.sync()
                est = (time.perf_counter() - t0) / max(1, warmup)
        except Exception as e:  # recorded in the row, with the reason: a benchmark reports, it does not hide
            if c.row["compile"]:
                c.row.update(status="skipped", reason=f"torch.compile failed: {error_reason(e)}")
            else:
                c.row.update(status="failed", reason=error_reason(e))
            c.fn = None
            continue
        c.per_slot = _per_slot(est, min_runs, min_seconds)
        live.append(c)

    def done(c: Case) -> bool:
        return len(c.samples) >= min_runs and sum(c.samples) >= 1000.0 * min_seconds

    while True:
        pending = [c for c in live if not done(c)]
        if not pending:
            break
        for c in pending:
            try:
                with _measure(c, probe, cuda):
                    for _ in range(c.per_slot):
                        t0 = time.perf_counter()
                        c.fn()
                        c.runtime.sync()
                        c.samples.append(1000.0 * (time.perf_counter() - t0))
            except Exception as e:  # as in warm-up: the row says what went wrong, the others still run
                c.row.update(status="failed", reason=f"after {len(c.samples)} timed calls: {error_reason(e)}")
                c.samples.clear()
                live.remove(c)
                continue
            # re-size the slots from what was measured (warm-up includes first-call costs such as compilation)
            c.per_slot = _per_slot(percentile(c.samples, 50) / 1000.0, min_runs, min_seconds)
