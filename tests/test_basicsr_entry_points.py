"""BasicSR's own entry points run D2C: ``python -m basicsr.train`` / ``basicsr.test`` with d2csr installed.

Installing d2csr puts ``d2csr-basicsr-hook.pth`` into site-packages. Here the repository's own ``.pth`` file is
processed the way site-packages processes it (``site.addsitedir`` from a ``sitecustomize``), so the entry
points see what an installed d2csr gives them. ``test_pip_install_puts_the_hook_into_site_packages`` checks
the installation itself (``pip install .`` and ``pip install -e .`` into a fresh virtual environment).
"""
import os
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
    # a plain `import basicsr` gets the shim and d2csr's registrations
    code = 'import basicsr; from basicsr.utils.registry import MODEL_REGISTRY as M; print(M.get("D2CModel").__module__)'
    proc = run(['-c', code], site_env(), tmp_path)
    assert proc.stdout.strip() == 'd2csr.models.d2csr_model', proc.stderr


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


def test_basicsr_train_py_as_a_script_from_a_checkout(site_env, photo_data, tmp_path):
    """``python basicsr/train.py -opt X`` in a BasicSR source tree (here: a copy of the installed package's
    train.py in a ``basicsr`` folder): runs D2C, and the checkout is the root, as BasicSR has it."""
    import basicsr

    checkout = tmp_path / 'BasicSR'
    (checkout / 'basicsr').mkdir(parents=True)
    for name in ('__init__.py', 'train.py'):
        shutil.copy(Path(basicsr.__file__).parent / name, checkout / 'basicsr' / name)
    opt = tiny_options(photo_data, 'script_train', total_iter=1, **{'datasets:val': None})
    del opt['datasets']['val']
    proc = run(['basicsr/train.py', '-opt', write_options(opt, tmp_path / 'div.yml')], site_env(), checkout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (checkout / 'experiments' / 'script_train' / 'models' / 'net_g_latest.pth').exists()


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
