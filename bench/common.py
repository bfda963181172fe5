"""Shared measurement helpers of the benchmarks: machine description, matmul peak probe,
statistics, tables and the JSON result files in ``bench/results/``."""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """Everything that names the machine a figure was measured on."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:  # pragma: no cover
        pass
    return info


def machine_tag(info: dict[str, Any] | None = None) -> str:
    """File-name-safe ``<host>_<cpu>_torch<ver>_<threads>t``."""
    info = info or machine_info()
    parts = [info["hostname"], info["cuda"] or info["cpu"], f"torch{info['torch']}",
             f"{info['torch_threads']}t"]
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", str(p)).strip("-") for p in parts)


def result_path(script: str, info: dict[str, Any] | None = None, label: str = "") -> Path:
    """``bench/results/<script>[_<label>]_<machine tag>.json``."""
    name = f"{script}_{label}" if label else script
    return RESULTS_DIR / f"{name}_{machine_tag(info)}.json"


def write_result(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (creating ``bench/results``) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def fill_defaults(args: Any, defaults: dict[str, Any]) -> None:
    """Set every ``defaults`` option the command line left as None."""
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def finish(script: str, args: Any, info: dict[str, Any], label: str = "",
           **fields: Any) -> dict[str, Any]:
    """The run's result payload, written to ``bench/results`` unless ``--no-save``."""
    payload = {"benchmark": script, "machine": info, "args": vars(args), **fields,
               "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not args.no_save:
        print(f"wrote {write_result(result_path(script, info, label), payload)}")
    return payload


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and relative spread ((max - min) / median) of repeated measurements."""
    values = [float(v) for v in values]
    median = statistics.median(values)
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / median if median else 0.0,
        "n": len(values),
        "values": values,
    }


def matmul_flops(size: int = 2048, repeats: int = 5, warmup: int = 1,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 inner: int = 1) -> float:
    """Best achieved FLOP/s of ``size x size @ size x size`` over ``repeats`` timed samples.

    The best, not the median: it estimates what the machine can do, not what it did while
    sharing the cores. Use several probes interleaved with the workload (see
    :class:`PeakProbe`) so a busy moment does not decide it. Each sample times ``inner``
    back-to-back products; on CUDA with CUDA events (recorded around the products only),
    so launch latency and host timers do not count.
    """
    device = torch.device(device)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    out = torch.empty(size, size, dtype=dtype, device=device)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    best = float("inf")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                torch.mm(a, b, out=out)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1000.0)
    else:
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(inner):
                torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 * inner / best


def bf16_cuda_peak(size: int = 8192, repeats: int = 10, inner: int = 10) -> float:
    """Measured bf16 matmul FLOP/s of the current CUDA device (large products, CUDA events)."""
    return matmul_flops(size, repeats, warmup=3, dtype=torch.bfloat16, device="cuda",
                        inner=inner)


class PeakProbe:
    """Matmul peak (fp32 on the CPU by default) measured repeatedly during a benchmark;
    ``peak`` is the best probe."""

    def __init__(self, size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", inner: int = 1) -> None:
        self.size, self.repeats, self.inner = size, repeats, inner
        self.dtype, self.device = dtype, torch.device(device)
        self.samples: list[float] = []

    def measure(self) -> float:
        warmup = 3 if self.device.type == "cuda" else 1
        flops = matmul_flops(self.size, self.repeats, warmup, self.dtype, self.device,
                             self.inner)
        self.samples.append(flops)
        return flops

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.").replace("float32", "fp32").replace(
            "bfloat16", "bf16").replace("float16", "fp16")

    @property
    def peak(self) -> float:
        return max(self.samples)

    def as_dict(self) -> dict[str, Any]:
        return {"matrix_size": self.size, "repeats_per_probe": self.repeats,
                "products_per_sample": self.inner, "dtype": self.dtype_name,
                "device": str(self.device), "peak_flops": self.peak, "probes": self.samples}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes, and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> None:
    """Print ``rows`` as an aligned table; ``columns`` are (key, header, format spec)."""
    cells = [[format(row[key], spec) if row.get(key) is not None else "-"
              for key, _, spec in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for line in cells:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)))
