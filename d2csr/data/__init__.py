"""Data sets registered into ``basicsr.utils.registry.DATASET_REGISTRY``.

Importing this package registers ``RealSRDataset``, ``DRealSRDataset``, ``D2CRealSRDataset``,
``PairListDataset`` and ``PairedFolderDataset`` (:mod:`d2csr.data.real_paired_dataset`).
"""
from .pair_index import DataError  # noqa: F401
from . import real_paired_dataset  # noqa: F401  (registers the data sets)
