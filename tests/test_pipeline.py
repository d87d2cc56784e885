"""End to end through the entry points: two-stage training, freezing, test, resume and bad input, on CPU."""
import re

import pytest
import torch

from conftest import TINY_NET, experiment_dir, results_dir, run_entry, tiny_options, unique_name, write_options
from basicsr.archs import build_network  # after conftest: d2csr's shim makes basicsr importable
from d2csr.evaluation import evaluate_pairs


def load_params(path):
    return torch.load(path, map_location='cpu', weights_only=True)['params']


@pytest.fixture(scope='module')
def two_stage(photo_data, tmp_path_factory):
    """Stage 1 (4 iterations; ``python d2csr/train.py`` in its own process, as users run it) and stage 2 (4
    iterations); returns their names and paths."""
    tmp = tmp_path_factory.mktemp('two_stage')
    div, conv = unique_name('div'), unique_name('conv')
    div_opt = tiny_options(photo_data, div, **{'train:ema_decay': 0.5})
    run_entry('train', '-opt', write_options(div_opt, tmp / 'div.yml'), subprocess=True)
    div_ckpt = experiment_dir(div) / 'models' / 'net_g_latest.pth'
    conv_opt = tiny_options(photo_data, conv, stage='convergence', pretrain=str(div_ckpt))
    run_entry('train', '-opt', write_options(conv_opt, tmp / 'conv.yml'))
    return dict(tmp=tmp, div=div, conv=conv, div_ckpt=div_ckpt,
                conv_ckpt=experiment_dir(conv) / 'models' / 'net_g_latest.pth', conv_opt=conv_opt)


def test_divergence_stage_trains_tree_only(two_stage):
    ckpt = load_params(two_stage['div_ckpt'])
    init = load_params(experiment_dir(two_stage['div']) / 'models' / 'net_g_2.pth')
    assert any(not torch.equal(ckpt[k], init[k]) for k in ckpt if not k.startswith('fusion.'))
    # the convergence net is untouched by the divergence stage
    assert all(torch.equal(ckpt[k], init[k]) for k in ckpt if k.startswith('fusion.'))
    log = next(experiment_dir(two_stage['div']).glob('train_*.log')).read_text()
    assert 'l_triplet' in log and 'psnr_oracle' in log and 'psnr_branch4' in log
    assert 'psnr_mean' in log and 'weight_mad' in log and 'psnr_bicubic' in log
    # stage 1's headline metrics score what it trains, the branches (their mean), named so, with "Best"
    headline = re.findall(r'# psnr_mean_of_branches: ([0-9.]+)\s+Best: ([0-9.]+) @ (\d+) iter', log)
    rows = re.findall(r'# psnr_mean: ([0-9.]+)', log)
    assert headline and len(headline) == len(rows) and '# psnr:' not in log and '# ssim_mean_of_branches:' in log
    assert [v for v, _, _ in headline] == rows  # the PSNR of the mean image, as the branch rows compute it
    assert float(headline[-1][1]) == max(float(v) for v, _, _ in headline)


def test_ema_is_kept_and_saved_as_in_srmodel(two_stage):
    saved = torch.load(two_stage['div_ckpt'], map_location='cpu', weights_only=True)
    assert set(saved) == {'params', 'params_ema'}
    key = 'head.weight'
    assert not torch.equal(saved['params'][key], saved['params_ema'][key])


def test_convergence_stage_freezes_tree_bit_exactly(two_stage):
    """Stage 2 freezes the tree that stage 1's validation scored: stage 1 ran with EMA, so its ``params_ema``."""
    before = torch.load(two_stage['div_ckpt'], map_location='cpu', weights_only=True)['params_ema']
    after = load_params(two_stage['conv_ckpt'])
    tree_keys = [k for k in before if not k.startswith('fusion.')]
    assert tree_keys and all(torch.equal(before[k], after[k]) for k in tree_keys)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith('fusion.'))
    log = next(experiment_dir(two_stage['conv']).glob('train_*.log')).read_text()
    # only the convergence net (46,080 parameters for P = 4) is in the optimizer
    assert 'D2C stage "convergence": optimizing 46,080 parameters' in log


def test_test_entry_point_writes_metrics_and_images(two_stage, photo_data):
    name = unique_name('test')
    opt = tiny_options(photo_data, name, pretrain=str(two_stage['conv_ckpt']))
    opt['datasets'] = {'test_1': dict(opt['datasets']['val'])}
    opt['val']['save_img'] = True
    opt['val']['suffix'] = None
    del opt['train']
    proc = run_entry('test', '-opt', write_options(opt, two_stage['tmp'] / 'test.yml'), subprocess=True)
    log = next(results_dir(name).glob('test_*.log')).read_text()
    assert '# psnr:' in log and '# ssim:' in log and '# psnr_oracle' in log
    images = list((results_dir(name) / 'visualization' / 'photos_val').glob('*.png'))
    assert [p.name for p in images] == [f'chelsea_{name}.png']
    assert proc.returncode == 0
    # the log's other rows are d2csr.evaluation's (the same definitions as the demo, evidence and visualizer)
    logged = {k: float(v) for k, v in re.findall(r'# (psnr_\w+|weight_mad): ([-0-9.]+)', log)}
    assert list(logged) == ['psnr_bicubic', 'psnr_branch1', 'psnr_branch2', 'psnr_branch3', 'psnr_branch4',
                            'psnr_mean', 'psnr_fused', 'psnr_oracle', 'weight_mad']
    net = build_network(dict(TINY_NET))
    net.load_state_dict(load_params(two_stage['conv_ckpt']))
    val = photo_data / 'val'
    expected = evaluate_pairs(net, [(val / 'LR' / 'chelsea.png', val / 'HR' / 'chelsea.png')], 4)
    for row in ('bicubic', 'branch2', 'mean', 'fused', 'oracle'):
        assert logged[f'psnr_{row}'] == pytest.approx(expected[row]['psnr'], abs=1e-3)
    assert logged['weight_mad'] == pytest.approx(expected['fused']['weight_mad'], abs=1e-4)
    assert float(re.search(r'# psnr: ([0-9.]+)', log).group(1)) == pytest.approx(logged['psnr_fused'], abs=1e-3)


def test_resume_on_cpu_continues_from_the_saved_iteration(two_stage, photo_data):
    name = two_stage['conv']
    opt_path = two_stage['tmp'] / 'conv_longer.yml'
    write_options(dict(two_stage['conv_opt'], **{'train': dict(two_stage['conv_opt']['train'], total_iter=6)}),
                  opt_path)
    proc = run_entry('train', '-opt', opt_path, '--auto_resume')
    out = proc.stdout + proc.stderr
    assert 'Resuming training from epoch: 0, iter: 4' in out
    assert (experiment_dir(name) / 'training_states' / '6.state').exists()
    # explicit path: resume_state works too
    opt = dict(two_stage['conv_opt'], **{'train': dict(two_stage['conv_opt']['train'], total_iter=8)})
    opt['path'] = dict(opt['path'], resume_state=str(experiment_dir(name) / 'training_states' / '6.state'))
    proc = run_entry('train', '-opt', write_options(opt, two_stage['tmp'] / 'conv_resume.yml'))
    assert 'iter: 6' in proc.stdout + proc.stderr
    assert (experiment_dir(name) / 'training_states' / '8.state').exists()


def test_convergence_stage_without_divergence_weights_fails_clearly(photo_data, tmp_path):
    opt = tiny_options(photo_data, unique_name('conv_nopre'), stage='convergence')
    proc = run_entry('train', '-opt', write_options(opt, tmp_path / 'c.yml'), check=False)
    assert proc.returncode != 0
    assert 'pretrain_network_g' in proc.stderr and 'divergence weights' in proc.stderr


def test_missing_files_are_named(photo_data, tmp_path):
    proc = run_entry('train', '-opt', tmp_path / 'nope.yml', check=False)
    assert proc.returncode != 0 and 'nope.yml' in proc.stderr and 'does not exist' in proc.stderr
    opt = tiny_options(photo_data, unique_name('badpre'), stage='convergence', pretrain=str(tmp_path / 'missing.pth'))
    proc = run_entry('train', '-opt', write_options(opt, tmp_path / 'b.yml'), check=False)
    assert proc.returncode != 0 and 'missing.pth' in proc.stderr
