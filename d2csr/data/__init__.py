"""Data sets registered into ``basicsr.utils.registry.DATASET_REGISTRY``.

Importing this package registers ``RealSRDataset``, ``DRealSRDataset``, ``D2CRealSRDataset``,
``PairListDataset`` and ``PairedFolderDataset`` (:mod:`d2csr.data.real_paired_dataset`).
"""
from .pair_index import DataError  # noqa: F401
from . import real_paired_dataset  # noqa: F401  (registers the data sets)
from .eval_check import check_eval_dataset  # noqa: E402
from ..utils.compat import register_dataset_check  # noqa: E402

register_dataset_check(check_eval_dataset)  # run by the training patches when the data loaders are built
