"""DeepSpeed backend: the DeepSpeed engine (ZeRO stage 0-3, CPU offload) behind the trainer.

The budget-aware schedules, batch-size ramp and stop decisions stay in the trainer, so a
DeepSpeed run follows the same schedule as a DDP run: the engine's accumulation boundary is
set per microbatch, the learning rate per step, and precision is torch autocast over fp32
master weights. Checkpoints hold DeepSpeed's own (per-rank) files for an exact resume next
to the consolidated ``model.safetensors`` that ``eval.py`` loads.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from cramming.backend.checkpoint import MANIFEST, atomic_folder
from cramming.backend.distributed import DistributedContext
from cramming.backend.optimizers import build_optimizer, parameter_groups
from cramming.backend.runtime import Runtime
from cramming.backend.strategy import Strategy
from cramming.config.deepspeed_config import (
    offload_device,
    read_deepspeed_config,
    require_deepspeed,
    zero_stage,
)
from cramming.config.schema import PretrainConfig
from cramming.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

SHARDS_FOLDER = "deepspeed"
SHARDS_TAG = "state"


# DeepSpeed reads its files with torch.load(weights_only=False) (its checkpoint engine, the
# universal-checkpoint loader, ds_to_universal). So before any of them sees a file: resume
# has checked the whole checkpoint against our manifest (sha256 of every file we wrote, so
# nothing damaged), and check_pickles() opens every pickle with weights_only=True (mmap: no
# tensor data is read), allowing only the plain DeepSpeed types below. A file needing
# anything else is refused; the same bytes can then reach no other code when DeepSpeed
# unpickles them.
def _deepspeed_safe_types() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def check_pickles(folder: Path) -> None:
    """Load each pickle under ``folder`` with ``weights_only=True`` and the DeepSpeed types
    above; CheckpointError (one line) naming the first file that needs anything more."""
    with torch.serialization.safe_globals(_deepspeed_safe_types()):
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
            with open(file, "rb") as handle:
                magic = handle.read(4)
            if file.suffix != ".pt" and magic != b"PK\x03\x04" and magic[:1] != b"\x80":
                continue  # text and scripts; DeepSpeed loads only its .pt files
            try:
                torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as error:  # noqa: BLE001 - unpickling and zip errors alike
                reason = next((line.strip() for line in str(error).splitlines()
                               if "Unsupported" in line), str(error).strip().split("\n")[0])
                raise CheckpointError(
                    f"Refusing to hand {file} to DeepSpeed: it does not load with "
                    f"weights_only=True ({reason[:160]}).") from None


def _import_deepspeed(device_type: str):
    """deepspeed, with its accelerator following ``impl.device`` unless DS_ACCELERATOR is set."""
    require_deepspeed()
    os.environ.setdefault("DS_ACCELERATOR", device_type)
    import deepspeed

    return deepspeed


def _join_single_process_group(device_type: str) -> None:
    """DeepSpeed needs a process group even on one process; an in-memory one needs no port."""
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)  # DeepSpeed reads these, as set by torchrun
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                store=dist.HashStore(), rank=0, world_size=1)


def engine_config(cfg: PretrainConfig, world_size: int) -> dict:
    """The user's DeepSpeed file plus what the cramming config decides."""
    config = read_deepspeed_config(cfg.impl.deepspeed_config)
    micro = cfg.impl.microbatch_size
    config.update(
        # The trainer sets the accumulation boundary itself (the batch size ramps), so the
        # engine sees one microbatch per "batch"; gradients are averaged over ranks.
        train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=1,
        train_batch_size=micro * world_size,
        gradient_clipping=float(cfg.train.gradient_clipping or 0.0),
        zero_allow_untested_optimizer=True)
    config.setdefault("steps_per_print", 10**9)
    return config


class DeepSpeedStrategy(Strategy):
    """Forward, backward and optimizer step through ``deepspeed.initialize``'s engine."""

    can_stop_mid_step = False  # the accumulation boundary is declared before the backward
    writes_shards = True

    def __init__(self, cfg: PretrainConfig, model: nn.Module, runtime: Runtime,
                 context: DistributedContext):
        deepspeed = _import_deepspeed(runtime.device.type)
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator().device_name()
        if accelerator != runtime.device.type:
            raise ConfigError(
                f"DeepSpeed's accelerator is {accelerator!r} but the run uses "
                f"impl.device={runtime.device.type}. DeepSpeed supports cuda and cpu here: "
                f"unset DS_ACCELERATOR, or choose impl.device={accelerator}.")
        if not context.enabled:
            _join_single_process_group(runtime.device.type)
        self.config = engine_config(cfg, context.world_size)
        self.stage = zero_stage(self.config)
        model = model.to(runtime.device)
        optimizer = self._client_optimizer(model, cfg, runtime)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.config, dist_init_required=False)
        if cfg.impl.compile:
            self.engine.compile()
        self.model = self.engine.module
        self.forward_model = self.engine
        self.shards_parameters = self.stage == 3
        self.context = context
        log.info("DeepSpeed %s: ZeRO stage %d, optimizer offload %s, %s", deepspeed.__version__,
                 self.stage, offload_device(self.config), type(self.optimizer).__name__)

    def _client_optimizer(self, model: nn.Module, cfg: PretrainConfig,
                          runtime: Runtime) -> torch.optim.Optimizer:
        """The run's optimizer; Adam(W) becomes DeepSpeedCPUAdam when it is offloaded."""
        optim = cfg.train.optim
        if offload_device(self.config) == "none":
            return build_optimizer(model, optim, runtime.device)
        if optim.name in ("adam", "adamw"):
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(parameter_groups(model, optim.weight_decay), lr=optim.lr,
                                    betas=tuple(optim.betas), eps=optim.eps,
                                    adamw_mode=optim.name == "adamw")
        # DeepSpeed prefers its own CPU optimizers under offload; ours run on the CPU too.
        self.config["zero_force_ds_cpu_optimizer"] = False
        return build_optimizer(model, optim, torch.device("cpu"))

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    def microbatch_context(self, last: bool) -> contextlib.AbstractContextManager:
        self.engine.set_gradient_accumulation_boundary(last)
        return super().microbatch_context(last)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def rescale_gradients(self, factor: float) -> None:
        raise RuntimeError("DeepSpeed steps always finish their microbatches.")

    def apply_gradients(self, clip_norm: float | None) -> float | None:
        self.engine.step()
        norm = self.engine.get_global_grad_norm() if clip_norm else None
        return None if norm is None else float(norm)

    def state_dict(self) -> dict:
        return {"optimizer": None, "deepspeed_zero_stage": self.stage}  # in the shard files

    def load_state_dict(self, state: dict) -> None:
        """Everything was restored with the weights (:meth:`load_weights`)."""

    def model_weights(self) -> dict[str, torch.Tensor]:
        if self.stage < 3:
            return self.model.state_dict()
        import deepspeed

        # Collective: every rank gathers the partitions; tied tensors stay tied.
        with deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None):
            copies: dict[int, torch.Tensor] = {}
            return {name: copies.setdefault(value.data_ptr(), value.detach().cpu().clone())
                    for name, value in self.model.state_dict().items()}

    def save_shards(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder / SHARDS_FOLDER), tag=SHARDS_TAG,
                                    save_latest=False)

    def load_weights(self, folder: Path, saved_world_size: int) -> None:
        shards = folder / SHARDS_FOLDER
        if not (shards / SHARDS_TAG).is_dir():
            raise CheckpointError(
                f"{folder} has no DeepSpeed state ({shards / SHARDS_TAG}): it was written by "
                f"another backend. Resume it with that backend (impl.distributed=ddp/fsdp).")
        check_pickles(shards)
        reshard = saved_world_size != self.context.world_size and self.stage > 0
        if reshard:
            if self.context.is_main:
                log.warning("DeepSpeed checkpoint written with %d process(es), resumed with "
                            "%d: its ZeRO partitions are converted to DeepSpeed's universal "
                            "format and re-partitioned.", saved_world_size,
                            self.context.world_size)
            shards = universal_checkpoint(shards, self.context)
            check_pickles(shards)
        config = self.engine._config  # DeepSpeed reads this flag when loading, not before
        config.load_universal_checkpoint, before = reshard, config.load_universal_checkpoint
        try:
            loaded, _ = self.engine.load_checkpoint(
                str(shards), tag=SHARDS_TAG, load_optimizer_states=True,
                load_lr_scheduler_states=False)
        finally:
            config.load_universal_checkpoint = before
        if loaded is None:
            raise CheckpointError(f"DeepSpeed could not load its state from {shards}.")


def universal_checkpoint(shards: Path, context: DistributedContext) -> Path:
    """DeepSpeed's universal (world-size independent) form of ``shards``, made once by
    rank 0 with ``deepspeed.checkpoint.ds_to_universal`` and kept next to it."""
    target = shards.with_name(f"{SHARDS_FOLDER}-universal")
    if context.is_main and not target.is_dir():
        from deepspeed.checkpoint import ds_to_universal

        def convert(tmp: Path) -> None:
            # The arguments of ``python -m deepspeed.checkpoint.ds_to_universal``; our
            # checkpoints lack Megatron's client state, which the converter then injects.
            namespace = argparse.Namespace(
                input_folder=str(shards / SHARDS_TAG), output_folder=str(tmp / SHARDS_TAG),
                num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                strict=True, inject_missing_state=True)
            ds_to_universal.main(namespace)

        atomic_folder(target, convert)
    context.barrier()
    return target
