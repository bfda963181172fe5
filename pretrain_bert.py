"""Pretrain a BERT-style model under a budget.

    python pretrain_bert.py name=run1 budget=24 arch=crammed-bert train/optim=adamw

See README.md for the config groups and common overrides.
"""

from cramming.cli import launch_pretraining

if __name__ == "__main__":
    launch_pretraining()
