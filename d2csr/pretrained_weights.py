"""Moved to :mod:`d2csr.utils.pretrained_weights` (``d2csr/utils/pretrained_weights.py``); this old import path is the same module object."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module('d2csr.utils.pretrained_weights')
