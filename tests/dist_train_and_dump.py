"""Test helper: run ``d2csr/train.py`` once per options file in this process and dump every rank's weights.

    [python -m torch.distributed.run --standalone --nproc_per_node=N] tests/dist_train_and_dump.py DUMP_DIR \
        -opt stage1.yml [-opt stage2.yml ...] [--launcher pytorch]

For each run, every process writes ``DUMP_DIR/<name>.init.rank<r>.pth`` (its weights once the model is set up,
i.e. after DistributedDataParallel's initial broadcast and the pretrained load) and
``DUMP_DIR/<name>.final.rank<r>.pth`` (its weights at the final save), so a test can compare what each rank
really holds. Runs are separated by a barrier, as separate launches would be.
"""
import os.path as osp
import runpy
import sys

import torch
import torch.distributed as dist

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TRAIN = osp.join(ROOT, 'd2csr', 'train.py')

import d2csr  # noqa: E402,F401
from d2csr.models.d2csr_model import D2CModel  # noqa: E402


def main():
    dump_dir, args = sys.argv[1], sys.argv[2:]
    options = [args[i + 1] for i, arg in enumerate(args) if arg == '-opt']
    rest = [arg for i, arg in enumerate(args) if arg != '-opt' and (i == 0 or args[i - 1] != '-opt')]

    def dump(model, tag):
        path = osp.join(dump_dir, f'{model.opt["name"]}.{tag}.rank{model.opt["rank"]}.pth')
        torch.save(model.get_bare_model(model.net_g).state_dict(), path)

    init_training_settings, save = D2CModel.init_training_settings, D2CModel.save

    def init_and_dump(self):
        init_training_settings(self)
        dump(self, 'init')

    def save_and_dump(self, epoch, current_iter):
        save(self, epoch, current_iter)
        if current_iter == -1:
            dump(self, 'final')

    D2CModel.init_training_settings, D2CModel.save = init_and_dump, save_and_dump
    try:  # put the methods back: one process is run inside the test process (conftest.run_script)
        for opt in options:
            sys.argv = [TRAIN, '-opt', opt, *rest]
            runpy.run_path(TRAIN, run_name='__main__')
            if dist.is_initialized():
                dist.barrier()
    finally:
        D2CModel.init_training_settings, D2CModel.save = init_training_settings, save
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == '__main__':
    main()
