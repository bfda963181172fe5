"""Device, precision, seeding and run metadata: the environment a run executes in."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cramming.config.schema import ImplConfig
from cramming.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    """Resolved device and precision with the matching autocast context."""

    device: torch.device
    dtype: torch.dtype  # autocast dtype; float32 means autocast off

    @property
    def precision(self) -> str:
        return {v: k for k, v in PRECISIONS.items()}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @property
    def needs_grad_scaler(self) -> bool:
        return self.dtype == torch.float16


def resolve_runtime(impl: ImplConfig) -> Runtime:
    """Pick the device and precision; fail early when the request cannot be honoured."""
    if impl.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(impl.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("impl.device=cuda but no CUDA device is available. "
                              "Use impl.device=cpu or impl.device=auto.")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("impl.device=mps but MPS is not available. Use impl.device=auto.")
    precision = impl.precision
    if precision == "auto":
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "bf16" if use_bf16 else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("impl.precision=fp16 needs CUDA (GradScaler); on CPU use fp32 or bf16.")
    if impl.threads:
        torch.set_num_threads(impl.threads)
    if impl.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    check_compile_options(impl, device)
    if device.type == "cuda":
        enable_tf32()
    return Runtime(device=device, dtype=PRECISIONS[precision])


def enable_tf32() -> None:
    """TF32 tensor cores for fp32 matmuls and cuDNN convolutions (CUDA only, Ampere+).

    Only the process-wide legacy settings: on torch >= 2.9 setting the per-backend
    ``fp32_precision`` instead makes ``torch.get_float32_matmul_precision()`` (read by
    Inductor) raise for mixing the two APIs.
    """
    torch.set_float32_matmul_precision("high")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def check_compile_options(impl: ImplConfig, device: torch.device) -> None:
    """Reject compile settings the resolved ``device`` cannot honour (one-line errors)."""
    if not impl.cuda_graphs:
        return
    if device.type != "cuda":
        raise ConfigError(f"impl.cuda_graphs=true needs a CUDA device (got {device.type}); "
                          "set impl.cuda_graphs=false.")
    if not impl.compile:
        raise ConfigError("impl.cuda_graphs=true needs impl.compile=true (CUDA graphs come "
                          "from torch.compile mode reduce-overhead).")
    if impl.compile_mode not in (None, "reduce-overhead", "max-autotune"):
        raise ConfigError(f"impl.cuda_graphs=true conflicts with impl.compile_mode="
                          f"{impl.compile_mode} (no CUDA graphs); use reduce-overhead or null.")


def compile_options(impl: ImplConfig, sharded: bool = False) -> dict:
    """Keyword arguments of ``torch.compile`` for ``impl`` (mode and fullgraph).

    ``sharded`` (FSDP2): fullgraph is off, the per-layer FSDP hooks run between graphs.
    """
    mode = impl.compile_mode
    if impl.cuda_graphs and mode is None:
        mode = "reduce-overhead"
    return {"mode": mode, "fullgraph": impl.compile_fullgraph and not sharded}


def compile_model(model: torch.nn.Module, impl: ImplConfig,
                  sharded: bool = False) -> torch.nn.Module:
    """``torch.compile(model, **compile_options(impl))`` when ``impl.compile``, else ``model``.

    With ``impl.compile_fullgraph`` (default) a graph break in the training forward + loss
    raises at the first step instead of silently splitting the graph.
    """
    if not impl.compile:
        return model
    if sharded and impl.compile_fullgraph:
        log.info("impl.compile_fullgraph does not apply under FSDP2: its per-layer hooks "
                 "run between the compiled graphs.")
    options = compile_options(impl, sharded)
    compiled = torch.compile(model, **options)
    if options["mode"] in ("reduce-overhead", "max-autotune"):
        return CUDAGraphStep(compiled)
    return compiled


class CUDAGraphStep(torch.nn.Module):
    """A compiled model whose CUDA graphs replay once per microbatch.

    Each call starts a new cudagraph step (the previous microbatch's backward is done) and
    clones the small outputs the trainer keeps (loss, counts), which the next replay would
    otherwise overwrite; ``logits`` stay valid only until the next call.
    """

    def __init__(self, compiled: torch.nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, *args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        outputs = self.compiled(*args, **kwargs)
        return {key: value.clone() if isinstance(value, torch.Tensor) and key != "logits"
                else value for key, value in outputs.items()}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as tensors and plain values (checkpoints are read
    with ``weights_only=True``); :func:`set_rng_state` restores them exactly."""
    version, internal, gauss = random.getstate()
    algorithm, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"python": {"version": version, "state": list(internal), "gauss": gauss},
             "numpy": {"algorithm": str(algorithm),
                       "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    np.random.set_state((numpy["algorithm"], numpy["keys"].numpy().astype(np.uint32),
                         numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_git_info(run_dir: Path) -> None:
    """Save the code version next to the run: commit hash and uncommitted diff."""
    repo = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        try:
            result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                                    timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return result.stdout if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD").strip() or "unknown (not a git checkout)"
    (run_dir / "git_commit.txt").write_text(commit + "\n")
    (run_dir / "git_diff.patch").write_text(git("diff", "HEAD"))


def describe_machine(runtime: Runtime) -> str:
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else "cpu"
    return f"{name} ({runtime.device}, {runtime.precision}, {threads} threads, pid {os.getpid()})"
