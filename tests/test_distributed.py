"""Distributed training on CPU (gloo) with BasicSR's launcher: both stages, 2 processes vs 1 process; the joint
stage, a NaN on one rank, a two-process resume and the exit status (two launches in all, a few iterations)."""
import logging
import os
import re
import subprocess
import sys

import cv2
import pytest
import torch

from conftest import (ROOT, TINY_NET, WORK, experiment_dir, run_script, subprocess_env, tiny_options, unique_name,
                      write_options)

MICRO_NET = dict(TINY_NET, num_feat=8, fusion_feat=8)
HELPER = ROOT / 'tests' / 'dist_train_and_dump.py'


@pytest.fixture(scope='module')
def uniform_pairs(photo_data, tmp_path_factory):
    """Four 32 px HR / 8 px LR pairs cut from the photo pairs: no random crop can move them."""
    root = tmp_path_factory.mktemp('uniform_pairs')
    for sub in ('HR', 'LR'):
        (root / sub).mkdir()
    k = 0
    for name in ('astronaut', 'rocket'):
        hr = cv2.imread(str(photo_data / 'train' / 'HR' / f'{name}.png'))
        lr = cv2.imread(str(photo_data / 'train' / 'LR' / f'{name}.png'))
        for y, x in ((8, 8), (16, 24)):
            cv2.imwrite(str(root / 'HR' / f'{k}.png'), hr[4 * y:4 * y + 32, 4 * x:4 * x + 32])
            cv2.imwrite(str(root / 'LR' / f'{k}.png'), lr[y:y + 8, x:x + 8])
            k += 1
    return root


def stage_options(data, name, stage, batch, pretrain=None):
    opt = tiny_options(data, name, stage=stage, total_iter=4, pretrain=pretrain, network=MICRO_NET,
                       **{'datasets:train:gt_size': 32, 'datasets:train:use_hflip': False,
                          'datasets:train:use_rot': False, 'datasets:train:dataset_enlarge_ratio': 1,
                          'datasets:train:batch_size_per_gpu': batch, 'logger:save_checkpoint_freq': 1000})
    for key in ('dataroot_gt', 'dataroot_lq'):
        opt['datasets']['train'][key] = str(data / ('HR' if key == 'dataroot_gt' else 'LR'))
    del opt['datasets']['val'], opt['val']
    if stage == 'divergence':  # the triplet term's statistics are per process, like BatchNorm's
        opt['train']['divergence_opt']['alpha'] = 0.0
    return opt


def launch(args, processes, **env):
    """``tests/dist_train_and_dump.py args`` with ``processes`` gloo ranks under torchrun (in this process for 1)."""
    if processes > 1:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={processes}',
               str(HELPER), *map(str, args), '--launcher', 'pytorch']
        return subprocess.run(cmd, cwd=WORK, env=subprocess_env(**env), capture_output=True, text=True, timeout=600)
    return run_script(HELPER, *args, env=env)


def load_dumps(tmp, name, processes, tags=('init', 'final')):
    return {(t, r): torch.load(tmp / f'{name}.{t}.rank{r}.pth', weights_only=True) for t in tags
            for r in range(processes)}


def run_both_stages(data, tmp, tag, processes, more=(), **env):
    """Stage 1 then stage 2; ``processes`` ranks with 2 // processes pairs each, so the global batch is 2.
    ``more``: further options files run in the same launch, after them."""
    div, conv = unique_name(f'dist_div_{tag}'), unique_name(f'dist_conv_{tag}')
    batch = 2 // processes
    div_yml = write_options(stage_options(data, div, 'divergence', batch), tmp / f'{div}.yml')
    pretrain = experiment_dir(div) / 'models' / 'net_g_latest.pth'
    conv_yml = write_options(stage_options(data, conv, 'convergence', batch, str(pretrain)), tmp / f'{conv}.yml')
    args = [tmp, '-opt', div_yml, '-opt', conv_yml] + [a for yml in more for a in ('-opt', yml)]
    proc = launch(args, processes, **env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {stage: load_dumps(tmp, n, processes) for stage, n in (('div', div), ('conv', conv))}, proc


# the joint stage, a NaN on one rank, a resume and the exit status, in the same two launches (issue 21)
SLOW_FINAL_VALIDATION = 0.5  # seconds rank 0's final validation is made longer: the other rank must wait for it


def with_validation(opt, data):
    """``opt`` with a final validation on ``data`` (BasicSR's validation: rank 0 only)."""
    train = opt['datasets']['train']
    opt['datasets']['val'] = dict(name='uniform_val', type=train['type'], dataroot_gt=train['dataroot_gt'],
                                  dataroot_lq=train['dataroot_lq'], filename_tmpl='{}', io_backend={'type': 'disk'})
    opt['val'] = dict(val_freq=1000, save_img=False)
    return opt


def joint_options(data, name, total_iter):
    """The joint stage (both nets; the triplet term on: alpha 1), 1 pair per rank, a checkpoint every 2
    iterations, a final validation."""
    opt = stage_options(data, name, 'joint', 1)
    opt['train']['total_iter'] = total_iter
    opt['logger']['save_checkpoint_freq'] = 2
    return with_validation(opt, data)


@pytest.fixture(scope='module')
def runs(uniform_pairs, tmp_path_factory):
    """One launch of two processes: both stages, the joint stage to 4 and to 2 iterations, a NaN on rank 1;
    the same in one process (both stages); a second launch resuming the joint run from 2 to 4."""
    tmp = tmp_path_factory.mktemp('dist')
    names = {n: unique_name(f'dist_{n}') for n in ('joint_full', 'joint_part', 'nan')}
    nan_opt = with_validation(stage_options(uniform_pairs, names['nan'], 'divergence', 1), uniform_pairs)
    nan_opt['train'].update(total_iter=3, nan_policy='skip')
    more = [write_options(joint_options(uniform_pairs, names['joint_full'], 4), tmp / 'full.yml'),
            write_options(joint_options(uniform_pairs, names['joint_part'], 2), tmp / 'part.yml'),  # stops at 2
            write_options(nan_opt, tmp / 'nan.yml')]
    env = {'D2CSR_TEST_NAN_AT': f'{names["nan"]}:1:2', 'D2CSR_TEST_SLOW_FINAL_VALIDATION': str(SLOW_FINAL_VALIDATION)}
    two, proc = run_both_stages(uniform_pairs, tmp, 'two', 2, more, **env)
    one, _ = run_both_stages(uniform_pairs, tmp, 'one', 1)
    # the joint run that stopped at 2, resumed to 4 by a new launch (as after a kill or a job's time limit)
    resume_yml = write_options(joint_options(uniform_pairs, names['joint_part'], 4), tmp / 'resume.yml')
    resumed = launch([tmp, '-opt', resume_yml, '--auto_resume'], 2, **env)
    return dict(two=two, one=one, log=proc.stdout + proc.stderr, tmp=tmp, names=names, launches=[proc, resumed])


def equal(a, b):
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_two_gloo_processes_hold_identical_weights(runs):
    for stage in ('div', 'conv'):
        w = runs['two'][stage]
        assert not equal(w['init', 0], w['init', 1]), f'{stage}: ranks start from different weights'
        assert not equal(w['final', 0], w['final', 1]), f'{stage}: ranks diverged'


def test_divergence_stage_syncs_every_branch_and_convergence_only_the_fusion(runs):
    div, conv = runs['two']['div'], runs['two']['conv']
    changed = set(equal(div['init', 0], div['final', 0]))
    num_nodes, num_leaves = 6, 4
    for part in [f'nodes.{i}.' for i in range(num_nodes)] + [f'tails.{i}.' for i in range(num_leaves)] + ['head.']:
        assert any(k.startswith(part) for k in changed), f'{part} did not train'
    assert not any(k.startswith('fusion.') for k in changed)
    changed = set(equal(conv['init', 0], conv['final', 0]))
    assert changed and all(k.startswith('fusion.') for k in changed)
    assert not equal(conv['init', 0], div['final', 0])  # stage 2 starts from stage 1's weights


def test_two_processes_equal_one_process_over_the_same_global_batch(runs):
    """Rank 0 of 2 (batch 1 each) ends where 1 process (batch 2) ends, to float rounding, in both stages."""
    two, one = runs['two'], runs['one']
    assert not equal(two['div']['init', 0], one['div']['init', 0])  # the same seed: the same initial weights
    for stage in ('div', 'conv'):
        final_two, final_one, init_one = two[stage]['final', 0], one[stage]['final', 0], one[stage]['init', 0]
        diff = max((final_two[k] - final_one[k]).abs().max().item() for k in final_one)
        moved = max((final_one[k] - init_one[k]).abs().max().item() for k in final_one)
        assert diff < 1e-6 < moved, (stage, diff, moved)
        print(f'{stage}: max |2 processes - 1 process| = {diff:.1e}, max |final - initial| = {moved:.1e}')


def test_the_log_says_gloo_world_size_two(runs):
    assert 'World size (gpu number): 2' in runs['log']
    assert 'Distributed training on CPU: 2 processes, gloo backend (no GPU).' in runs['log']


def test_every_launch_exits_0_after_rank_0_logged_its_final_validation(runs):
    """d2csr/train.py waits for every rank and leaves the process group: a rank that finished its part never exits
    while rank 0 still runs the final validation (which made 6 of 101 finished runs exit with status 1)."""
    tmp, names = runs['tmp'], runs['names']
    for proc in runs['launches']:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        assert 'terminate called' not in proc.stderr
    for name in (names['nan'], names['joint_full']):  # runs with a final validation (longer on rank 0)
        validated = float((tmp / f'{name}.final_validation.rank0').read_text())
        returned = [float((tmp / f'{name}.returned.rank{r}').read_text()) for r in (0, 1)]
        assert min(returned) >= validated, (name, returned, validated)
    for proc, runs_with_validation in zip(runs['launches'], (3, 1)):  # each final validation was logged
        assert (proc.stdout + proc.stderr).count('Branches uniform_val') == runs_with_validation


def test_joint_stage_with_two_processes_trains_both_nets_identically(runs):
    tmp, name = runs['tmp'], runs['names']['joint_full']
    w = load_dumps(tmp, name, 2)
    assert not equal(w['final', 0], w['final', 1]), 'ranks diverged'
    changed = set(equal(w['init', 0], w['final', 0]))
    assert any(k.startswith('fusion.') for k in changed) and any(k.startswith('nodes.') for k in changed)


def test_two_process_resume_is_bit_identical_to_an_uninterrupted_run(runs):
    tmp, names = runs['tmp'], runs['names']
    full, resumed = load_dumps(tmp, names['joint_full'], 2, ('final', )), load_dumps(tmp, names['joint_part'], 2,
                                                                                      ('final', ))
    log = runs['launches'][1].stdout + runs['launches'][1].stderr
    assert re.search(r'Resuming training from epoch: \d+, iter: 2\.', log)
    for rank in (0, 1):
        assert not equal(full['final', rank], resumed['final', rank]), f'rank {rank} differs after the resume'


def test_a_nan_on_rank_1_is_reported_with_rank_1_values(runs):
    log = runs['log']
    line = next(line for line in log.splitlines() if 'non-finite' in line)
    assert 'non-finite loss and gradient on rank 1 of 2 at iteration 2 (stage divergence): rank 1: ' in line, line
    assert '=nan' in line.split('rank 1: ')[1] and '(finite on rank 0)' in line
    assert 'Step skipped (train:nan_policy: skip)' in line
    w = load_dumps(runs['tmp'], runs['names']['nan'], 2, ('final', ))
    assert not equal(w['final', 0], w['final', 1])  # both ranks skipped the same step
    assert all(torch.isfinite(v).all() for v in w['final', 0].values() if v.is_floating_point())


# --------------------------------------------------------------------------------------------------
# launches that cannot work
@pytest.fixture
def launcher_argv(photo_data, tmp_path, monkeypatch):
    yml = write_options(tiny_options(photo_data, unique_name('launch')), tmp_path / 'launch.yml')
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, 'argv', ['d2csr/train.py', '-opt', str(yml), '--launcher', 'pytorch'])
    return monkeypatch


def test_launcher_without_torchrun_names_the_problem(launcher_argv):
    from basicsr.utils.options import parse_options  # BasicSR's parser, with d2csr's init_dist

    with pytest.raises(RuntimeError, match=r'--launcher pytorch: environment variable WORLD_SIZE is not set\. '
                                           r'--launcher pytorch expects to be started by torchrun'):
        parse_options(str(ROOT), is_train=True)


def test_launcher_rank_outside_the_world_size_names_it(launcher_argv):
    from basicsr.utils.options import parse_options

    launcher_argv.setenv('WORLD_SIZE', '2')
    launcher_argv.setenv('RANK', '2')
    with pytest.raises(RuntimeError, match=r'rank 2 is outside the world size 2 \(ranks are 0\.\.1\)'):
        parse_options(str(ROOT), is_train=True)


def test_world_size_too_large_for_the_data_names_it(photo_data):
    from d2csr.pipeline import create_train_val_dataloader

    opt = tiny_options(photo_data, unique_name('too_many'), **{'datasets:train:dataset_enlarge_ratio': 1})
    del opt['datasets']['val']
    opt['datasets']['train']['phase'] = 'train'
    opt.update(dist=True, rank=0, world_size=4)
    with pytest.raises(ValueError, match=r'no training batch per epoch: the world size is 4 process\(es\), each '
                                         r'with batches of 2, but an epoch has 3 training pairs x '
                                         r'dataset_enlarge_ratio 1, i\.e\. 1 per process'):
        create_train_val_dataloader(opt, logging.getLogger('test'))


def test_slurm_launcher_without_gpu_uses_gloo(monkeypatch):
    """``--launcher slurm`` on a CPU node: the environment srun gives a 1-task job, then a gloo group."""
    import socket

    import torch.distributed as dist

    from d2csr.pipeline import init_dist

    if torch.cuda.is_available():
        pytest.skip('checks the CPU path')
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_PORT'):  # init_dist sets them: undo afterwards
        monkeypatch.setenv(name, '')
        monkeypatch.delenv(name)
    monkeypatch.setenv('SLURM_PROCID', '0')
    monkeypatch.setenv('SLURM_NTASKS', '1')
    monkeypatch.setenv('SLURM_NODELIST', 'node[1-2]')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')  # else resolved with scontrol
    init_dist('slurm', backend='nccl', port=port)  # the options files' dist_params
    try:
        assert dist.get_backend() == 'gloo' and dist.get_world_size() == 1 and dist.get_rank() == 0
        assert os.environ['MASTER_PORT'] == str(port) and os.environ['WORLD_SIZE'] == '1'
    finally:
        dist.destroy_process_group()
