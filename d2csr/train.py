"""Train D2C-SR with BasicSR's pipeline: ``python d2csr/train.py -opt options/train_D2C_div_x4.yml``.

Accepts exactly BasicSR's flags (``--launcher``, ``--auto_resume``, ``--debug``, ``--force_yml``).
"""
import os

import torch.distributed as dist

import d2csr  # noqa: F401  (torchvision shim, then registers archs, data, losses, models)
from basicsr.train import train_pipeline

from d2csr.options_check import check_entry_options
from d2csr.pipeline import apply_training_patches
from d2csr.utils import check_options_file, print_entry_help
from d2csr.utils.errors import exit_on_user_error

if __name__ == '__main__':
    print_entry_help('train')
    check_options_file()
    # d2csr's option check: every problem of the options file (with --force_yml) listed at once, before anything
    # is built or any folder made
    check_entry_options(is_train=True)
    apply_training_patches()  # BasicSR's pipeline with d2csr's launch, resume and data changes
    root_path = os.getcwd()  # experiments/, results/, tb_logger/ land where the command runs (data paths too)
    exit_on_user_error(train_pipeline, root_path)  # an error in the user's input: its message, no traceback
    if dist.is_available() and dist.is_initialized():  # every rank waits for rank 0's final validation and
        dist.barrier()  # leaves the group, so that a finished run exits with status 0 on every rank
        dist.destroy_process_group()
