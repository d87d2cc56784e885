"""Test D2C-SR with BasicSR's pipeline: ``python d2csr/test.py -opt options/test_D2C_x4.yml``."""
import os

import d2csr  # noqa: F401  (torchvision shim, then registers archs, data, losses, models)
from basicsr.test import test_pipeline

from d2csr.options_check import check_entry_options
from d2csr.pipeline import apply_training_patches
from d2csr.utils import check_options_file, print_entry_help
from d2csr.utils.errors import exit_on_user_error

if __name__ == '__main__':
    print_entry_help('test')
    check_options_file()
    # d2csr's option check: every problem of the options file (with --force_yml) listed at once, before anything
    # is built or any folder made (also: no weights to test)
    check_entry_options(is_train=False)
    apply_training_patches()  # BasicSR's pipeline with d2csr's launch, resume and data changes
    root_path = os.getcwd()  # experiments/, results/, tb_logger/ land where the command runs (data paths too)
    exit_on_user_error(test_pipeline, root_path)  # an error in the user's input: its message, no traceback
