"""Moved to :mod:`d2csr.losses.d2csr_losses` (``d2csr/losses/d2csr_losses.py``); this old import path is the same module object."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module('d2csr.losses.d2csr_losses')
