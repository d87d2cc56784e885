"""Train D2C-SR with BasicSR's pipeline: ``python d2csr/train.py -opt options/train_D2C_div_x4.yml``.

Accepts exactly BasicSR's flags (``--launcher``, ``--auto_resume``, ``--debug``, ``--force_yml``).
"""
import os

import d2csr  # noqa: F401  (torchvision shim, then registers archs, data, losses, models)
from basicsr.train import train_pipeline

from d2csr.pipeline import apply_training_patches
from d2csr.utils import check_options_file, print_entry_help

if __name__ == '__main__':
    print_entry_help('train')
    check_options_file()
    apply_training_patches()  # BasicSR's pipeline with d2csr's launch, resume and data changes
    root_path = os.getcwd()  # experiments/, results/, tb_logger/ land where the command runs (data paths too)
    train_pipeline(root_path)
