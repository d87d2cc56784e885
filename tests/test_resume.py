"""Crash safety and exact resume: atomic saves, choosing a complete state, bit-identical resume after kill -9."""
import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import (ROOT, TINY_NET, WORK, experiment_dir, run_entry, subprocess_env, tiny_options, unique_name,
                      write_options)
from d2csr.utils.checkpoint import SLOW_SAVE_ENV, atomic_save, find_resume_state
from d2csr.pipeline import ResumableEnlargedSampler, load_resume_state
from d2csr.utils.errors import ResumeError

MICRO_NET = dict(TINY_NET, num_feat=8, fusion_feat=8)
TOTAL_ITER = 12  # 3 photos x enlarge 4 / batch 2 = 6 iterations per epoch: two epochs


def kill_test_options(photo_data, name):
    # random 32 px crops and flips (python RNG), validation every 5 iterations (torch RNG), a save every iteration
    return tiny_options(photo_data, name, total_iter=TOTAL_ITER, network=MICRO_NET,
                        **{'datasets:train:gt_size': 32, 'logger:save_checkpoint_freq': 1, 'val:val_freq': 5})


def params(path):
    return torch.load(path, map_location='cpu', weights_only=True)['params']


def snapshot(folder):
    """{relative path: (size, mtime_ns, sha1)} of every file under ``folder``."""
    out = {}
    for path in sorted(folder.rglob('*')):
        if path.is_file():
            stat = path.stat()
            out[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns,
                                                  hashlib.sha1(path.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope='module')
def reference_run(photo_data, tmp_path_factory):
    """An uninterrupted run of the kill test's options."""
    tmp = tmp_path_factory.mktemp('resume_ref')
    name = unique_name('resume_ref')
    opt = kill_test_options(photo_data, name)
    run_entry('train', '-opt', write_options(opt, tmp / 'ref.yml'))
    return dict(name=name, opt=opt, tmp=tmp)


# --------------------------------------------------------------------------------------------------
def test_atomic_save_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / 'net.pth'
    atomic_save({'a': torch.ones(3)}, path)
    before = path.read_bytes()

    def write_half_then_die(obj, f, *args, **kwargs):
        f.write(b'PK\x03\x04 half a zip')
        raise KeyboardInterrupt  # as if the process were interrupted mid-write

    monkeypatch.setattr(torch, 'save', write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({'a': torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['net.pth']  # no temporary left behind
    monkeypatch.undo()
    atomic_save({'a': torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)['a'], torch.zeros(3))


def test_find_resume_state_picks_the_newest_complete_pair(tmp_path):
    states, models = tmp_path / 'training_states', tmp_path / 'models'
    states.mkdir()
    models.mkdir()
    for it in (2, 4):
        torch.save({'iter': it}, states / f'{it}.state')
        torch.save({'params': {}}, models / f'net_g_{it}.pth')
    torch.save({'iter': 6}, states / '6.state')  # its network is missing
    torch.save({'iter': 8}, states / '8.state')
    (models / 'net_g_8.pth').write_bytes((models / 'net_g_4.pth').read_bytes()[:40])  # truncated
    (states / '10.state').write_bytes((states / '4.state').read_bytes()[:-30])  # truncated
    (states / '12.state.tmp123').write_bytes(b'partial')  # an interrupted save: ignored
    path, skipped = find_resume_state(str(states), str(models))
    assert path == str(states / '4.state')
    reasons = dict(skipped)
    assert list(reasons) == [str(states / f'{it}.state') for it in (10, 8, 6)]
    assert reasons[str(states / '10.state')].startswith('it is unreadable')
    assert 'net_g_8.pth is unreadable' in reasons[str(states / '8.state')]
    assert 'net_g_6.pth is missing' in reasons[str(states / '6.state')]
    for it in (2, 4):
        (states / f'{it}.state').unlink()
    with pytest.raises(ResumeError, match='no complete training state'):
        find_resume_state(str(states), str(models))


def test_resumable_sampler_skips_the_consumed_part_of_its_epoch():
    sampler = ResumableEnlargedSampler(list(range(10)), num_replicas=2, rank=1, ratio=2)
    sampler.set_epoch(3)
    full = list(sampler)
    calls = []
    sampler.resume_at(3, 4, on_start=lambda: calls.append(1))
    sampler.set_epoch(3)
    assert list(sampler) == full[4:] and calls == [1]
    sampler.set_epoch(4)
    reference = ResumableEnlargedSampler(list(range(10)), num_replicas=2, rank=1, ratio=2)
    reference.set_epoch(4)
    assert list(sampler) == list(reference) and len(list(sampler)) == 10


def _tmp_files(exp, min_iter=0):
    """Temporary files of saves in flight (``net_g_<iter>.pth.tmp<pid>``, ``<iter>.state.tmp<pid>``)."""
    found = [p for sub in ('models', 'training_states') for p in (exp / sub).glob('*.tmp*')]
    return [p for p in found if _saved_iter(p) >= min_iter]


def _saved_iter(path):
    return int(path.name.split('.')[0].replace('net_g_', ''))


def test_kill_9_at_random_moments_then_resume_is_bit_identical(reference_run, photo_data):
    """SIGKILL the training repeatedly (the first time while a checkpoint is half-written), resume with
    --auto_resume each time, and compare the final weights with the uninterrupted run, bit for bit."""
    name = unique_name('resume_killed')
    opt_path = write_options(kill_test_options(photo_data, name), reference_run['tmp'] / 'killed.yml')
    exp = experiment_dir(name)
    env = subprocess_env(**{SLOW_SAVE_ENV: '0.3'})
    cmd = [sys.executable, str(ROOT / 'd2csr' / 'train.py'), '-opt', str(opt_path), '--auto_resume']
    rng = random.Random(20240607)
    kills, outputs, killed_mid_save = 0, [], None
    for attempt in range(12):
        proc = subprocess.Popen(cmd, cwd=WORK, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        lines = []
        if kills < 3:
            # first kill: as soon as the save of iteration >= 3 has written half a file; later ones: at random
            mid_save = kills == 0
            delay = rng.uniform(0.0, 2.5)
            for line in proc.stdout:
                lines.append(line)
                if 'Start training from epoch' in line:
                    break
            deadline = time.monotonic() + (30 if mid_save else delay)
            while proc.poll() is None and time.monotonic() < deadline:
                if mid_save and exp.is_dir() and _tmp_files(exp, 3):
                    break
                time.sleep(0.005)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
                if mid_save:
                    killed_mid_save = _tmp_files(exp, 3)
                    assert killed_mid_save, 'the first kill should have landed during a save'
        lines.extend(proc.stdout)
        proc.wait(timeout=300)
        outputs.append(''.join(lines))
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, outputs[-1][-3000:]
    else:
        pytest.fail('training did not finish after 12 attempts')
    assert kills >= 2
    # the run right after the mid-save kill resumed from the newest complete state and cleaned up
    saved_iter = _saved_iter(killed_mid_save[0])
    after = outputs[1]
    assert f'Resume: using training state {exp / "training_states" / f"{saved_iter - 1}.state"}' in after
    assert f'Resume: removed {killed_mid_save[0]}, left by an interrupted save' in after
    assert not _tmp_files(exp)
    full = ''.join(outputs)
    assert 'Resume: data position epoch' in full
    # bit-identical weights and optimizer state
    ref_exp = experiment_dir(reference_run['name'])
    ref, got = params(ref_exp / 'models' / 'net_g_latest.pth'), params(exp / 'models' / 'net_g_latest.pth')
    assert ref.keys() == got.keys()
    different = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not different, f'{len(different)} tensors differ after resume, e.g. {different[:3]}'
    ref_state = torch.load(ref_exp / 'training_states' / f'{TOTAL_ITER}.state', weights_only=True)
    got_state = torch.load(exp / 'training_states' / f'{TOTAL_ITER}.state', weights_only=True)
    for a, b in zip(ref_state['optimizers'][0]['state'].values(), got_state['optimizers'][0]['state'].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_network_is_refused_before_writing(reference_run, photo_data):
    exp = experiment_dir(reference_run['name'])
    before = snapshot(exp)
    opt = dict(reference_run['opt'], network_g=dict(MICRO_NET, num_feat=12))
    proc = run_entry('train', '-opt', write_options(opt, reference_run['tmp'] / 'other_net.yml'), '--auto_resume',
                     check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f'refusing to resume from {exp / "training_states" / f"{TOTAL_ITER}.state"}' in out
    assert 'num_feat: 8 saved, 12 now' in out and 'differ in shape' in out
    assert snapshot(exp) == before


def test_resume_with_another_stage_is_refused_before_writing(reference_run):
    exp = experiment_dir(reference_run['name'])
    before = snapshot(exp)
    opt = dict(reference_run['opt'], train=dict(reference_run['opt']['train'], stage='convergence'),
               auto_resume=True, rank=0)
    opt['path'] = dict(opt['path'], training_states=str(exp / 'training_states'), models=str(exp / 'models'))
    with pytest.raises(ValueError, match=r"it was written by the 'divergence' stage but this options file trains "
                                         r"train:stage 'convergence'"):
        load_resume_state(opt)
    assert snapshot(exp) == before
