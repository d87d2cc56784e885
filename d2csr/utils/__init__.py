"""d2csr's infrastructure, the ground floor of the package (as ``basicsr/utils/`` is BasicSR's): nothing here
imports d2csr's archs, losses, models or data.

- :mod:`~d2csr.utils.torchvision_shim`: the one shim ``import basicsr`` needs on current torchvision;
- :mod:`~d2csr.utils.checkpoint`: atomic saves, RNG state, resume-state discovery, checked weight loading;
- :mod:`~d2csr.utils.image_io`: image decoding with clear errors;
- :mod:`~d2csr.utils.precision`: autocast / amp dtypes;
- :mod:`~d2csr.utils.pretrained_weights`: backbone weight files (VGG, LPIPS);
- :mod:`~d2csr.utils.misc`: devices, TF32, thread counts (re-exported here);
- :mod:`~d2csr.utils.registry`: d2csr's names in BasicSR's registries, never taking one;
- :mod:`~d2csr.utils.yaml_io`: the safe loader of every options file d2csr reads;
- :mod:`~d2csr.utils.run_lock`: one run per experiment / results name.
"""
from .misc import (available_cpus, compute_threads, device_from_flag, pythonpath_env, resolve_device,  # noqa: F401
                   set_tf32, subprocess_device, thread_env)
