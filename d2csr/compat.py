"""Moved to :mod:`d2csr.utils.compat` (``d2csr/utils/compat.py``); this old import path is the same module object."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module('d2csr.utils.compat')
