"""NTNG's and Cramming's command-line keys, translated to ours.

Commands from "No Train No Gain" (JeanKaddour/NoTrainNoGain, bert/README.md) and from
Cramming (JonasGeiping/cramming, README.md) run as typed: :func:`translate_overrides` rewrites
every key they use that this project spells differently, logging one line per key
("NTNG key X is Y here"). A key with no meaning here stops the run with one line that names
our equivalent. Keys this project shares with them pass through untouched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

from cramming.errors import ConfigError

log = logging.getLogger("cramming.foreign")

# NTNG's train.steps when `budget=steps` is given without it
# (JeanKaddour/NoTrainNoGain, bert/cramming/config/train/bert-o3.yaml): steps: 2000000
NTNG_DEFAULT_STEPS = 2_000_000

# Preset names as NTNG / Cramming spell them -> ours (group, their option) -> our option.
GROUP_ALIASES: dict[tuple[str, str], str] = {
    # NTNG's bookcorpus-wikipedia.yaml is named bookcorpus-wikitext inside; both select ours
    ("data", "bookcorpus-wikipedia"): "bookcorpus-wikitext",
}

# A rule returns our overrides for one foreign ``key=value``, or None after logging its own line.
Rule = Callable[[str, dict[str, str]], "list[str] | None"]

# The groups NTNG's cfg_pretrain.yaml selects that differ from ours; NTNG's own entry scripts
# (pretrain_bert_sb.py, pretrain_bert_rho_loss.py, pretrain_bert_sophia.py) preselect them.
# (JeanKaddour/NoTrainNoGain, bert/cramming/config/cfg_pretrain.yaml): arch bert-c5, train bert-o3
NTNG_SETUP = {"arch": "bert-c5", "train": "bert-o3"}


def _bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ConfigError(f"{key}={value} must be true or false.")


def _rename(ours: str) -> Rule:
    return lambda value, _: [f"{ours}={value}"]


def _flag(ours: str, invert: bool = False) -> Rule:
    def rule(value: str, _: dict[str, str]) -> list[str]:
        return [f"{ours}={str(_bool(ours, value) != invert).lower()}"]
    return rule


def _precision(value: str, _: dict[str, str]) -> list[str]:
    dtypes = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float": "fp32"}
    if value not in dtypes:
        raise ConfigError(f"impl.mixed_precision_target_dtype={value}: use impl.precision="
                          f"bf16|fp16|fp32 here.")
    return [f"impl.precision={dtypes[value]}"]


def _mixed_precision(value: str, _: dict[str, str]) -> list[str]:
    return [] if _bool("impl.mixed_precision", value) else ["impl.precision=fp32"]


def _optimizer_state(value: str, _: dict[str, str]) -> list[str]:
    state = "copy" if _bool("train.stacking.copy_optim_states", value) else "keep"
    return [f"method.stacking.optimizer_state={state}"]


def _growth(value: str, _: dict[str, str]) -> list[str]:
    growth = "double" if _bool("train.stacking.doubling", value) else "add"
    return [f"method.stacking.growth={growth}"]


def _il_model(value: str, _: dict[str, str]) -> list[str]:
    return ["method=il_model"] if _bool("train.validation_set.il_model", value) else []


def _shuffle(value: str, _: dict[str, str]) -> None:
    if not _bool("impl.shuffle_in_dataloader", value):
        raise ConfigError("impl.shuffle_in_dataloader=false has no equivalent here: training "
                          "rows and fine-tuning examples are always shuffled by seed; drop it.")
    log.warning("NTNG/Cramming key impl.shuffle_in_dataloader=%s is always on here (rows and "
                "fine-tuning examples are shuffled by seed): nothing to set", value)


def _il_losses(value: str, _: dict[str, str]) -> list[str]:
    """A file is used as is; a folder holds ours (il_losses.npz) or NTNG's pickled chunks
    (``dict_chunk_<n>.pkl``, also one folder down, as NTNG's tar unpacks), converted once."""
    path = Path(value).expanduser()
    if path.is_dir():
        ours = path / "il_losses.npz"
        if not ours.is_file():
            from ntng_assets.download_il_losses import convert

            folders = sorted({chunk.parent for chunk in path.rglob("*.pkl")})
            if len(folders) != 1:
                raise ConfigError(f"train.rho_loss.il_losses_path={value} holds neither "
                                  f"il_losses.npz nor one folder of NTNG's .pkl chunks; pass "
                                  f"method.rho_loss.il_losses=<file.npz>.")
            convert(folders[0], ours)
            log.warning("Converted NTNG's irreducible-loss chunks in %s to %s", folders[0], ours)
        path = ours
    return [f"method.rho_loss.il_losses={path}"]


def _checkpoint(value: str, _: dict[str, str]) -> None:
    if value != "latest":
        raise ConfigError(f"eval.checkpoint={value} has no equivalent here: evaluate a model "
                          f"folder with model_path=<folder> (default: the newest run of name).")
    log.warning("Cramming key eval.checkpoint=latest is the default here (the newest run of "
                "name): nothing to set")


def _eval_tasks(value: str, _: dict[str, str]) -> list[str]:
    return [f"eval.tasks=[{value.strip('[]')}]"]


def _validate_every_hours(value: str, _: dict[str, str]) -> list[str] | None:
    import dataclasses

    from cramming.config.schema import TrainConfig

    if "validate_every_hours" not in {f.name for f in dataclasses.fields(TrainConfig)}:
        log.warning("NTNG key impl.validate_every_hours=%s is train.validate_every_hours here, "
                    "which this build does not have yet: ignored", value)
        return None
    return [f"train.validate_every_hours={value}"]


def _budget(value: str, given: dict[str, str]) -> None:
    return None  # budget=steps: resolved with train.steps by _steps_budget


def _steps(value: str, given: dict[str, str]) -> None:
    if given.get("budget") != "steps":
        raise ConfigError("train.steps counts only with NTNG's budget=steps; here use "
                          "budget_kind=steps budget=<optimizer steps>.")


PRETRAIN_RULES: dict[str, Rule] = {
    "train.stacking.enabled": _flag("method.stacking.enabled"),
    "train.stacking.num_initial_layers": _rename("method.stacking.initial_layers"),
    "train.stacking.step_fractions": _rename("method.stacking.at"),
    "train.stacking.doubling": _growth,
    "train.stacking.copy_optim_states": _optimizer_state,
    "arch.layer_drop.enabled": _flag("method.layer_drop.enabled"),
    "arch.layer_drop.max_theta": _rename("method.layer_drop.theta_min"),
    "arch.layer_drop.gamma_factor": _rename("method.layer_drop.gamma"),
    "impl.mixed_precision_target_dtype": _precision,
    "impl.mixed_precision": _mixed_precision,
    "train.validation_set.fraction": _rename("data.val_fraction"),
    "train.validation_set.il_model": _il_model,
    "impl.validate_every_hours": _validate_every_hours,
    "train.track_forward_pass_only": _flag("rst.charge_scoring_passes"),
    "train.rho_loss.il_losses_path": _il_losses,
    "train.rho_loss.mega_batch_size": _rename("method.rho_loss.mega_batch_size"),
    "train.sb.scale": _rename("method.selective_backprop.beta"),
    "train.sophia.free_updates": _flag("rst.charge_hessian_passes", invert=True),
    "train.sophia.hess_update_frequency": _rename("train.optim.hessian_interval"),
    "train.sophia.batch_size_hess_update": _rename("train.optim.hessian_batch_size"),
    "budget": _budget,
    "train.steps": _steps,
    "impl.shuffle_in_dataloader": _shuffle,
    "impl.compile_torch": _rename("impl.compile"),
    "impl.fullgraph": _rename("impl.compile_fullgraph"),
}
EVAL_RULES: dict[str, Rule] = {
    "impl.mixed_precision_target_dtype": _precision,
    "impl.mixed_precision": _mixed_precision,
    "impl.shuffle_in_dataloader": _shuffle,
    "impl.compile_torch": _rename("impl.compile"),
    "impl.fullgraph": _rename("impl.compile_fullgraph"),
    "eval.checkpoint": _checkpoint,
    "eval/tasks": _eval_tasks,
}

# Keys only Cramming's commands use (the rest are NTNG's, which Cramming may share).
CRAMMING_KEYS = {"impl.compile_torch", "impl.fullgraph", "eval.checkpoint", "eval/tasks"}

# Foreign sections with no meaning here beyond the keys above: (prefix, our equivalent).
NO_MEANING: list[tuple[str, str]] = [
    ("train.stacking.", "method.stacking.* (initial_layers, growth, add_layers, at, "
                        "optimizer_state=keep|copy|reset, rewarmup)"),
    ("arch.layer_drop.", "method.layer_drop.* (enabled, theta_min, gamma, rescale)"),
    ("train.validation_set.", "data.val_fraction (the held-out split) and method=il_model"),
    ("train.rho_loss.", "method.rho_loss.* (il_losses, keep_fraction, mega_batch_size)"),
    ("train.sb.", "method.selective_backprop.* (beta, history)"),
    ("train.sophia.", "train.optim.hessian_interval / hessian_batch_size and "
                      "rst.charge_hessian_passes"),
]


def _rules(config_name: str) -> dict[str, Rule]:
    return EVAL_RULES if config_name == "eval" else PRETRAIN_RULES


def _group_choice(group: str, option: str) -> str | None:
    """Our option for ``group=option`` typed with other spelling or case, if any."""
    from cramming.config import CONFIG_DIR

    if (group, option) in GROUP_ALIASES:
        return GROUP_ALIASES[(group, option)]
    folder = CONFIG_DIR / group
    if not folder.is_dir() or (folder / f"{option}.yaml").is_file():
        return None
    matches = [p.stem for p in folder.glob("*.yaml") if p.stem.lower() == option.lower()]
    return matches[0] if len(matches) == 1 else None


def _steps_budget(given: dict[str, str], translated: list[str], config_name: str) -> list[str]:
    """NTNG's ``budget=steps train.steps=N`` (N microbatches) as optimizer steps here."""
    from cramming.config import compose

    microbatches = int(float(given.get("train.steps", NTNG_DEFAULT_STEPS)))
    overrides = [arg for arg in translated if "=" in arg and not arg.startswith("-")]
    cfg = compose(config_name, overrides, translate=False)
    steps = max(1, math.ceil(microbatches * cfg.impl.microbatch_size / cfg.train.batch_size))
    log.warning("NTNG keys budget=steps train.steps=%d are budget_kind=steps budget=%d here "
                "(NTNG counted microbatches of %d; here budget counts optimizer steps of %d "
                "sequences)", microbatches, steps, cfg.impl.microbatch_size,
                cfg.train.batch_size)
    return ["budget_kind=steps", f"budget={steps}"]


def translate_overrides(arguments: list[str] | tuple[str, ...],
                        config_name: str = "pretrain") -> list[str]:
    """``arguments`` with NTNG's / Cramming's keys rewritten to ours (one log line each).

    Flags and our own keys pass through unchanged; ConfigError (one line, naming our
    equivalent) for a foreign key that means nothing here.
    """
    rules = _rules(config_name)
    given = {arg.split("=", 1)[0]: arg.split("=", 1)[1] for arg in arguments
             if "=" in arg and not arg.startswith(("-", "+", "~"))}
    translated: list[str] = []
    for argument in arguments:
        if "=" not in argument or argument.startswith(("-", "+", "~")):
            translated.append(argument)
            continue
        key, value = argument.split("=", 1)
        rule = rules.get(key)
        if key == "budget" and value != "steps":
            rule = None  # our own budget
        if rule is not None:
            ours = rule(value, given)
            if ours is not None:
                log.warning("%s key %s is %s here", "Cramming" if key in CRAMMING_KEYS else
                            "NTNG", argument, " ".join(ours) or "the default (nothing to set)")
                translated.extend(ours)
            continue
        for prefix, equivalent in NO_MEANING:
            if key.startswith(prefix) and config_name != "eval":
                raise ConfigError(f"NTNG key {key} has no meaning here; use {equivalent}.")
        choice = _group_choice(key, value) if "." not in key else None
        if choice is not None:
            log.warning("NTNG key %s is %s=%s here", argument, key, choice)
            translated.append(f"{key}={choice}")
            continue
        translated.append(argument)
    if given.get("budget") == "steps" and config_name != "eval":
        translated.extend(_steps_budget(given, translated, config_name))
    return translated
