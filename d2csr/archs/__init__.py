"""Architectures registered into ``basicsr.utils.registry.ARCH_REGISTRY``."""
from .branch_modules import build_branch_module, register_branch_module  # noqa: F401
from .d2csr_arch import D2CSR, ConvergenceNet  # noqa: F401
