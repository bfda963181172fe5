"""Score a pretrained checkpoint on held-out data: MLM loss and accuracy with fixed masks.

    python validate_bert.py name=run1
    python validate_bert.py model_path=outputs/run1/pretrain/<stamp> data=text data.paths=[x.txt]
"""

import hydra
from omegaconf import DictConfig

from cramming.config import CONFIG_DIR, register_resolvers
from cramming.validate import main

register_resolvers()


@hydra.main(config_path=str(CONFIG_DIR), config_name="validate", version_base=None)
def launch(cfg: DictConfig) -> None:
    main(cfg)


if __name__ == "__main__":
    launch()
