"""Every script's ``--help`` answers before torch is imported, and its examples can be pasted into a shell.

Each Python script of ``scripts/``, ``inference/`` and ``benchmarks/`` (found by glob, so a new one is covered)
and the entry points ``d2csr/train.py`` / ``d2csr/test.py`` runs ``--help`` in a fresh interpreter whose path
starts with a ``torch`` package that raises on import: a script that imports torch, or d2csr or BasicSR (which
import it), before parsing its arguments fails here, and so does the ``.pth`` hook an installed d2csr runs at
every interpreter start, were it to import torch. Without torch each answer takes a fraction of a second.
"""
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, load_script, subprocess_env

SCRIPTS = sorted(str(path.relative_to(ROOT)) for folder in ('scripts', 'inference', 'benchmarks')
                 for path in (ROOT / folder).glob('*.py')) + ['d2csr/train.py', 'd2csr/test.py']
NO_TORCH = 'torch was imported before the arguments were parsed'


@pytest.fixture(scope='module')
def no_torch_env(tmp_path_factory):
    """The suite's child environment (this checkout's d2csr first on the path) with a ``torch`` that raises."""
    root = tmp_path_factory.mktemp('notorch')
    (root / 'torch').mkdir()
    (root / 'torch' / '__init__.py').write_text(f'raise ImportError({NO_TORCH!r})\n')
    env = subprocess_env()
    env['PYTHONPATH'] = f'{root}:{env["PYTHONPATH"]}'
    return env


def example_commands(text):
    """The shell commands of a help text's examples (lines starting ``python``), continuation lines joined."""
    lines, commands = text.splitlines(), []
    for i, line in enumerate(lines):
        if line.strip().startswith('python '):
            command = line.strip()
            while command.endswith('\\') and i + 1 < len(lines):
                i += 1
                command = command[:-1] + ' ' + lines[i].strip()
            commands.append(command.split(' #')[0].strip())
    return commands


def test_every_script_is_found():
    assert len(SCRIPTS) > 10 and {'scripts/demo.py', 'benchmarks/d2c_evidence.py',
                                  'inference/inference_d2csr.py'} <= set(SCRIPTS)


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_answers_before_torch_is_imported(script, no_torch_env, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / script), '--help'], cwd=tmp_path, env=no_torch_env,
                          capture_output=True, text=True, timeout=60)
    assert NO_TORCH not in proc.stderr, f'{script} --help imports torch:\n{proc.stderr[-3000:]}'
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith('usage:') and proc.stderr == ''
    assert 'patches' not in (proc.stdout + proc.stderr).lower()
    for line in proc.stdout.splitlines():  # a shell line continuation ends its line and is followed by one
        assert '\\' not in line.rstrip()[:-1], f'{script}: a backslash inside a line of --help: {line!r}'
    lines = proc.stdout.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.rstrip().endswith('\\'):
            assert lines[i + 1].startswith(' ') and lines[i + 1].strip(), f'{script}: {line!r} continues nowhere'
    assert not (lines and lines[-1].rstrip().endswith('\\'))


def test_evidence_help_example_is_a_command_the_script_takes(capsys):
    """The GPU command in ``d2c_evidence.py --help`` is one command (its continuation intact) that the script's
    own parser accepts, as pasted into a shell."""
    evidence = load_script('benchmarks/d2c_evidence.py')
    with pytest.raises(SystemExit) as exit_:
        evidence.parse_args(['--help'])
    assert exit_.value.code == 0
    commands = [c for c in example_commands(capsys.readouterr().out) if c.startswith('python benchmarks/d2c_ev')]
    assert commands
    for command in commands:
        words = shlex.split(command)
        args = evidence.parse_args(words[2:])
        assert args.device == 'cuda' and args.fusion_budgets == [4, 16, 64] and args.out == 'docs/evidence_gpu.md'


def test_export_help_names_the_exporters_opset():
    """``export_onnx.py --help`` shows the default opset without importing d2csr: it is the exporter's."""
    from d2csr.integrations.onnx_export import OPSET

    script = load_script('scripts/export_onnx.py')
    assert script.DEFAULT_OPSET == OPSET
    assert script.parse_args(['m.pth', 'o.onnx']).opset == OPSET
