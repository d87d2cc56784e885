"""The evidence script's quick mode: every table and plot comes from the run, and alpha > 0 diversifies."""
import json
import re
import subprocess
import sys

import cv2

from conftest import ROOT, RUN_ID, subprocess_env


def test_quick_evidence_run_produces_its_report(tmp_path):
    prefix = f'pytest_{RUN_ID}_ev_'
    cmd = [sys.executable, str(ROOT / 'benchmarks' / 'd2c_evidence.py'), '--quick', '--iters', '6', '--out',
           str(tmp_path), '--prefix', prefix]
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    md = (tmp_path / 'evidence.md').read_text()
    data = json.loads((tmp_path / 'evidence' / 'results.json').read_text())
    runs = data['runs']
    assert data['iters'] == 6
    assert {'d2c', 'rcan', 'd2c_alpha0', 'd2c_no_deep_res'} <= set(runs)
    # the tables show this run's numbers
    d2c = runs['d2c']['results']
    assert f'{d2c["fused"]["psnr"]:.2f} / {d2c["fused"]["ssim"]:.4f}' in md
    assert f'{runs["rcan"]["results"]["fused"]["psnr"]:.2f} / ' in md
    for alpha in data['alphas']:
        tag = {0.0: 'd2c_alpha0', 2e-5: 'd2c'}.get(alpha, f'alpha_{alpha:g}')
        assert re.search(rf'\| {alpha:g} \| {runs[tag]["diversity"]:.4f} \|', md)
    assert runs['rcan']['params'] >= runs['d2c']['params']
    assert len(runs['d2c']['curve']) == 2 and runs['d2c']['curve'][-1][0] == 6
    # plots exist and are real images
    for name in ('psnr_over_iterations.png', 'alpha_sweep.png', 'panel.png'):
        img = cv2.imread(str(tmp_path / 'evidence' / name))
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100
        assert f'evidence/{name}' in md
    # the divergence term makes the branches more diverse than no divergence term
    assert runs[f'alpha_{max(data["alphas"]):g}']['diversity'] > runs['d2c_alpha0']['diversity']
    # nothing left behind in experiments/
    assert not list((ROOT / 'experiments').glob(f'{prefix}*'))
