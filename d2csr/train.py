"""Train D2C-SR with BasicSR's pipeline: ``python d2csr/train.py -opt options/train_D2C_div_x4.yml``.

Accepts exactly BasicSR's flags (``--launcher``, ``--auto_resume``, ``--debug``, ``--force_yml``). The arguments
are parsed before torch is imported, so ``--help`` and a wrong flag answer at once.
"""
import sys

from d2csr_basicsr_hook import entry_point_parser

DESCRIPTION = """\
D2C-SR training (ECCV 2022: a tree of divergent branches, then a convergence net that fuses them) through
BasicSR's train pipeline, with d2csr's archs (D2CSR, RDN, IMDN, VDSR), losses (DivergenceLoss, ConvergenceLoss),
model (D2CModel) and data sets available.

  python d2csr/train.py -opt options/train_D2C_div_x4.yml    # stage 1: the divergence tree
  python d2csr/train.py -opt options/train_D2C_conv_x4.yml   # stage 2: the convergence net, tree frozen
  torchrun --nproc_per_node=4 d2csr/train.py -opt options/train_D2C_div_x4.yml --launcher pytorch

The options file sets everything (train: stage: divergence | convergence | joint); add --force_yml num_gpu=0 to
run on the CPU. Results: experiments/<name>/ in the current folder. The data, weight files and options are
checked before anything is written, and a second run of a running experiment's name stops at start. The flags
are BasicSR's own."""

if __name__ == '__main__':
    args = entry_point_parser('d2csr/train.py', DESCRIPTION).parse_args()
    from d2csr.pipeline import run_entry_point  # torch, BasicSR and d2csr (after the arguments)

    status = run_entry_point('train', args)
    if status:  # (0: return normally, so that a script that runs this file with runpy goes on)
        sys.exit(status)
