"""validate_bert.py: held-out MLM loss and accuracy of a pretrained model folder.

Causal (``train.objective=clm``) and hybrid (``hybrid``) checkpoints also report CLM loss,
perplexity and accuracy (``clm_*``), hybrids MNTP as well (``mlm_*``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cramming.backend.checkpoint import find_model_folder, load_model_folder
from cramming.backend.metrics import append_jsonl
from cramming.backend.runtime import resolve_runtime
from cramming.backend.validation import evaluate_objective
from cramming.config import to_typed
from cramming.config.schema import DataConfig, ValidateConfig
from cramming.data import MLMMasker, prepare_data
from cramming.errors import ConfigError, CrammingError

log = logging.getLogger("cramming")


def validate_model(cfg: ValidateConfig) -> dict:
    """Score the selected model on the selected split; append the result to its run folder."""
    if not 0 < cfg.mask_prob < 1:
        raise ConfigError(f"mask_prob={cfg.mask_prob} must be in (0, 1).")
    if cfg.max_batches is not None and cfg.max_rows is not None:
        raise ConfigError(f"max_batches={cfg.max_batches} and max_rows={cfg.max_rows}: set "
                          f"one (max_rows scores the same rows at any batch_size).")
    if cfg.split not in ("val", "train"):
        raise ConfigError(f"split={cfg.split!r}: allowed values are val, train.")
    folder = find_model_folder(cfg.base_dir, cfg.name, cfg.model_path)
    loaded = load_model_folder(folder)
    runtime = resolve_runtime(cfg.impl)
    model = loaded.model.to(runtime.device)
    if cfg.data is not None:
        data_cfg, own_corpus = cfg.data, False
    else:
        data_cfg, own_corpus = to_typed(loaded.config.get("data", {}), DataConfig), True
    base = Path(loaded.config.get("base_dir", cfg.base_dir)) if own_corpus else Path(cfg.base_dir)
    cache_root = base.expanduser().resolve() / "data"
    prepared = prepare_data(data_cfg, cache_root=cache_root) if own_corpus else None
    if prepared is None or prepared.tokenizer.get_vocab() != loaded.tokenizer.get_vocab():
        # Another corpus, or the training cache is gone and was rebuilt differently:
        # tokenize with the model's own tokenizer.
        prepared = prepare_data(data_cfg, cache_root=cache_root, tokenizer=loaded.tokenizer)
    split = prepared.val if cfg.split == "val" else prepared.train
    masker = MLMMasker.from_tokenizer(loaded.tokenizer)
    objective = str((loaded.config.get("train") or {}).get("objective", "mlm"))
    scores = evaluate_objective(model, split, masker, runtime, objective=objective,
                                mask_prob=cfg.mask_prob, batch_size=cfg.batch_size,
                                max_rows=cfg.max_rows if cfg.max_batches is None
                                else cfg.max_batches * cfg.batch_size, seed=cfg.seed,
                                progress_bar=cfg.impl.progress_bar)
    scores.update(model=str(folder), data=data_cfg.name, split=cfg.split,
                  corpus_cache=str(prepared.cache_dir))
    run_dir = folder.parent
    append_jsonl(run_dir / "validation.jsonl", scores)
    print(json.dumps(scores, indent=2))
    log.info("%s loss %.4f, accuracy %.4f -> %s", objective.upper(), scores["loss"],
             scores["accuracy"], run_dir / "validation.jsonl")
    return scores


def main(raw_cfg: DictConfig) -> dict:
    try:
        cfg = OmegaConf.masked_copy(raw_cfg, [k for k in raw_cfg.keys() if k != "hydra"])
        return validate_model(to_typed(cfg, ValidateConfig))
    except CrammingError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
