"""Shared test helpers: paths, a small real-photo data set, tiny option files and entry-point runners.

Entry points run with the argv users give them (``d2csr/train.py -opt X``): as ``__main__`` inside the test
process (:func:`run_script`, no interpreter start-up), or in a fresh interpreter where that is what a test
checks (``run_entry(..., subprocess=True)`` and the tests that start their own processes). They run in
:data:`WORK`, a temporary folder of this test process (BasicSR writes ``experiments/<name>`` and
``results/<name>`` under the folder a command runs in), removed at the end: the suite never writes into the
checkout, where a user's own ``experiments/``, ``results/`` and ``demo_output/`` live.
"""
import os
import shutil
import subprocess as _subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Made by running the authors' MegEngine code (see tests/data/README.md); the repository holds every file
# its tests read, so a plain clone passes them.
OFFICIAL_FIXTURE = ROOT / 'tests' / 'data' / 'official_megengine_x4_f32_b2'
RUN_ID = uuid.uuid4().hex[:8]
# where the entry points run (their experiments/ and results/): one temporary folder per test process
WORK = Path(tempfile.mkdtemp(prefix=f'd2csr-tests-{RUN_ID}-'))

import d2csr  # noqa: E402,F401  (registers everything; also the basicsr shim)
from d2csr.pipeline import apply_training_patches  # noqa: E402
from d2csr.options import train_options  # noqa: E402
from d2csr.utils import pythonpath_env  # noqa: E402

# in-process tests train and resume through BasicSR's pipeline as d2csr/train.py runs it
apply_training_patches()


def unique_name(stem):
    return f'pytest_{RUN_ID}_{stem}'


def subprocess_env(**extra):
    env = pythonpath_env(ROOT)
    env.setdefault('OMP_NUM_THREADS', '1')
    env.update(extra)
    return env


def run_entry(script, *args, timeout=600, check=True, cwd=None, subprocess=False):
    """Run ``python d2csr/<script>.py *args`` in :data:`WORK` (or ``cwd``); returns a CompletedProcess.

    By default the script file runs as ``__main__`` in this process (:func:`run_script`: same file, same argv,
    its output and exit status captured), which saves the interpreter's start-up (about 4 s of imports);
    ``subprocess=True`` starts a fresh interpreter, as the tests of the entry points themselves do.
    """
    path = ROOT / 'd2csr' / f'{script}.py'
    if subprocess:
        proc = _subprocess.run([sys.executable, str(path), *map(str, args)], cwd=cwd or WORK, env=subprocess_env(),
                               capture_output=True, text=True, timeout=timeout)
    else:
        proc = run_script(path, *args, cwd=cwd or WORK)
    if check and proc.returncode != 0:
        raise AssertionError(f'{" ".join(map(str, proc.args))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n'
                             f'{proc.stderr[-5000:]}')
    return proc


def run_script(path, *args, cwd=WORK, env=None):
    """Run the Python file ``path`` as ``__main__`` in this process with ``sys.argv = [path, *args]``, like
    ``python path *args``: stdout / stderr are captured, an uncaught exception is printed as a traceback and
    gives exit status 1, ``sys.exit`` its status. BasicSR's logger is set up afresh for the run (so its
    log file and console lines belong to it), and the working folder, ``os.environ`` (plus ``env``),
    ``sys.argv``, the TF32 flags and the thread count are put back afterwards."""
    import contextlib
    import io
    import runpy
    import traceback

    import torch

    out, err = io.StringIO(), io.StringIO()
    saved = (list(sys.argv), os.getcwd(), dict(os.environ), torch.get_num_threads(),
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    argv = [str(path), *map(str, args)]
    status = 0
    _reset_basicsr_logger()
    try:
        sys.argv = argv
        os.chdir(cwd)
        os.environ.update(env or {})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(path), run_name='__main__')
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    status = exc.code or 0
                else:  # sys.exit('message'): the message on stderr, status 1, as the interpreter does
                    print(exc.code, file=sys.stderr)
                    status = 1
            except Exception:  # noqa: BLE001  (what the interpreter does with an uncaught exception)
                traceback.print_exc()
                status = 1
    finally:
        _reset_basicsr_logger()
        sys.argv = saved[0]
        os.chdir(saved[1])
        os.environ.clear()
        os.environ.update(saved[2])
        torch.set_num_threads(saved[3])
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[4:]
    return _subprocess.CompletedProcess([sys.executable, *argv], status, out.getvalue(), err.getvalue())


def _reset_basicsr_logger():
    """Forget BasicSR's root logger (``get_root_logger`` sets it up once per process: console and log file)."""
    import logging

    from basicsr.utils import logger as basicsr_logger

    for name in list(basicsr_logger.initialized_logger):
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()
        log.setLevel(logging.NOTSET)
    basicsr_logger.initialized_logger.clear()


def experiment_dir(name):
    return WORK / 'experiments' / name


def results_dir(name):
    return WORK / 'results' / name


@pytest.fixture(scope='session', autouse=True)
def _one_thread():
    """The suite's networks are tiny: one intra-op thread here and in the entry points it starts
    (``subprocess_env``). With two OpenMP threads on a busy machine each tiny op can wait tens of ms at
    the thread barrier; with one it takes a fraction of a millisecond.

    ``OMP_NUM_THREADS=1`` too, so that an entry point run in this process keeps that one thread: without it
    ``d2csr/train.py`` chooses the CPUs free now (``choose_cpu_threads``), which depends on the machine's load,
    and two trainings that must agree to the bit (the evidence test) could sum in different orders."""
    import torch

    threads, omp = torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS')
    torch.set_num_threads(1)
    os.environ['OMP_NUM_THREADS'] = '1'
    yield
    torch.set_num_threads(threads)
    if omp is None:
        os.environ.pop('OMP_NUM_THREADS', None)
    else:
        os.environ['OMP_NUM_THREADS'] = omp


# --- the checkout is the user's: the suite must leave it as it found it ----------------------------------------
SKIP_DIRS = {'.git', '__pycache__', '.pytest_cache', 'datasets', 'build', 'd2csr.egg-info'}


def checkout_snapshot(root=ROOT):
    """``{relative path: (size, mtime_ns)}`` of every file in the checkout (a user's ``datasets/`` and caches
    aside)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        for name in files:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            found[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return found


def pytest_sessionstart(session):
    if not hasattr(session.config, 'workerinput'):  # the main process (with pytest-xdist: not the workers)
        session.config._d2csr_checkout = checkout_snapshot()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, '_d2csr_checkout', None)
    if before is None:
        return
    after = checkout_snapshot()
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    if changed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f'\nThe test suite changed the checkout ({len(changed)} files written or deleted outside its '
              'temporary folders): ' + ', '.join(changed[:20]), file=sys.stderr)


@pytest.fixture(scope='session', autouse=True)
def _cleanup_work():
    yield
    shutil.rmtree(WORK, ignore_errors=True)


@pytest.fixture(scope='session')
def photo_data(tmp_path_factory):
    """x4 pairs from real photographs: 3 training photos (<= 192 px), 1 validation photo (<= 96 px)."""
    from d2csr.data.photo_pairs import build_photo_pairs

    root = tmp_path_factory.mktemp('photos_x4')
    build_photo_pairs(str(root), 4, train=('astronaut', 'rocket', 'coins'), val=('chelsea', ), max_side=192,
                      val_max_side=96)
    return root


TINY_NET = dict(type='D2CSR', num_feat=16, num_group=1, num_block=1, squeeze_factor=4, upscale=4, depth=2, width=2)


def tiny_options(data_root, name, stage='divergence', total_iter=4, pretrain=None, network=None, **overrides):
    """An options dict for a few CPU iterations of a tiny D2C on ``data_root`` (a :func:`photo_data` tree);
    ``overrides`` use ``'a:b'`` keys for nested dicts (:func:`d2csr.options.set_option`)."""
    return train_options(name, stage, data_root, network or TINY_NET, total_iter, pretrain=pretrain, gt_size=64,
                         batch_size=2, enlarge_ratio=4, lr=1e-4, milestones=[1000], alpha=1.0, val_freq=1000,
                         print_freq=1, checkpoint_freq=2, overrides=overrides)


def write_options(opt, path):
    path = Path(path)
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def load_script(relpath):
    """Import a script (e.g. ``'inference/inference_d2csr.py'``) as a module, to call its ``main(argv)`` in-process."""
    import importlib.util

    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(f'script_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
