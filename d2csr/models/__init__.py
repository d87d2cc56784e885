"""Models registered into ``basicsr.utils.registry.MODEL_REGISTRY``."""
from .d2c_model import D2CModel  # noqa: F401
