"""Losses registered into ``basicsr.utils.registry.LOSS_REGISTRY``."""
from .d2csr_losses import ConvergenceLoss, DivergenceLoss, DivergenceWeightSchedule, build_divergence_loss  # noqa: F401
from .perceptual import build_perceptual_loss, perceptual_terms  # noqa: F401
