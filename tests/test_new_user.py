"""What a new user meets: --help texts, table3_params at every scale, plain progress output when piped,
the demo's thread count, and time claims that match the README."""
import re

import cv2
import numpy as np
import pytest
import torch

from conftest import ROOT, load_script, run_script
from d2csr.archs import D2CSR
from d2csr.convert import save_basicsr_checkpoint
from d2csr.utils import compute_threads, thread_env


@pytest.mark.parametrize('kind', ['train', 'test'])
def test_entry_point_help_describes_d2c_and_keeps_basicsr_flags(kind):
    proc = run_script(ROOT / 'd2csr' / f'{kind}.py', '--help')
    assert proc.returncode == 0, proc.stderr
    assert 'D2C-SR' in proc.stdout and f'options/{kind}_D2C' in proc.stdout
    for flag in ('-opt OPT', '--launcher', '--auto_resume', '--debug', '--local_rank', '--force_yml'):
        assert flag in proc.stdout  # BasicSR's own parser, unchanged


@pytest.mark.parametrize('scale', [2, 3, 4, 8])
def test_table3_params_at_every_scale_names_it(scale, capsys):
    script = load_script('benchmarks/table3_params.py')
    script.main(['--scale', str(scale)])
    out = capsys.readouterr().out
    assert f'| original, x{scale} | D2C, x{scale} (tree + convergence) |' in out
    assert f'built at x{scale}' in out and 'original, x4' not in out.replace(f'original, x{scale}', '')
    rows = script.table_rows(scale)
    assert len(rows) == 6 and all(r['d2c'] > 0 for r in rows)
    if scale == 8:  # BasicSR's MSRResNet / RRDBNet and RDN have no x8: shown as such, not built at x4
        assert {r['original_type'] for r in rows if r['original'] is None} == {'MSRResNet', 'RRDBNet', 'RDN'}
        assert 'n/a (no x8 MSRResNet)' in out
    if scale == 4:
        assert all(r['original'] is not None for r in rows)


def test_inference_output_has_no_escape_codes_when_piped(tmp_path, capsys):
    torch.manual_seed(0)
    save_basicsr_checkpoint(D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2, fusion_feat=8),
                            tmp_path / 'net.pth')
    for name in ('a.png', 'b.png'):
        cv2.imwrite(str(tmp_path / name), np.full((9, 8, 3), 100, np.uint8))
    script = load_script('inference/inference_d2csr.py')
    assert script.main(['-i', str(tmp_path), '-o', str(tmp_path / 'out'), '--model_path', str(tmp_path / 'net.pth'),
                        '--tile', '4', '--device', 'cpu']) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert '\x1b' not in text and '\r' not in text
    assert re.search(r'\[1/2\] .*a\.png -> a_D2CSR\.png', captured.out)
    assert re.search(r'\[2/2\] .*b\.png -> b_D2CSR\.png', captured.out)


def test_thread_count_follows_the_free_cpus():
    assert compute_threads(cpus=2, load=0.0) == 2
    assert compute_threads(cpus=2, load=1.0) == 1  # another job on one of two cores
    assert compute_threads(cpus=2, load=9.0) == 1  # a busy machine: one thread, no barrier waits
    assert compute_threads(cpus=16, load=3.2) == 13
    env = thread_env(3, {'PATH': '/bin'})
    assert env['OMP_NUM_THREADS'] == env['MKL_NUM_THREADS'] == '3' and env['PATH'] == '/bin'


def test_demo_passes_its_thread_count_to_the_entry_points(tmp_path, monkeypatch):
    demo = load_script('scripts/demo.py')
    seen = {}

    class FakePopen:  # records what the demo would start
        def __init__(self, cmd, env=None, **kwargs):
            seen.update(cmd=cmd, env=env)
            self.stdout = iter(())

        def wait(self):
            return 0

    monkeypatch.setattr(demo.subprocess, 'Popen', FakePopen)
    demo.run('train', {'name': 'x'}, str(tmp_path), threads=1)
    assert seen['cmd'][1].endswith('train.py') and seen['env']['OMP_NUM_THREADS'] == '1'


def test_test_sh_time_claim_matches_the_readme():
    claim = re.search(r'about (\d+) minutes', (ROOT / 'scripts' / 'test.sh').read_text())
    readme = (ROOT / 'README.md').read_text()
    stated = re.search(r'The test suite \(CPU only[^)]*\) takes about (\d+) minutes', readme)
    assert claim and stated and claim.group(1) == stated.group(1)
