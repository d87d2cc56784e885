"""Moved to :mod:`d2csr.models.d2csr_model` (``d2csr/models/d2csr_model.py``); this old import path is the same module object."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module('d2csr.models.d2csr_model')
