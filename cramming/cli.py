"""Shared plumbing of the command-line entry points (kept free of heavy imports).

The config is validated before torch, transformers or datasets are imported, so a bad
override fails within a second or two instead of after the imports.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig

from cramming.errors import CrammingError

T = TypeVar("T")
log = logging.getLogger("cramming")


def exit_on_error(function: Callable[..., T], *args, **kwargs) -> T:
    """Run ``function``; report a :class:`CrammingError` as one clear line and exit 2."""
    try:
        return function(*args, **kwargs)
    except CrammingError as error:
        _log_to_files(f"error: {error}")
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _log_to_files(message: str) -> None:
    """Record ``message`` in the run's log files only: the console already gets one line."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    logger: logging.Logger | None = log
    while logger is not None:
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        logger = logger.parent if logger.propagate else None


def hydra_output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def pretrain_main(raw_cfg: DictConfig) -> dict:
    """Entry of ``pretrain_bert.py``: validate, then pretrain in Hydra's output folder."""
    from cramming.config import load_pretrain_config

    cfg = exit_on_error(load_pretrain_config, raw_cfg)
    from cramming.backend.distributed import cleanup_distributed
    from cramming.pretrain import run_pretraining

    try:
        return exit_on_error(run_pretraining, cfg, hydra_output_dir())
    except KeyboardInterrupt:  # Ctrl-C: the engine has written a checkpoint unless pressed twice
        print("interrupted (Ctrl-C); continue with resume=true", file=sys.stderr)
        sys.exit(130)
    finally:
        cleanup_distributed()


def check_command_line(arguments: list[str]) -> None:
    """Pretraining overrides: known keys, and a writable ``base_dir`` with free space."""
    from omegaconf import OmegaConf

    from cramming.config import CONFIG_DIR, check_override_keys
    from cramming.config.checks import check_writable_dir
    from cramming.config.schema import PretrainConfig

    check_override_keys(arguments, PretrainConfig)
    given = [arg.split("=", 1)[1] for arg in arguments
             if arg.lstrip("+").startswith("base_dir=")]
    base_dir = given[-1] if given else OmegaConf.load(CONFIG_DIR / "pretrain.yaml").base_dir
    if "," not in str(base_dir) and "${" not in str(base_dir):  # not a sweep or interpolation
        check_writable_dir(str(base_dir), "base_dir")


def translate_argv(config_name: str) -> list[str]:
    """Rewrite NTNG's / Cramming's keys in ``sys.argv`` to ours (one log line each).

    Returns the new arguments; a foreign key with no meaning here exits 2 with one line.
    """
    from cramming.config.foreign import translate_overrides

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # before Hydra's logging
    try:
        sys.argv[1:] = translate_overrides(sys.argv[1:], config_name)
    except CrammingError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    return sys.argv[1:]


def preset_overrides(preset: dict[str, str], arguments: list[str]) -> list[str]:
    """``group=option`` overrides of an entry script's ``preset`` not typed in ``arguments``."""
    return [f"{key}={value}" for key, value in preset.items()
            if not any(arg.lstrip("+~").startswith(f"{key}=") for arg in arguments)]


def launch_pretraining(preset: dict[str, str] | None = None) -> None:
    """Run ``pretrain_bert.py``'s Hydra CLI, with ``preset`` group choices as defaults.

    The method-specific entry points pass e.g. ``{"method": "selective_backprop"}``; an
    explicit choice on the command line wins.
    """
    import hydra

    from cramming.config import CONFIG_DIR, register_resolvers

    register_resolvers()
    script = Path(sys.argv[0]).stem
    arguments = translate_argv("pretrain")
    try:  # before Hydra, which reports unknown keys without the allowed ones and creates
        check_command_line(arguments)  # the run folder under base_dir first
    except CrammingError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    additions = preset_overrides(preset or {}, arguments)
    if not any(arg.startswith("hydra.job.name=") for arg in arguments):
        additions.append(f"hydra.job.name={script}")  # log file <script>.log, not cli.log
    # Hydra reads overrides as one run of positional arguments: join that run (after
    # flags such as -m), never split it.
    overrides = [i for i, arg in enumerate(arguments) if "=" in arg and not arg.startswith("-")]
    at = overrides[0] if overrides else len(arguments)
    arguments[at:at] = additions
    sys.argv[1:] = arguments
    hydra.main(config_path=str(CONFIG_DIR), config_name="pretrain",
               version_base=None)(pretrain_main)()


def eval_main(raw_cfg: DictConfig) -> None:
    """Entry of ``eval.py``: fine-tune and score the run ``raw_cfg`` names; exit 1 on errors."""
    from cramming.evaluation import load_checkpoint_for_eval, run_evaluation, validate_eval_config
    from cramming.evaluation.results import markdown_table

    try:
        typed = validate_eval_config(raw_cfg)
        out_dir = hydra_output_dir()
        encoder, tokenizer, folder = load_checkpoint_for_eval(typed)
        log.info("Evaluating %s on %s", folder, ", ".join(typed.eval.tasks))
        results = run_evaluation(typed, out_dir, encoder, tokenizer, model_folder=str(folder))
    except CrammingError as error:
        log.error("%s", error)
        sys.exit(1)
    print("\n" + markdown_table(results))
    print(f"Results written to {out_dir}/results.json and results.md")


def launch_eval() -> None:
    """Run ``eval.py``'s Hydra CLI (NTNG's / Cramming's keys translated first)."""
    import hydra

    from cramming.config import CONFIG_DIR, register_resolvers

    register_resolvers()
    translate_argv("eval")
    hydra.main(config_path=str(CONFIG_DIR), config_name="eval", version_base=None)(eval_main)()
