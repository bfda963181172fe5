"""DeepSpeed config files: find, read and check them at start-up (no torch, no deepspeed import).

``impl.deepspeed_config`` names a bundled file (``zero1``, ``zero2``, ``zero2_offload``,
``zero3``, ``zero3_offload`` in ``cramming/config/deepspeed/``) or a path to a user's JSON.
The file holds the ZeRO section and any other DeepSpeed option; batch sizes, clipping,
precision, optimizer and LR schedule come from the cramming config, so the run stays
comparable with the other backends and a value cannot be set in two places.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from cramming.config import CONFIG_DIR
from cramming.errors import ConfigError

BUNDLED_DIR = CONFIG_DIR / "deepspeed"

# Keys the engine fills from the cramming config (where to set them instead).
OWNED_KEYS = {
    "train_batch_size": "train.batch_size",
    "train_micro_batch_size_per_gpu": "impl.microbatch_size",
    "gradient_accumulation_steps": "train.batch_size / impl.microbatch_size",
    "gradient_clipping": "train.gradient_clipping",
    "optimizer": "train/optim=...",
    "scheduler": "train.warmup, train.cooldown, ... (the budget-aware schedule)",
    "fp16": "impl.precision",
    "bf16": "impl.precision",
}
OFFLOAD_DEVICES = ("none", "cpu", "nvme")


def bundled_configs() -> list[str]:
    return sorted(path.stem for path in BUNDLED_DIR.glob("*.json"))


def resolve_deepspeed_config(spec: str) -> Path:
    """The JSON file ``spec`` names: a bundled config name or a path."""
    bundled = BUNDLED_DIR / f"{spec}.json"
    if bundled.is_file():
        return bundled
    path = Path(spec).expanduser()
    if path.is_file():
        return path.resolve()
    raise ConfigError(
        f"impl.deepspeed_config={spec!r} is neither a bundled DeepSpeed config "
        f"({', '.join(bundled_configs())}) nor an existing file.")


def read_deepspeed_config(spec: str) -> dict:
    """Parse and check the DeepSpeed config ``spec`` names; ConfigError on any problem."""
    path = resolve_deepspeed_config(spec)
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"DeepSpeed config {path} must hold a JSON object.")
    owned = [key for key in config if key in OWNED_KEYS]
    if owned:
        where = "; ".join(f"{key} -> {OWNED_KEYS[key]}" for key in owned)
        raise ConfigError(
            f"DeepSpeed config {path} sets {', '.join(owned)}, which cramming sets from its "
            f"own config so every backend trains the same way. Remove them and use: {where}.")
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"DeepSpeed config {path}: zero_optimization must be an object.")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"DeepSpeed config {path}: zero_optimization.stage={stage!r}; "
                          f"allowed values are 0, 1, 2, 3.")
    for key in ("offload_optimizer", "offload_param"):
        if key not in zero:
            continue
        device = zero[key].get("device", "none") if isinstance(zero[key], dict) else None
        if device not in OFFLOAD_DEVICES:
            raise ConfigError(f"DeepSpeed config {path}: zero_optimization.{key}.device="
                              f"{device!r}; allowed values are {', '.join(OFFLOAD_DEVICES)}.")
    if offload_device(config, "offload_param") != "none" and stage != 3:
        raise ConfigError(f"DeepSpeed config {path}: offload_param needs ZeRO stage 3 "
                          f"(zero_optimization.stage is {stage}).")
    return config


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def offload_device(config: dict, key: str = "offload_optimizer") -> str:
    section = config.get("zero_optimization", {}).get(key) or {}
    return section.get("device", "none")


def require_deepspeed() -> None:
    """ConfigError with the install command when the deepspeed package is missing."""
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "impl.distributed=deepspeed needs DeepSpeed, which is not installed in this "
            "environment: pip install 'cramming[deepspeed]' (or pip install deepspeed), or "
            "use impl.distributed=ddp / impl.distributed=fsdp.")
