"""d2csr: D2C-SR (ECCV 2022) as a BasicSR plugin.

Importing the package makes ``import basicsr`` work on current torchvision (:mod:`d2csr.utils.torchvision_shim`)
and makes the D2C architectures, losses, metrics (LPIPS, the paper's PSNR / SSIM), model and data sets available
to BasicSR's registries without taking a name from them (:mod:`d2csr.utils.registry`: BasicSR finds d2csr's ``RDN`` only where nobody else
registered one; ``d2csr.RDN`` is always d2csr's). BasicSR's own functions stay untouched: d2csr's changes to
BasicSR's pipeline for D2C runs (gloo without GPUs, exact resume, data checks, one run per name) live in
:mod:`d2csr.pipeline`, which ``d2csr/train.py`` and ``d2csr/test.py`` use and ``import d2csr`` does not load.

The Python API (loaded on first use, so ``import d2csr`` stays as cheap as the registration)::

    import d2csr
    upscaler = d2csr.Upscaler('net_g_latest.pth')  # a BasicSR checkpoint or the authors' MegEngine pickle
    sr = upscaler.enhance(img)                     # numpy image in, numpy image out (same kind, s x the size)

- :class:`Upscaler` (:mod:`d2csr.upscaler`): a trained model on a device, with inference's tiling, precision
  and memory rules;
- :func:`load_model` / :func:`load_network` (:mod:`d2csr.loading`): the eval-mode network itself;
- :func:`tiled_forward` / :func:`bounded_forward` (:mod:`d2csr.tiling`): exact tiled and bounded-memory forward
  passes on tensors;
- :class:`MemoryRefused` / :class:`OutOfMemory` (:mod:`d2csr.memory`): what a call that does not fit raises.
"""
from .utils import torchvision_shim  # noqa: F401  (must come before anything that imports basicsr)
from . import archs, data, losses, metrics, models  # noqa: F401,E402

__version__ = '0.1.0'

_API = {
    'Upscaler': 'upscaler',
    'load_model': 'loading',
    'load_network': 'loading',
    'tiled_forward': 'tiling',
    'bounded_forward': 'tiling',
    'MemoryRefused': 'memory',
    'OutOfMemory': 'memory',
}
__all__ = sorted(_API)


def __getattr__(name):  # PEP 562: the API's modules are imported when first used
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f'{__name__}.{_API[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(list(globals()) + __all__)
