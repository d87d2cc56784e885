"""d2csr: D2C-SR (ECCV 2022) as a BasicSR plugin.

Importing the package makes ``import basicsr`` work on current torchvision (:mod:`d2csr.utils.torchvision_shim`)
and registers the D2C architectures, losses, metrics (LPIPS, the paper's PSNR / SSIM), model and data sets into
BasicSR's registries. BasicSR's own functions stay untouched: d2csr's changes to BasicSR's training pipeline (gloo
without GPUs, exact resume, the resumable sampler, the launch checks) are applied only by the explicit
:func:`d2csr.pipeline.apply_training_patches`, which ``d2csr/train.py`` and ``d2csr/test.py`` call.
"""
from .utils import torchvision_shim  # noqa: F401  (must come before anything that imports basicsr)
from . import archs, data, losses, metrics, models  # noqa: F401,E402

__version__ = '0.1.0'
