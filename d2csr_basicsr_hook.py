"""Makes an installed d2csr available to BasicSR's own programs, adding and never replacing.

BasicSR 1.4.2 has no plugin discovery: ``python -m basicsr.train -opt X`` (or ``python basicsr/train.py -opt X``
in a BasicSR checkout) knows only BasicSR's own archs and models, and on current torchvision it cannot even
import. Installing d2csr (``pip install .`` or ``pip install -e .``) adds ``d2csr-basicsr-hook.pth`` to
site-packages, whose one line calls :func:`install`. That puts a small finder on ``sys.meta_path`` and imports
nothing else: programs that never import ``basicsr`` never load torch or d2csr.

When ``basicsr`` is first imported, the finder runs ``import d2csr`` just before BasicSR's own ``__init__``: the
torchvision ``functional_tensor`` shim (:mod:`d2csr.utils.torchvision_shim`) and d2csr's names, which BasicSR's
registries find only where they have nothing of that name (:mod:`d2csr.utils.registry`). The script the user runs
is the code that runs. When the program is BasicSR's ``train.py`` / ``test.py`` (``python -m basicsr.train``,
``python basicsr/test.py``, an edited fork's included), :func:`d2csr.pipeline.watch_basicsr_entry_point` also
makes the script's ``parse_options`` look at its ``-opt`` file: a run whose options name d2csr's classes (a D2C
run) gets d2csr's launch, resume, data and weight checks and run lock; any other run is BasicSR's own (its YAML
loader, checks, validation, outputs and ``-h``).

This module also holds what d2csr's entry points need before torch is imported: :func:`entry_point_parser` (BasicSR's
flags, for ``d2csr/train.py --help``) and :func:`options_file_argument`.

Switch the hook off with ``D2CSR_BASICSR_HOOK=0`` in the environment.
"""
import argparse
import os
import sys

ENV_SWITCH = 'D2CSR_BASICSR_HOOK'


def enabled():
    return os.environ.get(ENV_SWITCH, '1').strip().lower() not in ('0', 'false', 'no', 'off', '')


def basicsr_entry_point():
    """``(kind, script)`` when the program being started is BasicSR's own ``train.py`` / ``test.py``:
    ``('train', None)`` for ``python -m basicsr.train``, ``('test', '/path/basicsr/test.py')`` for a script in
    a ``basicsr`` package folder; ``(None, None)`` otherwise."""
    argv = getattr(sys, 'orig_argv', None) or []  # [interpreter, its options..., -m module | -c cmd | script, ...]
    i = 1
    while i < len(argv) - 1:
        arg = argv[i]
        if arg == '-m':
            return {'basicsr.train': 'train', 'basicsr.test': 'test'}.get(argv[i + 1]), None
        if arg == '-c' or not arg.startswith('-'):  # the program is a command or a script: look at sys.argv
            break
        i += 2 if arg in ('-X', '-W', '--check-hash-based-pycs') else 1  # options that take a value
    script = sys.argv[0] if sys.argv else ''
    name, ext = os.path.splitext(os.path.basename(script))
    folder = os.path.dirname(os.path.abspath(script)) if script else ''
    if (ext == '.py' and name in ('train', 'test') and os.path.basename(folder) == 'basicsr'
            and os.path.isfile(os.path.join(folder, '__init__.py'))):
        return name, os.path.abspath(script)
    return None, None


def options_file_argument(argv):
    """The value of ``-opt`` in ``argv`` (``-opt X`` or ``-opt=X``), else ``None``; never exits or prints."""
    for i, arg in enumerate(argv):
        if arg == '-opt' and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith('-opt='):
            return arg[len('-opt='):]
    return None


def entry_point_parser(prog, description):
    """An argument parser with BasicSR's entry-point flags (as ``basicsr.utils.options.parse_options`` defines
    them; BasicSR parses them again itself) and ``description``, built without importing torch or basicsr."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', type=str, required=True, help='Path to option YAML file.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    parser.add_argument('--auto_resume', action='store_true',
                        help='resume from the newest complete training state of this experiment name')
    parser.add_argument('--debug', action='store_true', help="BasicSR's debug mode (name prefixed with debug_)")
    parser.add_argument('--local_rank', type=int, default=0)
    parser.add_argument('--force_yml', nargs='+', default=None,
                        help='Force to update yml files. Examples: train:ema_decay=0.999')
    return parser


class _ImportD2CSRFirst:
    """Loader wrapper of the ``basicsr`` package: ``import d2csr`` first, then BasicSR's own ``__init__``."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        try:
            import d2csr  # noqa: F401  (shim, registrations; imports BasicSR's submodules it needs)
        except Exception as err:
            raise ImportError(f'd2csr could not be loaded for BasicSR ({type(err).__name__}: {err}); set '
                              f'{ENV_SWITCH}=0 to run BasicSR without d2csr') from err
        self.loader.exec_module(module)
        if basicsr_entry_point()[0] is not None:
            from d2csr.pipeline import watch_basicsr_entry_point

            watch_basicsr_entry_point()  # D2C runs get d2csr's changes; other runs are BasicSR's own

    def __getattr__(self, name):  # get_code, get_source, is_package, ... of the real loader
        return getattr(self.loader, name)


class BasicSRFinder:
    """``sys.meta_path`` finder that acts once, on the top-level ``basicsr`` package."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'basicsr' or path is not None:
            return None
        uninstall()
        if not enabled():
            return None
        for finder in sys.meta_path:
            find = getattr(finder, 'find_spec', None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
                    spec.loader = _ImportD2CSRFirst(spec.loader)
                return spec
        return None


def install():
    """Put the finder on ``sys.meta_path`` (once); nothing when switched off or when basicsr is already imported."""
    if not enabled() or 'basicsr' in sys.modules:
        return
    if not any(isinstance(f, BasicSRFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, BasicSRFinder())


def uninstall():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, BasicSRFinder)]
