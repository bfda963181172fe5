"""Pretrain with RHO-Loss: `pretrain_bert.py method=rho_loss` (needs method.rho_loss.il_losses)."""

from cramming.cli import launch_pretraining

if __name__ == "__main__":
    launch_pretraining({"method": "rho_loss"})
