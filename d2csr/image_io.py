"""Moved to :mod:`d2csr.utils.image_io` (``d2csr/utils/image_io.py``); this old import path is the same module object."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module('d2csr.utils.image_io')
