"""The one shim ``import basicsr`` needs on current torchvision, installed by ``import d2csr``.

BasicSR 1.4.2's ``basicsr/data/degradations.py`` imports ``torchvision.transforms.functional_tensor``, which
torchvision removed in 0.17. :func:`install` registers a module of that name that re-exports
``rgb_to_grayscale`` (all BasicSR takes from it) from ``torchvision.transforms.functional``. It must run before
``basicsr`` is first imported; nothing of BasicSR is changed.
"""
import sys
import types

MODULE = 'torchvision.transforms.functional_tensor'


def install():
    """Register ``torchvision.transforms.functional_tensor`` unless torchvision still has it (idempotent)."""
    if MODULE in sys.modules:
        return
    try:  # an old torchvision still has it
        import torchvision.transforms.functional_tensor  # noqa: F401
        return
    except ImportError:
        pass
    import torchvision.transforms.functional as functional

    shim = types.ModuleType(MODULE)
    shim.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[MODULE] = shim


install()
