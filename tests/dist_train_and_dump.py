"""Test helper: run ``d2csr/train.py`` once per options file in this process and dump every rank's weights.

    [python -m torch.distributed.run --standalone --nproc_per_node=N] tests/dist_train_and_dump.py DUMP_DIR \
        -opt stage1.yml [-opt stage2.yml ...] [--launcher pytorch] [--auto_resume]

For each run, every process writes ``DUMP_DIR/<name>.init.rank<r>.pth`` (its weights once the model is set up,
i.e. after DistributedDataParallel's initial broadcast and the pretrained load) and
``DUMP_DIR/<name>.final.rank<r>.pth`` (its weights at the final save), so a test can compare what each rank
really holds, and ``DUMP_DIR/<name>.returned.rank<r>`` (the time ``d2csr/train.py`` returned on that rank).
Runs are separated by a barrier, as separate launches would be (after the time is taken). ``d2csr/train.py``
leaves the process group at its end; a process group cannot be set up again in the same torchrun process (the
rendezvous hangs), so here it leaves it only after the last run (for the others its
``destroy_process_group`` does nothing).

Faults a test can ask for (environment variables):

- ``D2CSR_TEST_NAN_AT=<name>:<rank>:<iteration>``: in run ``<name>``, process ``<rank>`` gets a NaN in its LR
  batch at ``<iteration>``;
- ``D2CSR_TEST_SLOW_FINAL_VALIDATION=<seconds>``: rank 0's final validation (after the final save) takes that
  much longer and writes ``DUMP_DIR/<name>.final_validation.rank0`` (the time it ended), so that a test sees
  whether the other ranks waited for it before leaving.
"""
import os
import os.path as osp
import runpy
import sys
import time

import torch
import torch.distributed as dist
import yaml

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TRAIN = osp.join(ROOT, 'd2csr', 'train.py')
NAN_ENV, SLOW_VAL_ENV = 'D2CSR_TEST_NAN_AT', 'D2CSR_TEST_SLOW_FINAL_VALIDATION'

import d2csr  # noqa: E402,F401
from d2csr.models.d2csr_model import D2CModel  # noqa: E402


def main():
    dump_dir, args = sys.argv[1], sys.argv[2:]
    options = [args[i + 1] for i, arg in enumerate(args) if arg == '-opt']
    rest = [arg for i, arg in enumerate(args) if arg != '-opt' and (i == 0 or args[i - 1] != '-opt')]
    nan_at = os.environ.get(NAN_ENV, '').split(':') if os.environ.get(NAN_ENV) else None
    slow = float(os.environ.get(SLOW_VAL_ENV) or 0)

    def dump(model, tag):
        path = osp.join(dump_dir, f'{model.opt["name"]}.{tag}.rank{model.opt["rank"]}.pth')
        torch.save(model.get_bare_model(model.net_g).state_dict(), path)

    def stamp(name, tag, rank):
        with open(osp.join(dump_dir, f'{name}.{tag}.rank{rank}'), 'w') as f:
            f.write(repr(time.time()))

    originals = {k: getattr(D2CModel, k) for k in ('init_training_settings', 'save', 'optimize_parameters',
                                                   'validation')}

    def init_and_dump(self):
        originals['init_training_settings'](self)
        dump(self, 'init')

    def save_and_dump(self, epoch, current_iter):
        originals['save'](self, epoch, current_iter)
        if current_iter == -1:
            dump(self, 'final')
            self._final_validation = True

    def optimize_with_fault(self, current_iter):
        if nan_at and [self.opt['name'], str(self.opt['rank']), str(current_iter)] == nan_at:
            self.lq = self.lq.clone()
            self.lq[0, 0, 0, 0] = float('nan')
        originals['optimize_parameters'](self, current_iter)

    def slow_final_validation(self, *args, **kwargs):
        originals['validation'](self, *args, **kwargs)
        if getattr(self, '_final_validation', False) and self.opt['rank'] == 0 and slow:
            time.sleep(slow)
            stamp(self.opt['name'], 'final_validation', 0)

    replacements = dict(init_training_settings=init_and_dump, save=save_and_dump,
                        optimize_parameters=optimize_with_fault, validation=slow_final_validation)
    for name, method in replacements.items():
        setattr(D2CModel, name, method)
    destroy = dist.destroy_process_group
    try:  # put the methods back: one process is run inside the test process (conftest.run_script)
        for i, opt in enumerate(options):
            sys.argv = [TRAIN, '-opt', opt, *rest]
            dist.destroy_process_group = destroy if i == len(options) - 1 else (lambda *a, **k: None)
            runpy.run_path(TRAIN, run_name='__main__')
            with open(opt) as f:
                name = yaml.safe_load(f)['name']
            stamp(name, 'returned', int(os.environ.get('RANK', 0)))
            if dist.is_initialized():
                dist.barrier()
    finally:
        dist.destroy_process_group = destroy
        for name, method in originals.items():
            setattr(D2CModel, name, method)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == '__main__':
    main()
