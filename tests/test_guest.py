"""A good guest in BasicSR (issue 20), as a user meets it: a user's own registration of a name d2csr also uses,
option files that try to run code or explode, missing data before any folder, two trainings of one name at once,
a lock left by ``kill -9``, ``--help`` before torch, the end of a distributed run. The hook side (BasicSR's own
scripts) is in ``test_basicsr_entry_points.py``."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import (ROOT, TINY_NET, WORK, experiment_dir, load_script, results_dir, run_entry, subprocess_env,
                      tiny_options, unique_name, write_options)

REGISTRIES = ('ARCH_REGISTRY', 'MODEL_REGISTRY', 'LOSS_REGISTRY', 'DATASET_REGISTRY', 'METRIC_REGISTRY')
D2CSR_NAMES = {'arch': ['D2CSR', 'IMDN', 'RDN', 'VDSR'], 'model': ['D2CModel'],
               'loss': ['ConvergenceLoss', 'DivergenceLoss'],
               'dataset': ['D2CRealSRDataset', 'DRealSRDataset', 'PairListDataset', 'PairedFolderDataset',
                           'RealSRDataset'],
               'metric': ['calculate_d2csr_paper_psnr', 'calculate_d2csr_paper_ssim', 'calculate_lpips']}


# --------------------------------------------------------------------------------------------------
# 1. never take a name
def test_d2csr_inserts_nothing_into_basicsr_registries():
    """Every d2csr module imported: BasicSR's registries hold no d2csr object (a plain ``@X_REGISTRY.register()``
    from ``basicsr.utils.registry`` in d2csr would take the name from users: use ``d2csr.utils.registry``)."""
    import importlib

    import basicsr.utils.registry as basicsr_registry

    from d2csr.utils.registry import registered_names

    for path in sorted((ROOT / 'd2csr').rglob('*.py')):
        module = '.'.join(path.relative_to(ROOT).with_suffix('').parts).removesuffix('.__init__')
        if module not in ('d2csr.train', 'd2csr.test'):
            importlib.import_module(module)
    taken = [f'{name}: {key}' for name in REGISTRIES for key, obj in getattr(basicsr_registry, name)
             if getattr(obj, '__module__', '').startswith('d2csr')]
    assert taken == []
    assert registered_names() == D2CSR_NAMES  # the list the docs give (docs/_incoming/guest.md)


USER_REGISTERS = r'''
import contextlib, importlib.util, io, json, sys
# BasicSR alone on current torchvision needs the shim: load d2csr's file by path (not the d2csr package)
spec = importlib.util.spec_from_file_location('shim', sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

@ARCH_REGISTRY.register()
class RDN:  # the user's, registered before import d2csr
    pass

import d2csr  # noqa
from d2csr.archs import D2CSR, IMDN as D2C_IMDN, RDN as D2C_RDN

@ARCH_REGISTRY.register()
class IMDN:  # registered after import d2csr
    pass

@METRIC_REGISTRY.register()
def calculate_lpips(**kwargs):
    return 0.0

@DATASET_REGISTRY.register()
class PairedFolderDataset:
    pass

out = io.StringIO()
with contextlib.redirect_stdout(out):
    found = {
        'RDN is the user\'s': ARCH_REGISTRY.get('RDN') is RDN,
        'IMDN is the user\'s': ARCH_REGISTRY.get('IMDN') is IMDN,
        'calculate_lpips is the user\'s': METRIC_REGISTRY.get('calculate_lpips') is calculate_lpips,
        'PairedFolderDataset is the user\'s': DATASET_REGISTRY.get('PairedFolderDataset') is PairedFolderDataset,
        'd2csr.RDN is d2csr\'s': ARCH_REGISTRY.get('d2csr.RDN') is D2C_RDN,
        'd2csr.IMDN is d2csr\'s': ARCH_REGISTRY.get('d2csr.IMDN') is D2C_IMDN,
        'D2CSR is d2csr\'s': ARCH_REGISTRY.get('D2CSR') is D2CSR,
        'D2CModel is d2csr\'s': MODEL_REGISTRY.get('D2CModel').__module__ == 'd2csr.models.d2csr_model',
        'DivergenceLoss is d2csr\'s': LOSS_REGISTRY.get('DivergenceLoss').__module__ == 'd2csr.losses.d2csr_losses',
        'EDSR is BasicSR\'s': ARCH_REGISTRY.get('EDSR').__module__ == 'basicsr.archs.edsr_arch',
    }
try:
    ARCH_REGISTRY.get('NoSuchArch')
    found['unknown name raises KeyError'] = False
except KeyError:
    found['unknown name raises KeyError'] = True
found['nothing printed'] = out.getvalue() == ''  # no "Name D2CSR is not found, use name: D2CSR_basicsr!"
print(json.dumps(found))
'''


def test_a_user_registers_rdn_before_and_after_import_d2csr(tmp_path):
    """No hook (``D2CSR_BASICSR_HOOK=0``): the user's classes register in both orders and BasicSR builds them;
    d2csr's stay reachable under ``d2csr.<name>``, its other names work, BasicSR's own lookups are unchanged."""
    proc = subprocess.run([sys.executable, '-c', USER_REGISTERS, str(ROOT / 'd2csr' / 'utils' / 'torchvision_shim.py')],
                          cwd=tmp_path, env=subprocess_env(D2CSR_BASICSR_HOOK='0'), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [k for k, ok in found.items() if not ok] == []


@pytest.fixture
def user_rdn():
    """A user's ``RDN`` in BasicSR's registry for one test (d2csr's RDN with another name in the log)."""
    from basicsr.utils import get_root_logger
    from basicsr.utils.registry import ARCH_REGISTRY

    from d2csr.archs import RDN as D2C_RDN

    def __init__(self, **opt):
        D2C_RDN.__init__(self, **opt)
        get_root_logger().info('my_project: the user\'s RDN is built')

    user_rdn = type('RDN', (D2C_RDN, ), {'__module__': 'my_project.archs', '__qualname__': 'RDN', '__init__': __init__})
    ARCH_REGISTRY.register(user_rdn)
    yield user_rdn
    del ARCH_REGISTRY._obj_map['RDN']


def rdn_options(photo_data, name, rdn_type):
    opt = tiny_options(photo_data, name, total_iter=1)
    opt.update(model_type='SRModel', network_g=dict(type=rdn_type, num_feat=8, num_block=1, num_layer=1,
                                                     num_grow_ch=4, upscale=4))
    opt['train'] = dict(ema_decay=0, optim_g=dict(type='Adam', lr=1e-4), total_iter=1, warmup_iter=-1,
                        scheduler=dict(type='MultiStepLR', milestones=[100], gamma=0.5),
                        pixel_opt=dict(type='L1Loss', loss_weight=1.0))
    del opt['datasets']['val'], opt['val']
    return opt


def test_a_shadowed_name_is_logged_once_and_the_owned_name_reaches_d2csr(user_rdn, photo_data, tmp_path,
                                                                         monkeypatch):
    """A user's ``RDN`` shadows d2csr's: ``type: RDN`` builds the user's and the log says so once, with the owned
    name; ``type: d2csr.RDN`` builds d2csr's. On the CPU without OMP_NUM_THREADS, the thread count is logged."""
    name = unique_name('shadow')
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    run_entry('train', '-opt', write_options(rdn_options(photo_data, name, 'RDN'), tmp_path / 'rdn.yml'))
    log = next(experiment_dir(name).glob('train_*.log')).read_text()
    warning = ("d2csr: the arch name 'RDN' is registered by my_project.archs.RDN, which BasicSR uses here; d2csr's "
               "RDN (d2csr.archs.rdn_arch.RDN) is the arch 'd2csr.RDN'")
    assert log.count(warning) == 1
    assert "my_project: the user's RDN is built" in log
    assert 'CPU thread(s) per process (the CPUs free now' in log and 'set OMP_NUM_THREADS to choose' in log

    name = unique_name('owned')
    run_entry('train', '-opt', write_options(rdn_options(photo_data, name, 'd2csr.RDN'), tmp_path / 'd2c.yml'))
    log = next(experiment_dir(name).glob('train_*.log')).read_text()
    assert 'Network [RDN] is created.' in log and warning not in log and "the user's RDN" not in log
    assert "options name d2csr's d2csr.RDN" in log  # a D2C run: d2csr's changes are in use, and the log says so


# --------------------------------------------------------------------------------------------------
# 3. options files are data
EVIL = 'name: evil\nmodel_type: D2CModel\nnetwork_g:\n  type: !!python/object/apply:os.system ["touch PWNED"]\n'
BOMB = 'name: bomb\nlol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n' + ''.join(
    f'lol{i}: &l{i} [' + ', '.join([f'*l{i - 1}'] * 9) + ']\n' for i in range(1, 10)) + 'network_g: {type: D2CSR}\n'


def test_the_loader_keeps_basicsr_semantics_and_refuses_at_once(tmp_path):
    from collections import OrderedDict

    from d2csr.utils.yaml_io import MAX_BYTES, OptionsFileError, UnsafeOptionsError, load_options

    opt = load_options(ROOT / 'options' / 'train_D2C_div_x4.yml')
    assert isinstance(opt, OrderedDict) and list(opt)[:4] == ['name', 'model_type', 'scale', 'num_gpu']
    assert opt['train']['optim_g']['lr'] == 1e-4 and isinstance(opt['datasets']['train'], OrderedDict)  # !!float
    (tmp_path / 'std.yml').write_text('a: !!str 3\nb: !!int "4"\nbase: &b {x: 1}\nc:\n  <<: *b\n  y: 2\n')
    assert load_options(tmp_path / 'std.yml') == {'a': '3', 'b': 4, 'base': {'x': 1}, 'c': {'x': 1, 'y': 2}}

    cases = {'evil.yml': (EVIL, r'evil\.yml, line 4: the tag !!python/object/apply:os\.system is refused'),
             'bomb.yml': (BOMB, r'bomb\.yml, line \d+: the document expands to more than 10000 values'),
             'self.yml': ('a: &a [1, *a]\n', r'self\.yml, line 1: the alias \*a is inside its own anchor'),
             'deep.yml': ('[' * 200_000, r'deep\.yml, line 1: lists / mappings nested more than 64 deep'),
             'big.yml': ('a: 1\n' + '#' * MAX_BYTES, r'big\.yml is over 1 MB'),
             'tag.yml': ('a: !include other.yml\n', r'tag\.yml, line 1: the tag !include is not a standard YAML tag')}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        start = time.perf_counter()
        with pytest.raises(UnsafeOptionsError, match=message):
            load_options(tmp_path / name)
        assert time.perf_counter() - start < 1.0, name
    (tmp_path / 'bad.yml').write_text('a: b\n c: d\n')
    with pytest.raises(OptionsFileError, match=r'bad\.yml is not valid YAML \(line 2, column 3: mapping values'):
        load_options(tmp_path / 'bad.yml')
    assert not (tmp_path / 'PWNED').exists()


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    from d2csr.archs import D2CSR
    from d2csr.convert import save_basicsr_checkpoint

    folder = tmp_path_factory.mktemp('ckpt') / 'experiments' / 'run' / 'models'
    folder.mkdir(parents=True)
    save_basicsr_checkpoint(D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=4, fusion_feat=8),
                            folder / 'net_g_1.pth')
    return folder / 'net_g_1.pth'


def run_program(program, yml, checkpoint, cwd):
    """What each d2csr program that reads an options file answers to ``yml``: ``(exit status, message)``."""
    if program in ('train', 'test'):
        proc = run_entry(program, '-opt', yml, check=False, cwd=cwd)
        return proc.returncode, proc.stderr
    image = cwd / 'a.png'
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.full((6, 7, 3), 90, np.uint8))
    model = checkpoint
    if program == 'beside a checkpoint':  # inference without -opt reads the options file BasicSR saved there
        (checkpoint.parent.parent / yml.name).write_text(yml.read_text())
        script, argv = load_script('inference/inference_d2csr.py'), ['-i', str(image), '-o', str(cwd / 'o')]
    elif program == 'inference -opt':
        script, argv = load_script('inference/inference_d2csr.py'), ['-i', str(image), '-o', str(cwd / 'o'),
                                                                     '-opt', str(yml)]
    else:
        script, argv = load_script('scripts/visualize_d2c.py'), ['--lq', str(image), '-o', str(cwd / 'o'),
                                                                 '-opt', str(yml)]
    old = os.getcwd()
    os.chdir(cwd)
    try:
        script.main(argv + ['--model_path', str(model), '--device', 'cpu'])
    except SystemExit as exit_:
        return 1, str(exit_.code)
    finally:
        os.chdir(old)
        if program == 'beside a checkpoint':
            (checkpoint.parent.parent / yml.name).unlink()
    return 0, ''


@pytest.mark.parametrize('program', ['train', 'test', 'inference -opt', 'beside a checkpoint', 'visualize -opt'])
def test_every_program_refuses_python_tags_and_alias_bombs(program, tiny_checkpoint, tmp_path):
    for text, message in ((EVIL, r'evil\.yml, line 4: the tag !!python/object/apply:os\.system is refused: options '
                                 r'files are data'),
                          (BOMB, r'bomb\.yml, line \d+: the document expands to more than 10000 values')):
        yml = tmp_path / ('evil.yml' if text is EVIL else 'bomb.yml')
        yml.write_text(text)
        status, said = run_program(program, yml, tiny_checkpoint, tmp_path)
        assert status != 0
        assert re.search(message, said), said
    assert not (tmp_path / 'PWNED').exists() and not any((tmp_path / d).exists() for d in ('experiments', 'results'))


def test_missing_keys_and_malformed_yaml_are_listed_without_a_traceback(photo_data, tmp_path):
    opt = tiny_options(photo_data, unique_name('keys'))
    del opt['num_gpu'], opt['train']['total_iter'], opt['logger']['print_freq']
    proc = run_entry('train', '-opt', write_options(opt, tmp_path / 'keys.yml'), '--force_yml', 'nope:x=1',
                     check=False, cwd=tmp_path)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    for key in ('num_gpu', 'train:total_iter', 'logger:print_freq'):  # every problem, each naming its key
        assert re.search(rf'\b{key}:? (is )?missing', proc.stderr), (key, proc.stderr)
    assert '--force_yml nope:x=1' in proc.stderr
    (tmp_path / 'bad.yml').write_text('name: x\n  model_type: y\n')
    proc = run_entry('test', '-opt', tmp_path / 'bad.yml', check=False, cwd=tmp_path)
    assert proc.returncode == 1 and 'bad.yml is not valid YAML (line 2' in proc.stderr and 'Traceback' not in \
        proc.stderr
    assert sorted(os.listdir(tmp_path)) == ['bad.yml', 'keys.yml']


# --------------------------------------------------------------------------------------------------
# entry points: before anything is written
def test_the_readme_command_without_data_stops_before_any_folder(tmp_path):
    proc = run_entry('train', '-opt', ROOT / 'options' / 'train_D2C_div_x4.yml', '--force_yml', 'num_gpu=0',
                     check=False, cwd=tmp_path)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert 'datasets:train:dataroot' in proc.stderr and 'datasets/RealSR_V3' in proc.stderr  # names what is missing
    proc = run_entry('test', '-opt', ROOT / 'options' / 'test_D2C_x4.yml', '--force_yml', 'num_gpu=0', check=False,
                     cwd=tmp_path)
    assert proc.returncode == 1 and 'datasets:test_1:dataroot' in proc.stderr and 'Traceback' not in proc.stderr
    assert os.listdir(tmp_path) == []  # no experiments/, tb_logger/, results/


def test_help_answers_before_torch_is_imported():
    code = ('import runpy, sys; sys.argv = [sys.argv[1], "--help"]\ntry:\n    runpy.run_path(sys.argv[0], '
            'run_name="__main__")\nexcept SystemExit:\n    pass\nprint("torch" in sys.modules, "basicsr" in sys.modules)')
    for script in ('train', 'test'):
        proc = subprocess.run([sys.executable, '-c', code, str(ROOT / 'd2csr' / f'{script}.py')],
                              env=subprocess_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == 'False False'
        assert 'D2C-SR' in proc.stdout and '--force_yml' in proc.stdout and 'patch' not in proc.stdout.lower()


# --------------------------------------------------------------------------------------------------
# 4. one experiment name, one run
def test_a_second_training_of_a_running_name_stops_and_kill_9_leaves_no_lock(photo_data, tmp_path):
    name = unique_name('twice')
    opt = tiny_options(photo_data, name, total_iter=100_000, **{'logger:save_checkpoint_freq': 1})
    del opt['datasets']['val'], opt['val']
    yml = write_options(opt, tmp_path / 'twice.yml')
    states = experiment_dir(name) / 'training_states'
    with open(tmp_path / 'first.out', 'w') as out:
        first = subprocess.Popen([sys.executable, str(ROOT / 'd2csr' / 'train.py'), '-opt', str(yml)], cwd=WORK,
                                 env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while not list(states.glob('*.state')):  # the first is training (and saving) now
            assert first.poll() is None, (tmp_path / 'first.out').read_text()[-3000:]
            assert time.time() < deadline, 'the first training did not start'
            time.sleep(0.2)
        # the same name, started while the first runs (1 iteration: were it not refused, it would end soon)
        second = run_entry('train', '-opt', yml, '--force_yml', 'train:total_iter=1', check=False)
        assert first.poll() is None
        assert second.returncode == 1 and 'Traceback' not in second.stderr
        assert f'is in use by a running training of the same name: pid {first.pid} on host {socket.gethostname()}' \
            in second.stderr
        assert '--auto_resume' in second.stderr and f'--force_yml name={name}_2' in second.stderr
        assert list(WORK.glob(f'experiments/{name}_archived_*')) == []  # nothing of the first was moved
        assert len(list(experiment_dir(name).glob('train_*.log'))) == 1
    finally:
        first.send_signal(signal.SIGKILL)  # kill -9: the lock file stays, the lock goes with the process
        first.wait()
    assert (WORK / 'experiments' / f'.{name}.lock').exists()
    newest = max(int(p.stem) for p in states.glob('*.state'))
    resumed = run_entry('train', '-opt', yml, '--auto_resume', '--force_yml', f'train:total_iter={newest + 1}')
    assert 'Resume: using training state' in resumed.stdout + resumed.stderr
    assert (experiment_dir(name) / 'models' / 'net_g_latest.pth').exists()


def test_a_test_run_of_a_name_in_use_stops_before_its_results_folder(photo_data, tmp_path, tiny_checkpoint):
    import fcntl

    from d2csr.options import test_options

    name = unique_name('test_locked')
    network = dict(type='D2CSR', num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=4, fusion_feat=8)
    yml = write_options(test_options(name, photo_data, network, str(tiny_checkpoint)), tmp_path / 'test.yml')
    lock = WORK / 'results' / f'.{name}.lock'
    lock.parent.mkdir(exist_ok=True)
    with open(lock, 'w') as held:  # another process's lock (a second open file: flock sees two holders)
        fcntl.flock(held, fcntl.LOCK_EX)
        json.dump({'pid': 4242, 'host': 'gpu07', 'command': 'd2csr/test.py -opt test.yml'}, held)
        held.flush()
        proc = run_entry('test', '-opt', yml, check=False)
    assert proc.returncode == 1
    assert 'is in use by a running test of the same name: pid 4242 on host gpu07' in proc.stderr
    assert not results_dir(name).exists()
    run_entry('test', '-opt', yml)  # released: the same command runs
    assert next(results_dir(name).glob('test_*.log'))


# --------------------------------------------------------------------------------------------------
# distributed: a finished run waits for every rank
def test_a_finished_distributed_run_exits_0_with_its_final_validation(photo_data, tmp_path):
    name = unique_name('dist_end')
    net = dict(TINY_NET, num_feat=8, fusion_feat=8)
    opt = tiny_options(photo_data, name, total_iter=2, network=net, **{'datasets:train:batch_size_per_gpu': 1,
                                                                       'datasets:train:dataset_enlarge_ratio': 1})
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           str(ROOT / 'd2csr' / 'train.py'), '-opt', str(write_options(opt, tmp_path / 'dist.yml')),
           '--launcher', 'pytorch']
    proc = subprocess.run(cmd, cwd=WORK, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert 'terminate called' not in proc.stderr
    log = next(experiment_dir(name).glob('train_*.log')).read_text()
    assert 'Validation photos_val' in log.split('End of training')[-1]  # the final validation, after training
    assert (WORK / 'experiments' / f'.{name}.lock').exists()  # the ranks' one lock
    assert torch.load(experiment_dir(name) / 'models' / 'net_g_latest.pth', weights_only=True)['params']
    assert Path(experiment_dir(name)).is_dir()
