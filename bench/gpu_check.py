"""GPU check: environment, crammed-bert vs HF BERT in bf16 + torch.compile, goals, DDP step.

Run by ``bench/gpu_check.sh`` (which finds a Python with torch and the packages); by hand::

    python -m bench.gpu_check                 # CUDA: full size; no CUDA: tiny CPU fallback
    python -m bench.gpu_check --cpu           # the CPU fallback even where CUDA is present
    python -m bench.gpu_check --list-missing  # the required packages this Python lacks

On CUDA: crammed-bert at full size (16 x 768, seq 128, vocab 32768, microbatch 256, batch
512) with bf16 autocast and torch.compile, run by ``Trainer.train_step()``; transformers'
``BertForMaskedLM`` of the same size (SDPA attention, bf16, compiled, dense decoding) the
same way; the same crammed model in a plain PyTorch loop (``eager-loop``: the engine's
overhead). MFU = useful FLOP/s / the bf16 matmul peak measured in the same run (8192^3
products timed with CUDA events, probes between the repeats). Timed regions are bracketed
by ``torch.cuda.synchronize()``, never a step. With 2+ GPUs (``nvidia-smi -L``) a 2-process
DDP step runs under torchrun (:mod:`bench.gpu_ddp_step`). Goals are printed PASS/FAIL; the
exit status is 0 whatever they say.

Without CUDA (or with ``--cpu``) the same script runs at a tiny size, fp32, no compile, with
an fp32 matmul probe, so it can be tested anywhere; its goals are printed as on the GPU but
mean nothing there.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# import name -> distribution name; everything this check needs beyond torch and numpy
REQUIRED = {"numpy": "numpy", "yaml": "pyyaml", "omegaconf": "omegaconf",
            "antlr4": "antlr4-python3-runtime", "hydra": "hydra-core",
            "transformers": "transformers", "tokenizers": "tokenizers",
            "safetensors": "safetensors", "tqdm": "tqdm"}
GPU_SHAPE = dict(layers=16, hidden=768, heads=12, intermediate=1536, seq=128, vocab=32768,
                 batch=512, microbatch=256)
CPU_SHAPE = dict(layers=1, hidden=64, heads=2, intermediate=64, seq=32, vocab=512, batch=8,
                 microbatch=4)
GOAL_MFU, GOAL_VS_HF, GOAL_WAIT = 0.40, 1.3, 0.02


def missing_packages() -> list[str]:
    """Distribution names of the required packages this Python cannot import."""
    return [dist for module, dist in REQUIRED.items() if importlib.util.find_spec(module) is None]


def run_text(command: list[str], timeout: float = 30) -> str | None:
    """A command's stdout, or None when it is missing or fails."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def gpu_count() -> int:
    """GPUs ``nvidia-smi -L`` lists (torch's count where nvidia-smi is missing)."""
    listing = run_text(["nvidia-smi", "-L"])
    if listing is not None:
        return sum(1 for line in listing.splitlines() if line.startswith("GPU "))
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """torch / CUDA / driver / GPU / flash-attn / packages, printed and returned."""
    env: dict[str, Any] = {
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": [], "driver": None,
        "flash_attn": version_of("flash-attn") or version_of("flash_attn")
        if importlib.util.find_spec("flash_attn") else None,
        "packages": {dist: version_of(dist) for dist in REQUIRED.values()},
        "missing_packages": missing_packages(),
        "nvidia_smi_gpus": gpu_count(),
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            env["gpus"].append({"name": props.name, "memory_gib": props.total_memory / 2**30,
                                "capability": f"{props.major}.{props.minor}",
                                "multiprocessors": props.multi_processor_count})
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
        flash = getattr(torch.backends.cuda, "is_flash_attention_available", None)
        env["sdpa_flash_kernel"] = bool(flash()) if flash is not None else None
    query = run_text(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    if query:
        env["driver"] = query.splitlines()[0].strip()
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']:.0f} GiB, sm {g['capability']})"
                     for g in env["gpus"]) or "none visible to torch"
    print(f"python {env['python']}\ntorch {env['torch']} (CUDA {env['torch_cuda']}, cuDNN "
          f"{env['cudnn']}); driver {env['driver']}; GPUs: {gpus}; nvidia-smi -L: "
          f"{env['nvidia_smi_gpus']}")
    print(f"flash-attn package: {env['flash_attn'] or 'not installed'}; SDPA flash kernel: "
          f"{env.get('sdpa_flash_kernel')}")
    print("packages: " + ", ".join(f"{d} {v or 'MISSING'}" for d, v in env["packages"].items()))
    smi = run_text(["nvidia-smi"])
    if smi:
        print(smi.rstrip())
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--cpu", action="store_true", help="the tiny CPU fallback")
    parser.add_argument("--list-missing", action="store_true",
                        help="print the missing required packages (one line) and exit")
    for key in GPU_SHAPE:
        parser.add_argument(f"--{key}", type=int, default=None,
                            help=f"GPU default {GPU_SHAPE[key]}, CPU fallback {CPU_SHAPE[key]}")
    parser.add_argument("--models", default="crammed,hf-bert,eager-loop")
    parser.add_argument("--repeats", type=int, default=None, help="GPU 5, CPU 2")
    parser.add_argument("--steps", type=int, default=None, help="steps per block: GPU 3, CPU 1")
    parser.add_argument("--warmup", type=int, default=None, help="GPU 3 (compiles), CPU 1")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="auto: on for CUDA, off for the CPU fallback")
    parser.add_argument("--ddp", choices=("auto", "force", "off"), default="auto",
                        help="auto: a 2-process DDP step when nvidia-smi -L lists 2+ GPUs")
    parser.add_argument("--deadline", type=float, default=420.0,
                        help="seconds for the whole check; later models/parts are skipped")
    parser.add_argument("--no-sync-check", dest="sync_check", action="store_false",
                        help="skip the real run_pretraining under CUDA sync debug mode")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--label", default="")
    parser.add_argument("--no-save", action="store_true")
    return parser.parse_args(argv)


def compile_on(args: argparse.Namespace, cuda: bool) -> bool:
    return args.compile == "on" or (args.compile == "auto" and cuda)


def throughput_argv(args: argparse.Namespace, cuda: bool, shape: dict[str, int],
                    time_limit: float) -> list[str]:
    """bench.train_throughput's options for this check."""
    compiled = str(compile_on(args, cuda)).lower()
    precision = "bf16" if cuda else "fp32"
    argv = [item for key, value in shape.items() for item in (f"--{key}", str(value))]
    argv += ["--models", args.models, "--device", "cuda" if cuda else "cpu",
             "--repeats", str(args.repeats), "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--time-limit", f"{max(time_limit, 1):.0f}",
             "--keep-going", "--no-save"]
    if not cuda:
        argv += ["--threads", "1"]
    mask_prob = 0.25
    ours = [f"impl.precision={precision}", f"impl.compile={compiled}",
            # Cramming's static decode: round(mask_prob * tokens) positions per microbatch
            f"arch.fixed_masked_fraction={mask_prob}"]
    hf = [f"impl.precision={precision}", f"impl.compile={compiled}",
          "arch.attention_impl=sdpa"]
    return argv + ["--mask-prob", str(mask_prob), "--ours", *ours, "--hf", *hf]


def ddp_step(args: argparse.Namespace, cuda: bool, shape: dict[str, int],
             seconds_left: float) -> dict[str, Any]:
    """A 2-process DDP step via torchrun, when 2+ GPUs are listed (or ``--ddp force``)."""
    gpus = gpu_count()
    if args.ddp == "off" or (args.ddp == "auto" and (not cuda or gpus < 2)):
        why = "--ddp off" if args.ddp == "off" else (
            f"nvidia-smi -L lists {gpus} GPU(s); DDP needs 2" if cuda else "no CUDA")
        print(f"\nDDP step: skipped ({why})")
        return {"status": "skipped", "reason": why}
    if seconds_left < 30:
        print("\nDDP step: skipped (deadline)")
        return {"status": "skipped", "reason": "deadline"}
    with tempfile.TemporaryDirectory(prefix="gpu-check-ddp-") as tmp:
        out = Path(tmp) / "ddp.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node=2", "-m", "bench.gpu_ddp_step", "--json", str(out),
                   *throughput_argv(args, cuda, shape, seconds_left)]
        print(f"\nDDP step: {' '.join(command[1:6])} ... (2 processes)", flush=True)
        try:
            done = subprocess.run(command, timeout=seconds_left, text=True,
                                  capture_output=True)
        except subprocess.TimeoutExpired:
            print("DDP step: FAILED (timed out)")
            return {"status": "failed", "reason": "timeout"}
        if done.returncode != 0 or not out.is_file():
            tail = (done.stdout + done.stderr)[-3000:]
            print(f"DDP step: FAILED (exit {done.returncode})\n{tail}")
            return {"status": "failed", "reason": f"exit {done.returncode}", "log_tail": tail}
        result = json.loads(out.read_text())
    print(f"DDP step ({result['world_size']} processes, {result['backend']}): "
          f"{result['tokens_per_second']:.1f} tokens/s over {result['steps']} steps, "
          f"data wait {100 * (result['data_wait_fraction'] or 0):.2f}% of step time")
    return {"status": "ran", **result}


def sync_check(cuda: bool, seconds_left: float) -> dict[str, Any]:
    """A real ``run_pretraining`` on the bundled demo corpus (crammed-bert, 4 layers; bf16 +
    compile on CUDA) whose steps after the first two run under
    ``torch.cuda.set_sync_debug_mode("error")``: any host sync inside a step fails it."""
    if seconds_left < 60:
        print("\nsync check: skipped (deadline)")
        return {"status": "skipped", "reason": "deadline"}
    from cramming.backend.hooks import TrainingHook
    from cramming.config import compose, load_pretrain_config
    from cramming.pretrain import run_pretraining

    class SyncDebug(TrainingHook):
        name = "sync_debug"

        def __init__(self) -> None:
            self.checked = 0
            self.step_seconds: list[float] = []
            self.wait_seconds: list[float] = []

        def before_step(self, trainer) -> None:
            if trainer.step >= 2 and cuda:
                torch.cuda.set_sync_debug_mode("error")

        def after_step(self, trainer, record) -> None:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
            if trainer.step > 2:
                self.checked += 1
                self.step_seconds.append(record["step_seconds"])
                self.wait_seconds.append(record["data_wait_seconds"])

    device = ["impl.device=cuda", "impl.precision=bf16", "impl.compile=true"] if cuda else \
        ["impl=cpu", "arch.num_layers=1", "arch.hidden_size=64", "arch.num_heads=2",
         "arch.intermediate_size=64", "data.vocab_size=512", "data.seq_length=32"]
    hook = SyncDebug()
    with tempfile.TemporaryDirectory(prefix="gpu-check-sync-") as tmp:
        overrides = ["name=sync-check", "data=demo", "arch=crammed-bert", "arch.num_layers=4",
                     "impl.microbatch_size=64", "train.batch_size=128",
                     "train.batch_size_ramp=0", "budget_kind=steps", "budget=12",
                     "train.log_every_steps=100", "train.validate_at_end=false",
                     "impl.progress_bar=false", f"base_dir={tmp}", *device]
        print(f"\n== sync check: run_pretraining {' '.join(overrides[:-len(device) - 1])} "
              f"{' '.join(device)}", flush=True)
        started = time.monotonic()
        try:
            summary = run_pretraining(load_pretrain_config(compose("pretrain", overrides)),
                                      Path(tmp) / "run", hooks=[hook])
        except Exception as error:  # reported, not raised: the check always finishes
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
            print(f"sync check: FAIL ({type(error).__name__}: {str(error)[:500]})")
            return {"status": "failed", "error": f"{type(error).__name__}: {error}"[:2000]}
    wait = sum(hook.wait_seconds) / max(sum(hook.step_seconds), 1e-9)
    verdict = f"PASS, {hook.checked} steps without a host sync (CUDA sync debug mode)" \
        if cuda else f"ran {hook.checked} steps (no CUDA: syncs not checked here)"
    print(f"sync check: {verdict}; final loss "
          f"{summary['final_loss']:.3f}; data wait {100 * wait:.2f}% of host step time; "
          f"{time.monotonic() - started:.0f} s")
    return {"status": "passed" if cuda else "ran", "steps_checked": hook.checked,
            "final_loss": summary["final_loss"], "data_wait_fraction": wait}


def gpu_goals(results: list[dict[str, Any]], cuda: bool) -> list[dict[str, Any]]:
    from bench.train_throughput import goal

    note = "" if cuda else "CPU fallback: the goals are for the GPU run"
    by_model = {r["model"]: r for r in results}
    crammed, hf = by_model.get("crammed"), by_model.get("hf-bert")
    mfu = crammed["mfu"] if crammed else None
    ratio = crammed.get("speedup_vs_hf") if crammed and hf else None
    wait = crammed["data_wait_fraction"] if crammed else None
    wait_note = note or ("" if wait is not None else
                         "the Trainer does not report data_wait_seconds / step_seconds")
    return [
        goal("crammed useful MFU vs measured peak", mfu, f">= {GOAL_MFU:.2f}",
             None if mfu is None else mfu >= GOAL_MFU, note),
        goal("crammed / HF BertForMaskedLM tokens/s", ratio, f">= {GOAL_VS_HF:.2f}",
             None if ratio is None else ratio >= GOAL_VS_HF, note),
        goal("crammed data wait / step time", wait, f"< {GOAL_WAIT:.2f}",
             None if wait is None else wait < GOAL_WAIT, wait_note),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.list_missing:
        print(" ".join(missing_packages()))
        return None
    started = time.monotonic()
    print("== environment")
    env = environment()
    cuda = torch.cuda.is_available() and not args.cpu
    from bench.common import PeakProbe, finish, machine_info, result_path, write_result

    info = machine_info()
    label = args.label or ("" if cuda else "cpu-fallback")
    if env["missing_packages"]:
        print(f"\nFAIL: missing Python packages: {' '.join(env['missing_packages'])} -- "
              "install them (offline: bench/gpu_check.sh installs wheels from "
              "$CRAMMING_WHEELS, default bench/.wheels); nothing was measured.")
        payload = finish("gpu_check", args, info, label, environment=env,
                         status="missing packages")
        if args.json:
            write_result(Path(args.json), payload)
        return payload
    from bench.train_throughput import measure, print_goals, print_results, summarize_results
    from bench.train_throughput import parse_args as throughput_args

    shape = dict(GPU_SHAPE if cuda else CPU_SHAPE)
    for key in shape:
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    defaults = (5, 3, 3) if cuda else (2, 1, 1)
    for key, value in zip(("repeats", "steps", "warmup"), defaults):
        if getattr(args, key) is None:
            setattr(args, key, value)
    if cuda:
        probe = PeakProbe(8192, repeats=5, dtype=torch.bfloat16, device="cuda", inner=10)
    else:
        torch.set_num_threads(1)
        probe = PeakProbe(256, repeats=3)
    budget = args.deadline - (time.monotonic() - started)
    measure_limit = budget * (0.45 if args.ddp != "off" and gpu_count() >= 2 else 0.6)
    targs = throughput_args(throughput_argv(args, cuda, shape, measure_limit))
    print(f"\n== throughput ({'CUDA, bf16' if cuda else 'CPU fallback, fp32'}, compile "
          f"{'on' if compile_on(args, cuda) else 'off'}): shape {shape}", flush=True)
    measured = measure(targs, probe)
    fraction = measured["predicted_fraction"]
    results = summarize_results(measured["contenders"], probe, targs)
    print_results(results, probe, fraction, targs)
    for kind, why in measured["failures"].items():
        print(f"  {kind}: {why}")
    ddp = ddp_step(args, cuda, shape, args.deadline - (time.monotonic() - started) - 15)
    syncs = sync_check(cuda, args.deadline - (time.monotonic() - started)) \
        if args.sync_check else {"status": "skipped", "reason": "--no-sync-check"}
    goals = gpu_goals(results, cuda)
    print_goals(goals)
    payload_fields = dict(environment=env, device="cuda" if cuda else "cpu", shape=shape,
                          throughput_args=vars(targs), predicted_fraction=fraction,
                          peak=probe.as_dict(), results=results,
                          failures=measured["failures"], ddp=ddp, sync_check=syncs,
                          goals=goals,
                          seconds=time.monotonic() - started)
    payload = finish("gpu_check", args, info, label, **payload_fields)
    if args.json:
        write_result(Path(args.json), payload)
        print(f"wrote {args.json}")
    elif args.no_save:
        print(f"(not saved; would be {result_path('gpu_check', info, label)})")
    print(f"gpu_check done in {time.monotonic() - started:.0f} s")
    return payload


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
