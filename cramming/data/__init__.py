"""Data pipeline: read documents, train a tokenizer, pack and cache rows, mask for MLM."""

from cramming.data.masking import MLMMasker
from cramming.data.prepare import PackedDataset, PreparedData, load_prepared, prepare_data
from cramming.data.sources import iter_documents
from cramming.data.tokenizer import load_tokenizer, train_tokenizer

__all__ = [
    "iter_documents", "train_tokenizer", "load_tokenizer", "prepare_data", "load_prepared",
    "PreparedData", "PackedDataset", "MLMMasker",
]
