"""Cramming's entry-point name for ``pretrain_bert.py`` (its commands run as typed).

    python pretrain.py name=run1 arch=crammed-bert train=bert-o4 budget=24
"""

from cramming.cli import launch_pretraining

if __name__ == "__main__":
    launch_pretraining()
