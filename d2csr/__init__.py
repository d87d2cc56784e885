"""d2csr: D2C-SR (ECCV 2022) as a BasicSR plugin.

Importing the package makes ``import basicsr`` work on current torchvision (:mod:`d2csr.utils.torchvision_shim`)
and makes the D2C architectures, losses, metrics (LPIPS, the paper's PSNR / SSIM), model and data sets available to BasicSR's registries
without taking a name from them (:mod:`d2csr.utils.registry`: BasicSR finds d2csr's ``RDN`` only where nobody else
registered one; ``d2csr.RDN`` is always d2csr's). BasicSR's own functions stay untouched: d2csr's changes to
BasicSR's pipeline for D2C runs (gloo without GPUs, exact resume, data checks, one run per name) live in
:mod:`d2csr.pipeline`, which ``d2csr/train.py`` and ``d2csr/test.py`` use and ``import d2csr`` does not load.
"""
from .utils import torchvision_shim  # noqa: F401  (must come before anything that imports basicsr)
from . import archs, data, losses, metrics, models  # noqa: F401,E402

__version__ = '0.1.0'
