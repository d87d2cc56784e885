"""Test D2C-SR with BasicSR's pipeline: ``python d2csr/test.py -opt options/test_D2C_x4.yml``.

Accepts exactly BasicSR's flags; they are parsed before torch is imported.
"""
import sys

from d2csr_basicsr_hook import entry_point_parser

DESCRIPTION = """\
D2C-SR testing (ECCV 2022) through BasicSR's test pipeline, with d2csr's D2CSR / D2CModel / data sets
available: PSNR / SSIM of the fused output, each branch and the oracle fusion, SR images.

  python d2csr/test.py -opt options/test_D2C_x4.yml
  python d2csr/test.py -opt options/test_D2C_official_x4.yml --force_yml num_gpu=0   # the authors' model, CPU

Results: results/<name>/ in the current folder. Top-level option tf32: false gives full fp32 convolutions on a
GPU. The flags are BasicSR's own."""

if __name__ == '__main__':
    args = entry_point_parser('d2csr/test.py', DESCRIPTION).parse_args()
    from d2csr.pipeline import run_entry_point  # torch, BasicSR and d2csr (after the arguments)

    status = run_entry_point('test', args)
    if status:  # (0: return normally, so that a script that runs this file with runpy goes on)
        sys.exit(status)
