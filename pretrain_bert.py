"""Pretrain a BERT-style model under a budget.

    python pretrain_bert.py name=run1 budget=24 arch=crammed-bert train/optim=adamw

See README.md for the config groups and common overrides.
"""

import hydra
from omegaconf import DictConfig

from cramming.cli import pretrain_main
from cramming.config import CONFIG_DIR, register_resolvers

register_resolvers()


@hydra.main(config_path=str(CONFIG_DIR), config_name="pretrain", version_base=None)
def launch(cfg: DictConfig) -> None:
    pretrain_main(cfg)


if __name__ == "__main__":
    launch()
