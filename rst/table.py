"""RST tables: versioned JSON files of reference timings, and their lookup.

A table holds, for one (device, architecture hash, vocabulary size, sequence length,
microbatch size), the seconds one full microbatch takes per pass kind and number of active
layers, plus the seconds of one optimizer step per optimizer::

    {"format": "cramming-rst-table", "version": 2, "device": "rtx3090", "arch": "bert-c5",
     "arch_hash": "...", "vocab_size": 32768, "seq_length": 128, "microbatch_size": 128,
     "microbatch_scaling": "linear" | "none", "num_layers": 16,
     "seconds": {"train": {"1": ..., "16": ...}, "forward": {"16": ...}},
     "optimizer_step": {"adamw": ..., "*": ...}, "source": "...", "notes": [...]}

Lookup rules (see :meth:`RSTTable.seconds`): exact entries are used as they are; a missing
layer count between two measured ones is interpolated linearly; a kind measured at a single
depth borrows the depth profile of the ``train`` row; anything else (another device, arch,
sequence length, microbatch size without ``linear`` scaling, a depth outside the measured
range) raises :class:`~cramming.errors.ConfigError` naming what is available.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from cramming.config.schema import ArchConfig
from cramming.errors import ConfigError

TABLE_FORMAT = "cramming-rst-table"
TABLES_DIR = Path(__file__).resolve().parent / "tables"
PASS_KINDS = ("train", "forward")
# Fields that do not change the cost of a pass.
_HASH_EXCLUDED = ("name", "init_std")
# Always hashed. Any other (newer) ArchConfig field is hashed only when it differs from its
# default, so adding a field to the schema does not invalidate existing tables.
_CORE_FIELDS = (
    "model_type", "num_layers", "hidden_size", "num_heads", "intermediate_size",
    "max_seq_length", "norm", "norm_eps", "norm_scheme", "final_norm", "embedding_norm",
    "linear_bias", "ffn", "activation", "position_embedding", "tie_weights", "prediction_head",
    "sparse_prediction", "fixed_masked_fraction", "dropout", "attention_dropout",
    "type_vocab_size", "attention_impl")


def arch_fields(arch: ArchConfig) -> dict:
    """The fields of ``arch`` that identify its compute (see ``_CORE_FIELDS``)."""
    defaults = dataclasses.asdict(ArchConfig())
    return {k: v for k, v in dataclasses.asdict(arch).items()
            if k not in _HASH_EXCLUDED and (k in _CORE_FIELDS or v != defaults.get(k))}


def arch_hash(arch: ArchConfig) -> str:
    """Short stable hash of everything in ``arch`` that changes the compute of a pass."""
    encoded = json.dumps(arch_fields(arch), sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_name(device: str = "auto") -> str:
    """Table device name of this machine: ``cuda-<gpu>`` or ``cpu-<cpu model>``."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda-" + _slug(torch.cuda.get_device_name(0))
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1]
                break
    except OSError:
        pass
    return "cpu-" + _slug(model)


@dataclass
class RSTTable:
    """One table file; see the module docstring for the format and lookup rules."""

    path: Path
    device: str
    arch: str
    arch_hash: str
    vocab_size: int
    seq_length: int
    microbatch_size: int
    microbatch_scaling: str
    num_layers: int
    seconds_by_kind: dict[str, dict[int, float]]
    optimizer_step: dict[str, float]
    version: int = 1

    @property
    def identity(self) -> str:
        """What a checkpoint records: resuming under another table is refused."""
        return (f"{self.device}/{self.arch_hash}/v{self.version}/mb{self.microbatch_size}"
                f"/L{self.seq_length}")

    def describe(self) -> str:
        return (f"{self.path.name}: device={self.device} arch={self.arch} "
                f"(hash {self.arch_hash}) vocab={self.vocab_size} seq_length={self.seq_length} "
                f"microbatch_size={self.microbatch_size} ({self.microbatch_scaling} scaling)")

    def _depth_seconds(self, kind: str, layers: int) -> float:
        row = self.seconds_by_kind.get(kind)
        if not row:
            raise ConfigError(f"RST table {self.path.name} has no '{kind}' timings.")
        if layers in row:
            return row[layers]
        depths = sorted(row)
        if len(depths) == 1:
            train = self.seconds_by_kind.get("train", {})
            (ref,) = depths
            if kind != "train" and layers in train and ref in train:
                return row[ref] * train[layers] / train[ref]
            raise ConfigError(f"RST table {self.path.name} has '{kind}' timings only for "
                              f"{ref} layers; cannot estimate {layers} layers.")
        if not depths[0] <= layers <= depths[-1]:
            raise ConfigError(f"RST table {self.path.name} covers {depths[0]}..{depths[-1]} "
                              f"active layers for '{kind}', not {layers}.")
        upper = next(d for d in depths if d > layers)
        lower = max(d for d in depths if d < layers)
        weight = (layers - lower) / (upper - lower)
        return row[lower] + weight * (row[upper] - row[lower])

    def zero_layer_seconds(self, kind: str) -> float | None:
        """Seconds of a full microbatch through no layer (embedding, head, loss, overhead).

        A measured ``"0"`` entry, else the linear extrapolation of the two shallowest
        measured depths (a kind measured at one depth borrows the ``train`` row's profile);
        None when neither gives a positive time (the clock then estimates it from FLOPs).
        """
        row = self.seconds_by_kind.get(kind) or {}
        if 0 in row:
            return row[0]
        depths = sorted(row)
        if len(depths) >= 2:
            low, high = depths[0], depths[1]
            zero = row[low] - low * (row[high] - row[low]) / (high - low)
        elif len(depths) == 1 and kind != "train":
            train_zero, train = self.zero_layer_seconds("train"), self.seconds_by_kind["train"]
            ref = depths[0]
            if train_zero is None or ref not in train:
                return None
            zero = row[ref] * train_zero / train[ref]
        else:
            return None
        return zero if zero > 0 else None

    def shallowest_depth(self, kind: str) -> int:
        """The fewest active layers with a timing for ``kind``."""
        row = self.seconds_by_kind.get(kind)
        if not row:
            raise ConfigError(f"RST table {self.path.name} has no '{kind}' timings.")
        return min(row)

    def microbatch_seconds(self, kind: str, layers: int, microbatch_size: int) -> float:
        """Reference seconds of one full microbatch of ``microbatch_size`` sequences.

        ``layers=0`` (every layer dropped) is :meth:`zero_layer_seconds`: never free.
        """
        if layers == 0:
            seconds = self.zero_layer_seconds(kind)
            if seconds is None:
                raise ConfigError(f"RST table {self.path.name} gives no positive '{kind}' time "
                                  f"for 0 active layers; measure it with `python -m rst.measure "
                                  f"--layers 1,2,...`.")
        else:
            seconds = self._depth_seconds(kind, layers)
        if microbatch_size == self.microbatch_size:
            return seconds
        if self.microbatch_scaling == "linear":
            return seconds * microbatch_size / self.microbatch_size
        raise ConfigError(f"RST table {self.path.name} was measured at microbatch_size="
                          f"{self.microbatch_size}, not {microbatch_size}; measure one with "
                          f"`python -m rst.measure impl.microbatch_size={microbatch_size}`.")

    def step_seconds(self, optimizer: str) -> float:
        """Reference seconds of one optimizer step of ``optimizer``."""
        if optimizer in self.optimizer_step:
            return self.optimizer_step[optimizer]
        if "*" in self.optimizer_step:
            return self.optimizer_step["*"]
        raise ConfigError(f"RST table {self.path.name} has no optimizer-step timing for "
                          f"'{optimizer}' (has: {', '.join(self.optimizer_step)}).")


def load_table(path: str | Path) -> RSTTable:
    """Read and validate one table file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"Cannot read RST table {path}: {error}") from None
    if data.get("format") != TABLE_FORMAT:
        raise ConfigError(f"{path} is not an RST table (format != {TABLE_FORMAT}).")
    try:
        seconds = {kind: {int(k): float(v) for k, v in row.items()}
                   for kind, row in data["seconds"].items()}
        return RSTTable(
            path=path, device=data["device"], arch=data["arch"], arch_hash=data["arch_hash"],
            vocab_size=int(data["vocab_size"]), seq_length=int(data["seq_length"]),
            microbatch_size=int(data["microbatch_size"]),
            microbatch_scaling=data.get("microbatch_scaling", "none"),
            num_layers=int(data["num_layers"]), seconds_by_kind=seconds,
            optimizer_step={k: float(v) for k, v in data["optimizer_step"].items()},
            version=int(data.get("version", 1)))
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"RST table {path} is malformed: {error!r}") from None


def table_files(tables_dir: str | Path | None = None) -> list[Path]:
    """Shipped tables plus those in ``tables_dir``."""
    folders = [TABLES_DIR] + ([Path(tables_dir)] if tables_dir else [])
    return sorted(p for folder in folders if folder.is_dir() for p in folder.glob("*.json"))


def find_table(device: str, arch: ArchConfig, seq_length: int, microbatch_size: int,
               tables_dir: str | Path | None = None, table: str | Path | None = None,
               vocab_size: int | None = None) -> RSTTable:
    """The table for this configuration, or a ConfigError listing the available ones."""
    device, digest = device_name(device), arch_hash(arch)
    candidates = [load_table(table)] if table else [load_table(p) for p in
                                                    table_files(tables_dir)]
    matches = [t for t in candidates if t.device == device and t.arch_hash == digest
               and t.seq_length == seq_length
               and (t.microbatch_size == microbatch_size or t.microbatch_scaling == "linear")
               and (vocab_size is None or t.vocab_size == vocab_size)]
    if not matches:
        available = "\n  ".join(t.describe() for t in candidates) or "(none)"
        raise ConfigError(
            f"No RST table for device={device}, arch={arch.name} (hash {digest}), "
            f"seq_length={seq_length}, microbatch_size={microbatch_size}"
            f"{'' if vocab_size is None else f', vocab={vocab_size}'}. Available:\n  "
            f"{available}\nMeasure one on this machine with `python -m rst.measure "
            f"arch={arch.name} impl.microbatch_size={microbatch_size} ...` and pass "
            f"rst.tables_dir=<folder>, or choose rst.device=<a device above>.")
    exact = [t for t in matches if t.microbatch_size == microbatch_size]
    return max(exact or matches, key=lambda t: t.version)
