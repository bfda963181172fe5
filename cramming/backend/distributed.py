"""Data-parallel plumbing on torch.distributed: process group, sharding, rank-0 decisions.

Processes come from a real launcher — ``torchrun`` (env ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``), SLURM via Hydra's submitit launcher (``SLURM_PROCID``/``SLURM_NTASKS``) or
submitit's local executor (``SUBMITIT_LOCAL_*``) — never from this code. One process
without any of them is plain single-device training.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

_created_group = False  # init_distributed created the process group, so it tears it down


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, value: object) -> object:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def gather_objects(self, value: object) -> list[object] | None:
        """Every rank's ``value`` on rank 0 (None elsewhere)."""
        if not self.enabled:
            return [value]
        gathered = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def all_gather_objects(self, value: object) -> list[object]:
        """Every rank's ``value`` on every rank, in rank order."""
        if not self.enabled:
            return [value]
        gathered: list[object] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def sum_in_place(self, tensors: list[torch.Tensor]) -> None:
        """Each of ``tensors`` becomes its sum over all ranks (one flat all-reduce)."""
        if not self.enabled or not tensors:
            return
        flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for tensor, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            tensor.copy_(part.view_as(tensor))


def _first_slurm_host() -> str | None:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return None
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                               text=True, timeout=30, check=True).stdout.split()
        return hosts[0] if hosts else None
    except (OSError, subprocess.SubprocessError):
        return nodelist.split(",")[0].split("[")[0]


def export_slurm_environment() -> None:
    """Map SLURM task variables onto torch.distributed's env:// variables (multi-node)."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("MASTER_ADDR", _first_slurm_host() or "127.0.0.1")
    job_id = int(os.environ.get("SLURM_JOB_ID", "0"))
    os.environ.setdefault("MASTER_PORT", str(20000 + job_id % 20000))


def export_submitit_local_environment() -> None:
    """The same for submitit's local executor (``hydra/launcher=submitit_local``), which
    starts ``tasks_per_node`` processes on this machine."""
    if "RANK" in os.environ or int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) <= 1:
        return
    os.environ["RANK"] = os.environ["SUBMITIT_LOCAL_GLOBALID"]
    os.environ["WORLD_SIZE"] = os.environ["SUBMITIT_LOCAL_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ["SUBMITIT_LOCAL_LOCALID"]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    job_id = int(os.environ.get("SUBMITIT_LOCAL_JOB_ID", "0"))  # the tasks' parent pid
    os.environ.setdefault("MASTER_PORT", str(20000 + job_id % 20000))


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group the launcher set up (nccl on CUDA, gloo on CPU)."""
    global _created_group
    export_slurm_environment()
    export_submitit_local_environment()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # CPU tensors (step agreement, object collectives) go over gloo, CUDA tensors over NCCL.
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo")
        _created_group = True
    log.info("Process %d of %d (local rank %d, %s)", rank, world_size, local_rank,
             dist.get_backend())
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


@dataclass(frozen=True)
class StepDecision:
    progress: float  # rank 0's budget progress
    exhausted: bool  # rank 0's clock says the budget is spent
    save: bool  # rank 0 says a checkpoint is due
    interrupted: bool  # any rank received SIGTERM / SIGUSR1


def agree_on_step(progress: float, exhausted: bool, save: bool, interrupted: bool,
                  context: DistributedContext) -> StepDecision:
    """One all-reduce per step so every rank follows the same schedule and stops together.

    Clocks (wall time especially) drift between ranks; rank 0's reading is the one that
    counts. A signal on any rank stops all of them.
    """
    if not context.enabled:
        return StepDecision(progress, exhausted, save, interrupted)
    main = 1.0 if context.is_main else 0.0
    values = torch.tensor([progress * main, float(exhausted) * main, float(save) * main,
                           float(interrupted)], dtype=torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return StepDecision(float(values[0]), bool(values[1]), bool(values[2]), bool(values[3]))


def mean_across_ranks(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if not context.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / context.world_size


@contextlib.contextmanager
def _fsdp_no_sync(model: torch.nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def no_sync_unless(last: bool, model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce (DDP) / reduce-scatter (FSDP2) on all but the last
    microbatch of a step."""
    if last:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


def _full_state_options(strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, strict=strict)


def shard_model(model: torch.nn.Module) -> None:
    """FSDP2: shard every transformer layer, then the rest (embeddings, head) at the root."""
    from torch.distributed.fsdp import fully_shard

    for layer in getattr(model, "layers", []):
        fully_shard(layer)
    fully_shard(model)


def full_model_state(model: torch.nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """Consolidated (unsharded) weights; collective when ``sharded``."""
    if not sharded:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_state_options())


def load_full_model_state(model: torch.nn.Module, weights: dict, sharded: bool) -> None:
    if not sharded:
        model.load_state_dict(weights, strict=False)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, weights, options=_full_state_options())


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Optimizer state keyed by parameter name and unsharded, whatever the backend, so a
    checkpoint resumes on one process, under DDP or under FSDP (collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_state_options())


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    # not strict: parameters without state when saved (layers a stacking run has not grown
    # into yet, or whose moments it reset) stay without state, as they were
    set_optimizer_state_dict(model, optimizer, state, options=_full_state_options(strict=False))


def release_distributed() -> None:
    """Destroy the process group if :func:`init_distributed` created it (end of a run)."""
    global _created_group
    if _created_group:
        _created_group = False
        cleanup_distributed()


def cleanup_distributed() -> None:
    """Destroy the process group, then wait until gloo's worker threads are idle.

    Without this a rank can abort at exit (SIGABRT, 'terminate called without an active
    exception'): a gloo worker frees the last collective's work, whose tensors belong to
    Python, only just after the main thread moved on; if the interpreter is finalizing by
    then, taking the GIL ends the thread with ``pthread_exit``, and that unwinding through
    a noexcept destructor calls ``std::terminate``. Destroying the group does not join
    those threads while anything (e.g. DDP) still holds the group, hence the wait.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    wait_for_idle_gloo_workers()


GLOO_WORKER = "pt_gloo_runloop"  # torch's name for ProcessGroupGloo's worker threads


def _thread_states(name: str) -> dict[str, tuple[str, str]] | None:
    """State and CPU ticks of this process's threads called ``name`` (None without /proc)."""
    states = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue  # the thread has just ended
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
        if comm == name:
            values = fields.split()
            states[task] = (values[0], values[11] + "/" + values[12])  # state, utime/stime
    return states


def wait_for_idle_gloo_workers(timeout: float = 5.0, quiet_polls: int = 3) -> bool:
    """Wait, with the GIL released, until every gloo worker thread sleeps unchanged for
    ``quiet_polls`` polls in a row; a worker that wants the GIL is woken while the main
    thread sleeps, so it cannot sleep unchanged. False on timeout (or without /proc)."""
    deadline, quiet, last = time.monotonic() + timeout, 0, None
    while time.monotonic() < deadline:
        states = _thread_states(GLOO_WORKER)
        if states is None:
            return False
        if not states:
            return True
        if all(state == "S" for state, _ in states.values()) and states == last:
            quiet += 1
            if quiet >= quiet_polls:
                return True
        else:
            quiet = 0
        last = states
        time.sleep(0.005)
    log.warning("gloo worker threads still busy %.0f s after the process group was "
                "destroyed", timeout)
    return False


atexit.register(cleanup_distributed)  # atexit runs before finalization: the safety net
