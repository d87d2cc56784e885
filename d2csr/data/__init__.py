"""Data sets registered into ``basicsr.utils.registry.DATASET_REGISTRY``."""
