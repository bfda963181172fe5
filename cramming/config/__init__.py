"""Config loading: Hydra YAML -> validated, typed dataclasses.

``CONFIG_DIR`` holds the YAML groups. :func:`to_typed` turns a composed ``DictConfig``
into a schema dataclass and raises :class:`~cramming.errors.ConfigError` naming the key
and the allowed values on any unknown key, wrong type or invalid option.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from cramming.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent
PACKAGE_DIR = CONFIG_DIR.parent

T = TypeVar("T")


def package_path(relative: str) -> str:
    """Absolute path of a file shipped inside the ``cramming`` package."""
    return str(PACKAGE_DIR / relative)


def _is_true(value: object) -> bool:
    return str(value).lower() in ("true", "1", "yes")


def _reuse_or_stamp(root: Path, suffix: str, resume: object) -> str:
    """Name of the newest ``<stamp><suffix>`` folder in ``root`` when resuming, else a new one."""
    if (_is_true(resume) or str(resume).lower() == "auto") and root.is_dir():
        previous = sorted(p for p in root.glob(f"*_*{suffix}") if p.is_dir())
        if previous:
            return previous[-1].name
    return datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S") + suffix


def run_dir(base_dir: str, name: str, job: str, resume: object = False) -> str:
    """Folder of a run: ``<base_dir>/<name>/<job>/<date>_<time>``.

    With ``resume`` true or ``auto``, the newest existing run of that name is reused so
    its checkpoints, metrics and logs continue in place.
    """
    root = Path(base_dir).expanduser().resolve() / name / job
    return str(root / _reuse_or_stamp(root, "", resume))


def sweep_subdir(base_dir: str, name: str, job: str, num: object,
                 resume: object = False) -> str:
    """Folder of sweep job ``num`` under ``hydra.sweep.dir``: ``<name>/<job>/<stamp>_job<num>``.

    With ``resume`` true or ``auto``, the newest existing folder of that job number is
    reused: a SLURM job requeued after preemption (submitit re-runs the same job number)
    continues its checkpoint instead of starting over in a new folder.
    """
    root = Path(base_dir).expanduser().resolve() / name / job
    return str(Path(name) / job / _reuse_or_stamp(root, f"_job{num}", resume))


def register_resolvers() -> None:
    """Register the OmegaConf resolvers our YAML files use (idempotent)."""
    if not OmegaConf.has_resolver("package_path"):
        OmegaConf.register_new_resolver("package_path", package_path)
    if not OmegaConf.has_resolver("cramming_run_dir"):
        OmegaConf.register_new_resolver("cramming_run_dir", run_dir, use_cache=True)
    if not OmegaConf.has_resolver("cramming_sweep_subdir"):
        OmegaConf.register_new_resolver("cramming_sweep_subdir", sweep_subdir, use_cache=True)


def _allowed_keys(schema_node: object) -> str:
    if isinstance(schema_node, DictConfig):
        return ", ".join(str(k) for k in schema_node.keys())
    return "(none)"


def _closest(key: str, allowed: list[str]) -> str:
    match = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _nested_schema(schema: type, name: str) -> type | None:
    """The dataclass type of field ``name`` of ``schema`` (also inside ``X | None``)."""
    hint = typing.get_type_hints(schema).get(name)
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def check_override_keys(arguments: list[str], schema: type,
                        extra_top: tuple[str, ...] = ("hydra",)) -> None:
    """Refuse a command-line override of a key the schema does not have, in one line.

    ``key=value`` and ``group/option=value`` are checked through the schema's dataclasses,
    naming the allowed keys at the level that failed and the closest match (Hydra's own
    message names neither). Additions (``+key=value``) are left to :func:`to_typed`.
    """
    for argument in arguments:
        if argument.startswith(("-", "+")) or "=" not in argument:
            continue
        key = argument.split("=", 1)[0].lstrip("~").split("@", 1)[0]
        parts = [part for part in re.split(r"[./]", key) if part]
        if not parts or parts[0] in extra_top:
            continue
        node: type | None = schema
        for depth, part in enumerate(parts):
            names = [f.name for f in dataclasses.fields(node)]
            if depth == 0:
                names += list(extra_top)
            if part not in names:
                where = ".".join(parts[:depth])
                level = f"of {where}" if where else "(top level)"
                raise ConfigError(
                    f"Unknown config key '{key}'{_closest(part, names)}. Allowed keys "
                    f"{level}: {', '.join(names)}.")
            node = _nested_schema(node, part)
            if node is None:  # a value, dict or list: Hydra and the schema check the rest
                break


def to_typed(cfg: DictConfig | Mapping, schema: type[T], choices: Mapping[str, tuple] = ()) -> T:
    """Validate ``cfg`` against the dataclass ``schema`` and return a typed instance.

    ``choices`` maps dotted keys to their allowed values.
    """
    base = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(base, cfg)
    except ConfigKeyError as error:
        key = error.full_key or error.key
        parent = ".".join(str(key).split(".")[:-1])
        node = OmegaConf.select(base, parent) if parent else base
        allowed = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
        raise ConfigError(
            f"Unknown config key '{key}'{_closest(str(key).split('.')[-1], allowed)}. Allowed "
            f"keys{' of ' + parent if parent else ''}: {_allowed_keys(node)}"
        ) from None
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or getattr(error, "key", "?")
        message = str(error).splitlines()[0]
        raise ConfigError(f"Invalid value for config key '{key}': {message}") from None
    for key, allowed in dict(choices).items():
        value = OmegaConf.select(merged, key, throw_on_missing=False)
        if value not in allowed:
            raise ConfigError(
                f"Invalid value {key}={value!r}. Allowed values: {', '.join(map(str, allowed))}"
            )
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(f"Invalid configuration: {str(error).splitlines()[0]}") from None


register_resolvers()


def compose(config_name: str = "pretrain", overrides: list[str] | tuple[str, ...] = (),
            translate: bool = True) -> DictConfig:
    """Compose a config like the command line would, without starting a Hydra run.

    With ``translate``, NTNG's and Cramming's keys are first rewritten to ours
    (:mod:`cramming.config.foreign`), as the entry scripts do.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if translate:
        from cramming.config.foreign import translate_overrides

        overrides = translate_overrides(overrides, config_name)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    # Outside a Hydra run there is no hydra node to interpolate; drop it.
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    return cfg


def load_pretrain_config(cfg: DictConfig | Mapping):
    """Validate a composed pretraining config and return a typed ``PretrainConfig``."""
    from cramming.config.checks import check_pretrain_config
    from cramming.config.schema import CHOICES, PretrainConfig

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    typed = to_typed(cfg, PretrainConfig, CHOICES)
    check_pretrain_config(typed)
    return typed
