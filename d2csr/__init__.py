"""d2csr: D2C-SR (ECCV 2022) as a BasicSR plugin.

Importing the package makes ``import basicsr`` work on current torchvision (:mod:`d2csr.compat`) and
registers the D2C architectures, losses, metrics (LPIPS), model and data sets into BasicSR's registries.
"""
from . import compat  # noqa: F401  (must come before anything that imports basicsr)
from . import archs, data, losses, metrics, models  # noqa: F401,E402

__version__ = '0.1.0'
