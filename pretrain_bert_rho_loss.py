"""Pretrain with RHO-Loss: `pretrain_bert.py method=rho_loss` (needs method.rho_loss.il_losses)."""

import hydra
from omegaconf import DictConfig

from cramming.cli import pretrain_main
from cramming.config import CONFIG_DIR, register_resolvers

register_resolvers()


@hydra.main(config_path=str(CONFIG_DIR), config_name="pretrain", version_base=None)
def launch(cfg: DictConfig) -> None:
    pretrain_main(cfg)


if __name__ == "__main__":
    import sys

    if not any(arg.startswith("method=") for arg in sys.argv[1:]):
        sys.argv.insert(1, "method=rho_loss")  # unless the line picks one
    launch()
