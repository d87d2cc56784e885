"""d2csr's infrastructure, the ground floor of the package (as ``basicsr/utils/`` is BasicSR's): nothing here
imports d2csr's archs, losses, models or data.

- :mod:`~d2csr.utils.torchvision_shim`: the one shim ``import basicsr`` needs on current torchvision;
- :mod:`~d2csr.utils.checkpoint`: atomic saves, RNG state, resume-state discovery, checked weight loading;
- :mod:`~d2csr.utils.image_io`: image decoding with clear errors;
- :mod:`~d2csr.utils.precision`: autocast / amp dtypes;
- :mod:`~d2csr.utils.pretrained_weights`: backbone weight files (VGG, LPIPS);
- :mod:`~d2csr.utils.misc`: entry-point help, devices, TF32, thread counts (re-exported here, as before).
"""
from .misc import (ENTRY_HELP, available_cpus, check_options_file, compute_threads, print_entry_help,  # noqa: F401
                   pythonpath_env, resolve_device, set_tf32, subprocess_device, thread_env)
