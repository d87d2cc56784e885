"""The evidence script's quick mode: every table and plot comes from the run, and the shipped alpha diversifies
(the alpha sweep has the authors' 2e-5, the shipped alpha, their logged gradient ratios, the margins and
schedule variants); the mean of the branches is reported beside the fused output, and the fusion-budget study
has its rows and plot.

The script runs in this process, and each of its trainings runs ``d2csr/train.py`` in this process too
(:func:`conftest.run_script`) instead of a fresh interpreter per run: the same files, options and pipeline,
without 13 interpreter start-ups. That the script passes its device to the training process is tested in
``test_devices.py``."""
import json
import re

import cv2

from conftest import ROOT, RUN_ID, WORK, load_script, run_script
from d2csr.options import DIVERGENCE_ALPHA, DIVERGENCE_MARGINS


def test_quick_evidence_run_produces_its_report(tmp_path, monkeypatch, capsys):
    prefix = f'pytest_{RUN_ID}_ev_'
    monkeypatch.chdir(WORK)  # where its trainings write experiments/ (run_script runs them there)
    evidence = load_script('benchmarks/d2c_evidence.py')
    monkeypatch.setattr(evidence, 'run_train_script',
                        lambda path, env: run_script(ROOT / 'd2csr' / 'train.py', '-opt', path, env=env))
    evidence.main(['--quick', '--iters', '6', '--num-feat', '8', '--out', str(tmp_path), '--prefix', prefix,
                   '--device', 'cpu'])
    assert 'trained ' + prefix + 'd2c_div (6 iterations' in capsys.readouterr().out

    md = (tmp_path / 'evidence.md').read_text()
    assert '- Small D2C: 8 features, G=2, B=1, the shipped divergence term' in md
    data = json.loads((tmp_path / 'evidence' / 'results.json').read_text())
    runs = data['runs']
    assert data['iters'] == 6
    assert {'d2c', 'rcan', 'd2c_alpha0', 'd2c_no_deep_res'} <= set(runs)
    # the tables show this run's numbers
    d2c = runs['d2c']['results']
    assert f'{d2c["fused"]["psnr"]:.2f} / {d2c["fused"]["ssim"]:.4f}' in md
    assert f'{runs["rcan"]["results"]["fused"]["psnr"]:.2f} / ' in md
    # the alpha sweep: alpha 0, the authors' 2e-5 and the shipped alpha, with the logged gradient ratio
    assert data['authors_alpha'] == 2e-5 and data['shipped_alpha'] == DIVERGENCE_ALPHA
    assert {0.0, 2e-5, DIVERGENCE_ALPHA} <= set(data['alphas'])
    for alpha in data['alphas']:
        tag = {0.0: 'd2c_alpha0', DIVERGENCE_ALPHA: 'd2c'}.get(alpha, f'alpha_{alpha:g}')
        ratio = runs[tag]['logged'].get('trip_grad_ratio', 0.0)
        assert (ratio > 0) == (alpha > 0)
        assert re.search(rf'\| {alpha:g}[^|]* \| {runs[tag]["diversity"]:.4f} \| '
                         rf'{runs[tag]["diversity"] / runs["d2c_alpha0"]["diversity"]:.2f}x \|.* \| {ratio:.2g} \|', md)
    assert runs['d2c']['logged']['trip_grad_ratio'] > 100 * runs['alpha_2e-05']['logged']['trip_grad_ratio']
    # margins 1000x the authors': the run has them, and the report says what the two runs gave. Where every hinge
    # was on at every step the runs are the same to the last digit (test_losses: the margins then change no
    # gradient); in a few steps of an untrained tree a hinge may be off for a pair, and the report says how close
    margins_run = runs['d2c_margins_x1000']
    assert margins_run['overrides'] == {
        'train:divergence_opt:margins': [m * evidence.MARGIN_FACTOR for m in DIVERGENCE_MARGINS]}
    assert evidence.MARGIN_FACTOR == 1000
    if margins_run['results'] == runs['d2c']['results']:
        assert 'every figure is the same, to the last digit' in md
    else:
        assert (f'every figure is close (diversity {margins_run["diversity"]:.4f} vs {runs["d2c"]["diversity"]:.4f}, '
                f'fused {margins_run["results"]["fused"]["psnr"]:.2f} vs {d2c["fused"]["psnr"]:.2f} dB)') in md
    assert {'d2c_authors_windows'} <= set(runs) and 'like the authors\' schedule' in md
    assert runs['rcan']['params'] >= runs['d2c']['params']
    assert len(runs['d2c']['curve']) == 2 and runs['d2c']['curve'][-1][0] == 6
    # the mean of the branches and the weights' deviation from uniform beside every fused output
    assert f'| mean of branches | {d2c["mean"]["psnr"]:.2f} / {d2c["mean"]["ssim"]:.4f} |' in md
    assert f'| bicubic (MATLAB imresize) | {d2c["bicubic"]["psnr"]:.2f} / ' in md
    assert f'| weights: mean \\|W - 1/P\\| | {d2c["fused"]["weight_mad"]:.4f} |' in md
    # the fusion-budget study: paper's convergence net and the labelled variant, untrained then 2x and 4x
    assert data['fusion_budgets'] == [2, 4]
    assert set(data['fusion']) == {'faithful', 'no_last_relu'}
    assert 'VARIANT, not the paper' in data['fusion']['no_last_relu']['label']
    for key, sweep in data['fusion'].items():
        points = sweep['points']
        assert [p['iters'] for p in points] == [0, 2 * data['conv_iters'], 4 * data['conv_iters']]
        for p in points:
            assert abs(p['gain_over_mean'] - (p['fused'] - p['mean'])) < 1e-9
            assert abs(p['gain_over_best'] - (p['fused'] - p['best_branch'])) < 1e-9
            budget = f'{p["budget"]}x' if p['budget'] else 'none (stage 1)'
            assert (f'| {sweep["label"]} | {p["iters"]} | {budget} | {p["fused"]:.3f} | {p["gain_over_mean"]:+.3f} | '
                    f'{p["gain_over_best"]:+.3f} | {p["weight_mad"]:.4f} |') in md
        # the tree is frozen in stage 2: the branches' mean is the same at every budget
        assert len({round(p['mean'], 9) for p in points}) == 1
    # both variants continue from the same stage-1 tree
    assert data['fusion']['faithful']['points'][0]['mean'] == data['fusion']['no_last_relu']['points'][0]['mean']
    # plots exist and are real images
    for name in ('psnr_over_iterations.png', 'alpha_sweep.png', 'panel.png', 'fusion_budgets.png'):
        img = cv2.imread(str(tmp_path / 'evidence' / name))
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100
        assert f'evidence/{name}' in md
    # the shipped divergence term makes the branches more diverse than no divergence term
    assert runs['d2c']['diversity'] > runs['d2c_alpha0']['diversity']
    # nothing left behind in experiments/
    assert not list((WORK / 'experiments').glob(f'{prefix}*'))
