"""Architectures registered into ``basicsr.utils.registry.ARCH_REGISTRY``.

``D2CSR`` (the D2C-SR tree + convergence net) and the original networks of paper Table 3 that BasicSR lacks
(``RDN``, ``IMDN``, ``VDSR``; BasicSR has ``EDSR``, ``MSRResNet``, ``RRDBNet`` and ``RCAN``).
"""
from .branch_modules import build_branch_module, branch_module_names, register_branch_module  # noqa: F401
from .d2csr_arch import D2CSR, ConvergenceNet  # noqa: F401
from .imdn_arch import IMDN  # noqa: F401
from .rdn_arch import RDN  # noqa: F401
from .vdsr_arch import VDSR  # noqa: F401
