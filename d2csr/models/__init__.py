"""Models registered into ``basicsr.utils.registry.MODEL_REGISTRY``."""
from .d2csr_model import D2CModel  # noqa: F401
