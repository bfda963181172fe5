"""cramming: pretrain BERT-style language models under a fixed compute budget."""

__version__ = "0.1.0"
