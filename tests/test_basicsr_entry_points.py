"""BasicSR's own entry points run D2C: ``python -m basicsr.train`` / ``basicsr.test`` with d2csr installed.

Installing d2csr puts ``d2csr-basicsr-hook.pth`` into site-packages. Here the repository's own ``.pth`` file is
processed the way site-packages processes it (``site.addsitedir`` from a ``sitecustomize``), so the entry
points see what an installed d2csr gives them. ``test_pip_install_puts_the_hook_into_site_packages`` checks
the installation itself (``pip install .`` and ``pip install -e .`` into a fresh virtual environment).
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from conftest import ROOT, subprocess_env, tiny_options, write_options

HOOK_PTH = 'd2csr-basicsr-hook.pth'


@pytest.fixture(scope='module')
def site_env(tmp_path_factory):
    """Environment whose interpreters process the repository's .pth file at start-up, like site-packages."""
    site = tmp_path_factory.mktemp('site')
    (site / 'sitecustomize.py').write_text(f'import site\nsite.addsitedir({str(ROOT)!r})\n')

    def env(**extra):
        e = subprocess_env(**extra)
        e['PYTHONPATH'] = str(site) + os.pathsep + e['PYTHONPATH']
        return e

    return env


def run(args, env, cwd, timeout=600):
    return subprocess.run([sys.executable, *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_the_hook_imports_nothing_at_start_up(site_env, tmp_path):
    # the finder must come before the path finder (which would find basicsr itself); other finders, such as
    # setuptools' DistutilsMetaFinder from its own .pth in site-packages, may stand anywhere
    code = ('import sys; names = [getattr(f, "__name__", type(f).__name__) for f in sys.meta_path]; '
            'print(sorted(m for m in ("torch", "torchvision", "basicsr", "d2csr") if m in sys.modules), '
            '"BasicSRFinder" if "BasicSRFinder" in names and names.index("BasicSRFinder") < names.index("PathFinder") '
            'else names)')
    proc = run(['-c', code], site_env(), tmp_path)
    assert proc.stdout.split() == ['[]', 'BasicSRFinder'], proc.stdout + proc.stderr
    proc = run(['-c', code], site_env(D2CSR_BASICSR_HOOK='0'), tmp_path)
    assert proc.stdout.split()[0] == '[]' and 'BasicSRFinder' not in proc.stdout
    # a plain `import basicsr` gets the shim and d2csr's names; a user's own RDN (and VDSR...) registered after
    # it (only the installed hook imported d2csr) is what BasicSR builds, d2csr's stays reachable as d2csr.RDN
    code = ('import basicsr; from basicsr.utils.registry import ARCH_REGISTRY as A, LOSS_REGISTRY as L, '
            'MODEL_REGISTRY as M\n'
            'class RDN: pass\nclass VDSR: pass\nclass DivergenceLoss: pass\n'
            'A.register(RDN); A.register(VDSR); L.register(DivergenceLoss)\n'
            'print(M.get("D2CModel").__module__, A.get("RDN").__module__, A.get("VDSR").__module__, '
            'L.get("DivergenceLoss").__module__, A.get("d2csr.RDN").__module__, A.get("D2CSR").__module__)')
    proc = run(['-c', code], site_env(), tmp_path)
    assert proc.stdout.split() == ['d2csr.models.d2csr_model', '__main__', '__main__', '__main__',
                                   'd2csr.archs.rdn_arch', 'd2csr.archs.d2csr_arch'], proc.stderr


def test_python_m_basicsr_train_and_test_run_d2c(site_env, photo_data, tmp_path):
    """Stage 1 through ``python -m basicsr.train``, then ``python -m basicsr.test`` on its weights; BasicSR's
    flags (``--force_yml``) work, and ``experiments/`` / ``results/`` land in the current directory."""
    opt = tiny_options(photo_data, 'm_train', total_iter=3)
    proc = run(['-m', 'basicsr.train', '-opt', write_options(opt, tmp_path / 'div.yml'),
                '--force_yml', 'logger:save_checkpoint_freq=3'], site_env(), tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    models = tmp_path / 'experiments' / 'm_train' / 'models'
    assert sorted(p.name for p in models.glob('net_g_*.pth')) == ['net_g_3.pth', 'net_g_latest.pth']  # --force_yml
    log = next((tmp_path / 'experiments' / 'm_train').glob('train_*.log')).read_text()
    assert "Model [D2CModel] is created" in log and 'l_triplet' in log and 'psnr_oracle' in log
    assert set(torch.load(models / 'net_g_latest.pth', weights_only=True)) == {'params'}

    test = tiny_options(photo_data, 'm_test', pretrain=str(models / 'net_g_latest.pth'))
    test['datasets'] = {'test_1': dict(test['datasets']['val'])}
    del test['train']
    proc = run(['-m', 'basicsr.test', '-opt', write_options(test, tmp_path / 'test.yml')], site_env(), tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = next((tmp_path / 'results' / 'm_test').glob('test_*.log')).read_text()
    assert '# psnr:' in log and '# psnr_oracle' in log

    # switched off, BasicSR is on its own again (and fails on current torchvision, as the issue describes)
    proc = run(['-m', 'basicsr.train', '-opt', tmp_path / 'div.yml'], site_env(D2CSR_BASICSR_HOOK='0'), tmp_path)
    assert proc.returncode != 0 and 'functional_tensor' in proc.stderr


def basicsr_checkout(folder, edit=None):
    """A BasicSR source tree (here: copies of the installed package's ``__init__.py`` and ``train.py`` in a
    ``basicsr`` folder), its ``train.py`` changed by ``edit(source) -> source``; returns the checkout."""
    import basicsr

    (folder / 'basicsr').mkdir(parents=True)
    shutil.copy(Path(basicsr.__file__).parent / '__init__.py', folder / 'basicsr' / '__init__.py')
    source = (Path(basicsr.__file__).parent / 'train.py').read_text()
    (folder / 'basicsr' / 'train.py').write_text(edit(source) if edit else source)
    return folder


def edit_like_a_fork(source):
    """A fork's edits: its own create_train_val_dataloader and train_pipeline lines."""
    marks = [('    train_loader, val_loaders = None, []\n',
              "    logger.info('fork: my create_train_val_dataloader')\n"),
             ("    # training\n    logger.info(f'Start training",
              "    print('fork: my train_pipeline', flush=True)\n")]
    for anchor, line in marks:
        assert anchor in source, anchor
        source = source.replace(anchor, anchor + line if anchor.endswith('\n') else line + anchor, 1)
    return source


def test_an_edited_basicsr_train_py_runs_d2c_with_its_edits(site_env, photo_data, tmp_path):
    """``python basicsr/train.py -opt X`` in an edited fork: the fork's code runs (its edited
    ``create_train_val_dataloader`` wrapped, not replaced), with d2csr's changes for the D2C run: its checks, and
    ``--auto_resume`` on the CPU (BasicSR's own load_resume_state needs a GPU) at the exact data position. The
    checkout is the root, as BasicSR has it."""
    checkout = basicsr_checkout(tmp_path / 'BasicSR', edit_like_a_fork)
    opt = tiny_options(photo_data, 'fork_train', total_iter=2, **{'logger:save_checkpoint_freq': 1})
    del opt['datasets']['val'], opt['val']
    yml = write_options(opt, tmp_path / 'div.yml')
    proc = run(['basicsr/train.py', '-opt', yml], site_env(), checkout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert 'fork: my train_pipeline' in proc.stdout
    run_dir = checkout / 'experiments' / 'fork_train'
    log = next(run_dir.glob('train_*.log')).read_text()
    assert 'fork: my create_train_val_dataloader' in log and "d2csr: D2C run (its options name d2csr's D2CModel" in log
    assert (checkout / 'experiments' / '.fork_train.lock').is_file()

    proc = run(['basicsr/train.py', '-opt', yml, '--auto_resume', '--force_yml', 'train:total_iter=3'], site_env(),
               checkout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f'Resume: using training state {run_dir}/training_states/2.state (iteration 2' in proc.stdout
    log = sorted(run_dir.glob('train_*.log'))[-1].read_text()
    assert 'fork: my create_train_val_dataloader' in log and 'Resume: data position epoch' in log
    assert (run_dir / 'models' / 'net_g_3.pth').is_file() and not list(checkout.glob('experiments/*_archived_*'))


def msrresnet_options(name, data, val_hr):
    """A plain BasicSR run: MSRResNet / SRModel on the photo pairs, validated on HR folders ``val_hr``."""
    folders = lambda hr, lr, **kw: dict(type='PairedImageDataset', dataroot_gt=str(hr), dataroot_lq=str(lr),  # noqa
                                        filename_tmpl='{}', io_backend=dict(type='disk'), **kw)
    return dict(
        name=name, model_type='SRModel', scale=4, num_gpu=0, manual_seed=0,
        datasets=dict(train=folders(data / 'train' / 'HR', data / 'train' / 'LR', name='train', gt_size=32,
                                    use_hflip=True, use_rot=True, num_worker_per_gpu=0, batch_size_per_gpu=2,
                                    dataset_enlarge_ratio=1),
                      val=folders(val_hr, data / 'val' / 'LR', name='val')),
        network_g=dict(type='MSRResNet', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=4),
        path=dict(pretrain_network_g=None, strict_load_g=True, resume_state=None),
        train=dict(ema_decay=0, optim_g=dict(type='Adam', lr=1e-3), total_iter=2, warmup_iter=-1,
                   scheduler=dict(type='MultiStepLR', milestones=[100], gamma=0.5),
                   pixel_opt=dict(type='L1Loss', loss_weight=1.0)),
        val=dict(val_freq=100, save_img=True, metrics=dict(psnr=dict(type='calculate_psnr', crop_border=4))),
        logger=dict(print_freq=1, save_checkpoint_freq=100, use_tb_logger=False))


def test_a_plain_basicsr_run_is_basicsr_alone(site_env, photo_data, tmp_path):
    """A non-D2C run (MSRResNet) whose validation HR is 2 px larger than 4 x LR, through BasicSR's own script:
    with d2csr installed it runs exactly as BasicSR alone (with only the torchvision shim): BasicSR crops the HR,
    and the weights, metrics and files are the same. ``-h`` is BasicSR's."""
    import cv2

    val_hr = tmp_path / 'val_HR_plus_2'
    val_hr.mkdir()
    for path in (photo_data / 'val' / 'HR').iterdir():
        hr = cv2.imread(str(path))
        cv2.imwrite(str(val_hr / path.name), cv2.copyMakeBorder(hr, 0, 2, 0, 2, cv2.BORDER_REFLECT))
    yml = write_options(msrresnet_options('plain', photo_data, val_hr), tmp_path / 'plain.yml')
    shim_only = tmp_path / 'shim_only'  # BasicSR alone: d2csr's hook off, only the torchvision shim
    shim_only.mkdir()
    (shim_only / 'sitecustomize.py').write_text(
        'import importlib.util\n'
        f'spec = importlib.util.spec_from_file_location("shim", {str(ROOT / "d2csr" / "utils" / "torchvision_shim.py")!r})\n'
        'spec.loader.exec_module(importlib.util.module_from_spec(spec))\n')
    alone_env = subprocess_env(D2CSR_BASICSR_HOOK='0')
    alone_env['PYTHONPATH'] = str(shim_only) + os.pathsep + alone_env['PYTHONPATH']
    runs = {}
    for label, env in (('installed', site_env()), ('alone', alone_env)):  # (no 'd2csr' in the paths)
        checkout = basicsr_checkout(tmp_path / label)
        proc = run(['basicsr/train.py', '-opt', yml], env, checkout)
        assert proc.returncode == 0, label + proc.stderr[-4000:]
        run_dir = checkout / 'experiments' / 'plain'
        log = next(run_dir.glob('train_*.log')).read_text()
        files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob('*') if p.is_file() and p.suffix != '.log')
        weights = torch.load(run_dir / 'models' / 'net_g_latest.pth', weights_only=True)['params']
        runs[label] = dict(log=log, files=files, weights=weights, psnr=re.findall(r'# psnr: ([\d.]+)', log),
                           out=proc.stdout, lock=(checkout / 'experiments' / '.plain.lock').exists())
    ours, alone = runs['installed'], runs['alone']
    assert ours['psnr'] and ours['psnr'] == alone['psnr']  # validated on the cropped HR, as BasicSR does
    assert ours['files'] == alone['files'] and 'visualization/chelsea/chelsea_2.png' in ours['files']
    assert all(torch.equal(ours['weights'][k], alone['weights'][k]) for k in alone['weights'])
    assert 'd2csr' not in (ours['log'] + ours['out']).replace(str(tmp_path), '') and not ours['lock']  # unused
    proc = run(['basicsr/train.py', '-h'], site_env(), tmp_path / 'installed')
    assert proc.returncode == 0 and proc.stdout.startswith('usage: train.py [-h] -opt OPT [--launcher')
    assert 'D2C' not in proc.stdout


@pytest.mark.parametrize('editable', [False, True], ids=['pip install .', 'pip install -e .'])
def test_pip_install_puts_the_hook_into_site_packages(editable, tmp_path):
    """A fresh virtual environment (on this interpreter's packages), d2csr installed from a copy of the
    repository: at start-up only the finder is there; importing basicsr registers d2csr from that copy."""
    src = tmp_path / 'src'
    files = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in set(files) | {'d2csr_basicsr_hook.py', HOOK_PTH}:
        if rel.startswith('d2csr/') or rel in ('setup.py', 'README.md', 'd2csr_basicsr_hook.py', HOOK_PTH):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / rel, src / rel)
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', '--without-pip', str(venv)], check=True)
    python = venv / 'bin' / 'python'
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['OMP_NUM_THREADS'] = '1'
    site = subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    # Run from a virtual environment (as most users install), --system-site-packages gives the new one the *base*
    # interpreter's packages only; it also needs this environment's (torch, BasicSR, setuptools), listed first
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ('purelib', 'platlib'))
    (Path(site) / 'd2csr_test_outer_env.pth').write_text(''.join(f'{p}\n' for p in ours))
    install = [sys.executable, '-m', 'pip', '--python', str(python), 'install', '-q', '--no-deps',
               '--no-build-isolation', '--no-index', *(['-e'] if editable else []), str(src)]
    proc = subprocess.run(install, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (Path(site) / HOOK_PTH).is_file()
    code = ('import sys; assert "torch" not in sys.modules and "basicsr" not in sys.modules; '
            'import basicsr, d2csr; from basicsr.utils.registry import ARCH_REGISTRY; '
            'print(ARCH_REGISTRY.get("D2CSR").__name__, d2csr.__file__)')
    proc = subprocess.run([str(python), '-c', code], env=env, capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    name, where = proc.stdout.split()
    assert name == 'D2CSR' and Path(where).resolve().is_relative_to(src if editable else Path(site).resolve())


@pytest.mark.parametrize('orig_argv, argv0, expected', [
    (['python', '-m', 'basicsr.train', '-opt', 'x.yml'], '-m', ('train', None)),
    (['python', '-u', '-X', 'importtime', '-m', 'basicsr.test'], '-m', ('test', None)),  # torchrun adds -u
    (['python', '-m', 'basicsr.utils.download_util'], '-m', (None, None)),
    (['python', '-c', 'import basicsr'], '-c', (None, None)),
    (['python', 'd2csr/train.py', '-m', 'basicsr.train'], 'd2csr/train.py', (None, None)),
])
def test_which_programs_are_basicsr_entry_points(orig_argv, argv0, expected, monkeypatch):
    import d2csr_basicsr_hook

    monkeypatch.setattr(sys, 'orig_argv', orig_argv)
    monkeypatch.setattr(sys, 'argv', [argv0])
    assert d2csr_basicsr_hook.basicsr_entry_point() == expected


def test_a_script_in_a_basicsr_folder_is_an_entry_point(tmp_path, monkeypatch):
    import d2csr_basicsr_hook

    (tmp_path / 'basicsr').mkdir()
    (tmp_path / 'basicsr' / '__init__.py').write_text('')
    script = tmp_path / 'basicsr' / 'test.py'
    monkeypatch.setattr(sys, 'orig_argv', ['python', str(script)])
    monkeypatch.setattr(sys, 'argv', [str(script)])
    assert d2csr_basicsr_hook.basicsr_entry_point() == ('test', str(script))
