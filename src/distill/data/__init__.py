"""Data: loaders for standard formats, in-memory tensor splits, batched augmentation."""

from distill.data.sources import DataNotFoundError, RawDataset, available_datasets, load_dataset
from distill.data.tensors import DataSplits, TensorData, batch_indices, make_splits

__all__ = [
    "DataNotFoundError",
    "DataSplits",
    "RawDataset",
    "TensorData",
    "available_datasets",
    "batch_indices",
    "load_dataset",
    "make_splits",
]
