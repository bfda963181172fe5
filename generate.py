"""Continue a prompt with a causal checkpoint: greedy, temperature and top-k sampling.

    python generate.py name=run1 prompt="the history of" temperature=0        # greedy
    python generate.py name=run1 prompt="the history of" top_k=40 temperature=0.8 seed=1
    python generate.py model_path=outputs/run1/pretrain/<stamp> prompt="..." num_samples=3
"""

import hydra
from omegaconf import DictConfig

from cramming.config import CONFIG_DIR, register_resolvers
from cramming.generation import main

register_resolvers()


@hydra.main(config_path=str(CONFIG_DIR), config_name="generate", version_base=None)
def launch(cfg: DictConfig) -> None:
    main(cfg)


if __name__ == "__main__":
    launch()
