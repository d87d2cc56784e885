"""Moved to :mod:`d2csr.utils.precision` (``d2csr/utils/precision.py``); this old import path is the same module object."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module('d2csr.utils.precision')
