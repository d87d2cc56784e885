"""The perceptual variant (paper Table 2): BasicSR's VGG loss in D2CModel and the LPIPS metric.

This machine cannot download ImageNet weights, so the backbones are randomly initialised (``pretrained:
false``) or read from small weight files the tests write; LPIPS's linear layers are the ones the ``lpips``
package ships.
"""
import re
import urllib.error

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from conftest import experiment_dir, results_dir, run_entry, tiny_options, unique_name, write_options
from d2csr.losses import build_perceptual_loss, perceptual_terms
from d2csr.metrics import calculate_lpips, get_lpips_net
from d2csr.metrics.lpips_metric import _cached_lpips_net
from d2csr.utils.pretrained_weights import MissingWeightsError, check_pretrained_weights, resolve_weights

RANDOM_LPIPS = dict(pretrained=False, device='cpu')
PERCEP_OPT = {'type': 'PerceptualLoss', 'layer_weights': {'conv5_4': 1.0}, 'perceptual_weight': 0.01,
              'criterion': 'l1', 'pretrained': False}
LPIPS_METRIC = {'type': 'calculate_lpips', 'crop_border': 4, 'net': 'alex', 'better': 'lower', 'pretrained': False}


@pytest.fixture(scope='module')
def photo():
    """A 96x96 crop of a real photograph, BGR uint8 (as BasicSR's validation passes images)."""
    return np.ascontiguousarray(skdata.astronaut()[40:136, 180:276, ::-1])


def noisy(img, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).round().astype(np.uint8)


# ------------------------------------------------------------------------------------------------------
# LPIPS: properties that hold for any backbone weights (here random, with the package's linear layers)
def test_lpips_is_zero_for_identical_images_and_symmetric(photo):
    assert calculate_lpips(photo, photo.copy(), crop_border=4, **RANDOM_LPIPS) == 0.0
    other = noisy(photo, 20)
    d_ab = calculate_lpips(photo, other, crop_border=4, **RANDOM_LPIPS)
    d_ba = calculate_lpips(other, photo, crop_border=4, **RANDOM_LPIPS)
    assert d_ab > 0 and d_ab == pytest.approx(d_ba, rel=1e-6)


def test_lpips_grows_with_the_distortion(photo):
    by_noise = [calculate_lpips(photo, noisy(photo, s), crop_border=4, **RANDOM_LPIPS) for s in (3, 12, 40)]
    assert by_noise[0] < by_noise[1] < by_noise[2]
    by_blur = [calculate_lpips(photo, cv2.GaussianBlur(photo, (0, 0), s), crop_border=4, **RANDOM_LPIPS)
               for s in (0.6, 1.5, 4.0)]
    assert by_blur[0] < by_blur[1] < by_blur[2]


def test_lpips_net_is_built_once_per_net_file_and_device(photo):
    first = get_lpips_net('alex', **RANDOM_LPIPS)
    misses = _cached_lpips_net.cache_info().misses
    for _ in range(3):
        calculate_lpips(photo, noisy(photo, 5), crop_border=0, **RANDOM_LPIPS)
    assert get_lpips_net('alex', **RANDOM_LPIPS) is first
    assert _cached_lpips_net.cache_info().misses == misses
    # the linear layers are the package's shipped ones, not random
    import lpips
    import os.path as osp
    shipped = torch.load(osp.join(osp.dirname(lpips.__file__), 'weights', 'v0.1', 'alex.pth'), map_location='cpu',
                         weights_only=True)
    assert torch.equal(first.lin0.model[-1].weight, shipped['lin0.model.1.weight'])


def test_lpips_reads_the_backbone_from_pretrained_path(tmp_path):
    import torchvision

    torch.manual_seed(1)
    features = torchvision.models.alexnet(weights=None).features
    path = tmp_path / 'alexnet_features.pth'
    torch.save({f'features.{k}': v for k, v in features.state_dict().items()}, path)
    model = get_lpips_net('alex', pretrained_path=str(path), device='cpu')
    assert torch.equal(getattr(model.net.slice1, '0').weight, features[0].weight)
    assert torch.equal(getattr(model.net.slice5, '10').bias, features[10].bias)
    bad = tmp_path / 'not_alexnet.pth'
    torch.save({'features.0.weight': torch.zeros(3)}, bad)
    with pytest.raises(MissingWeightsError, match='not_alexnet.pth'):
        get_lpips_net('alex', pretrained_path=str(bad), device='cpu')
    with pytest.raises(ValueError, match="net must be one of"):
        get_lpips_net('squeezy', **RANDOM_LPIPS)


# ------------------------------------------------------------------------------------------------------
# the VGG loss
@pytest.mark.parametrize('criterion', ['l1', 'l2', 'fro'])
def test_perceptual_terms_sum_over_outputs_like_the_branch_mse(criterion):
    torch.manual_seed(0)
    cri = build_perceptual_loss(dict(PERCEP_OPT, style_weight=0.5, layer_weights={'conv2_2': 0.5, 'conv3_4': 1.0},
                                     criterion=criterion))
    outputs = [torch.rand(2, 3, 32, 32, requires_grad=True) for _ in range(3)]
    gt = torch.rand(2, 3, 32, 32)
    terms = perceptual_terms(cri, outputs, gt)
    assert set(terms) == {'l_percep', 'l_style'}
    one_by_one = [cri(out, gt) for out in outputs]
    assert terms['l_percep'].item() == pytest.approx(sum(p for p, _ in one_by_one).item(), rel=1e-5)
    assert terms['l_style'].item() == pytest.approx(sum(s for _, s in one_by_one).item(), rel=1e-5)
    sum(terms.values()).backward()
    assert all(out.grad is not None and out.grad.abs().sum() > 0 for out in outputs)
    assert not any(p.requires_grad for p in cri.parameters())  # the VGG is never trained
    if criterion == 'l2':  # SRGAN's VGG loss: MSE of the features (BasicSR 1.4.2's own 'l2' is broken)
        fx, fg = cri.vgg(outputs[0]), cri.vgg(gt)
        expected = 0.01 * sum(w * torch.mean((fx[k] - fg[k])**2) for k, w in {'conv2_2': 0.5, 'conv3_4': 1.0}.items())
        assert one_by_one[0][0].item() == pytest.approx(expected.item(), rel=1e-5)


def test_perceptual_loss_reads_vgg_weights_from_pretrained_path(tmp_path):
    import torchvision

    torch.manual_seed(2)
    features = torchvision.models.vgg11(weights=None).features
    path = tmp_path / 'vgg11_features.pth'
    torch.save({f'features.{k}': v for k, v in features.state_dict().items()}, path)
    cri = build_perceptual_loss({'layer_weights': {'conv2_1': 1.0}, 'vgg_type': 'vgg11', 'pretrained_path': str(path)})
    assert torch.equal(cri.vgg.vgg_net.conv1_1.weight, features[0].weight)
    assert torch.equal(cri.vgg.vgg_net.conv2_1.weight, features[3].weight)


def test_missing_weight_files_are_named_with_the_option_to_set(tmp_path, monkeypatch):
    missing = tmp_path / 'nowhere' / 'vgg19-dcbb9e9d.pth'
    with pytest.raises(MissingWeightsError, match=r'train:perceptual_opt:pretrained_path.*nowhere/vgg19'):
        build_perceptual_loss({'layer_weights': {'conv5_4': 1.0}, 'pretrained_path': str(missing)})
    with pytest.raises(MissingWeightsError, match=r'val:metrics:lpips:pretrained_path.*alex\.pth'):
        check_pretrained_weights({'val': {'metrics': {'lpips': dict(LPIPS_METRIC, pretrained=True,
                                                                     pretrained_path=str(tmp_path / 'alex.pth'))}}})

    # nothing set and no download possible (offline): the file, where it was looked for and the option
    def offline(*args, **kwargs):
        raise urllib.error.URLError('Name or service not known')

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', offline)
    with pytest.raises(MissingWeightsError) as err:
        resolve_weights('vgg19', None, 'train:perceptual_opt:pretrained_path',
                        ('experiments/pretrained_models/vgg19-dcbb9e9d.pth', ))
    message = str(err.value)
    for part in ('vgg19-dcbb9e9d.pth', 'experiments/pretrained_models/', str(tmp_path / 'hub' / 'checkpoints'),
                 'train:perceptual_opt:pretrained_path', 'URLError'):
        assert part in message
    # a file in torch hub's cache is found without downloading
    (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
    cached = tmp_path / 'hub' / 'checkpoints' / 'alexnet-owt-7be5be79.pth'
    cached.write_bytes(b'')
    assert resolve_weights('alexnet', None, 'x') == str(cached)


def test_training_step_adds_the_vgg_terms_and_guards_them(photo_data, tmp_path):
    from test_numerics import batch, make_model, weights

    def step(stage, percep, bad=None):
        model = make_model(photo_data, tmp_path, stage=stage, **({'train:perceptual_opt': dict(PERCEP_OPT)}
                                                                 if percep else {}))
        model.feed_data(batch(bad))
        model.optimize_parameters(1)
        return model

    plain, joint = step('joint', False), step('joint', True)
    log = joint.get_current_log()
    assert log['l_percep'] > 0 and log['l_percep_fused'] > 0  # every branch, and the fused output
    assert log['l_branch'] == plain.get_current_log()['l_branch']  # same forward, same MSE terms
    fusion = [k for k in weights(joint) if k.startswith('fusion.')]
    tree = [k for k in weights(joint) if not k.startswith('fusion.')]
    for keys in (tree, fusion):  # the VGG terms change both updates
        assert any(not torch.equal(weights(joint)[k], weights(plain)[k]) for k in keys)
    with pytest.raises(FloatingPointError, match=r'stage divergence\): .*l_percep=nan'):
        step('divergence', True, bad=float('nan'))
    with pytest.raises(FloatingPointError, match=r'stage convergence\): l_conv=nan, l_percep=nan'):
        step('convergence', True, bad=float('nan'))


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_percep_option_files_are_the_plain_ones_plus_the_vgg_loss_and_lpips(scale):
    """Table 2 reports x2, x3 and x4: each scale has the three files, the plain ones plus the VGG loss and LPIPS
    named by its backbone, on the whole image (the compared papers' protocol, CDC's test script)."""
    import yaml

    from conftest import ROOT

    def load(name):
        return yaml.safe_load((ROOT / 'options' / name).read_text())

    for plain_name, stage in ((f'train_D2C_div_x{scale}.yml', 'div'), (f'train_D2C_conv_x{scale}.yml', 'conv'),
                              (f'test_D2C_x{scale}.yml', None)):
        plain, percep = load(plain_name), load(plain_name.replace('.yml', '_percep.yml'))
        assert percep['name'] == plain['name'] + '_percep'
        assert 'lpips' not in percep['val']['metrics']  # one name for every backbone was ambiguous
        lpips = percep['val']['metrics'].pop('lpips_alex')
        assert lpips['type'] == 'calculate_lpips' and lpips['net'] == 'alex' and lpips['better'] == 'lower'
        assert lpips['crop_border'] == 0
        if stage is not None:
            vgg = percep['train'].pop('perceptual_opt')
            assert vgg['layer_weights'] == {'relu5_4': 1.0} and vgg['criterion'] == 'l2'  # SRGAN's VGG54
            assert vgg['perceptual_weight'] == 0.006  # SRGAN's 1/12.75
            if (scale, stage) == (4, 'div'):  # the block is the same in every file: built once (VGG19 is slow)
                cri = build_perceptual_loss(dict(vgg, pretrained=False, pretrained_path=None))
                assert cri.vgg.layer_name_list == ['relu5_4'] and isinstance(cri.criterion, torch.nn.MSELoss)
            assert vgg == load('train_D2C_div_x4_percep.yml')['train']['perceptual_opt']
        if stage != 'div':  # their weights come from the percep runs
            assert percep['path']['pretrain_network_g'].replace('_percep/', '/') == plain['path']['pretrain_network_g']
            percep['path']['pretrain_network_g'] = plain['path']['pretrain_network_g']
        for opt in (plain, percep):
            del opt['name']
        assert percep == plain


# ------------------------------------------------------------------------------------------------------
# through the entry points
def lpips_values(log):
    """``[(value, best, best_iter)]`` of the validation lines of ``log`` for the ``lpips`` metric (stage 1: of the
    mean of the branches, ``lpips_mean_of_branches``)."""
    return [(float(v), float(b), int(i)) for v, b, i in
            re.findall(r'# lpips(?:_mean_of_branches)?: ([\d.]+)\s+Best: ([\d.]+) @ (\d+) iter', log)]


@pytest.fixture(scope='module')
def percep_runs(photo_data, tmp_path_factory):
    """Stage 1 and stage 2 with the VGG loss and LPIPS validation at every iteration, through train.py."""
    tmp = tmp_path_factory.mktemp('percep')
    div, conv = unique_name('percep_div'), unique_name('percep_conv')
    metrics = {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True},
               'lpips': dict(LPIPS_METRIC)}
    common = {'train:perceptual_opt': dict(PERCEP_OPT), 'val:metrics': metrics, 'val:val_freq': 1,
              'datasets:train:gt_size': 48}
    div_opt = tiny_options(photo_data, div, total_iter=3, **common)
    run_entry('train', '-opt', write_options(div_opt, tmp / 'div.yml'))
    conv_opt = tiny_options(photo_data, conv, stage='convergence', total_iter=2,
                            pretrain=str(experiment_dir(div) / 'models' / 'net_g_latest.pth'), **common)
    run_entry('train', '-opt', write_options(conv_opt, tmp / 'conv.yml'))
    return dict(tmp=tmp, div=div, conv=conv, conv_opt=conv_opt, metrics=metrics)


def train_log(name):
    return '\n'.join(p.read_text() for p in sorted(experiment_dir(name).glob('train_*.log')))


def test_two_stage_training_logs_the_vgg_loss_and_lpips(percep_runs):
    div_log, conv_log = train_log(percep_runs['div']), train_log(percep_runs['conv'])
    assert re.search(r'l_branch: \S+ l_triplet: \S+ l_percep: [\d.e+-]+', div_log)
    assert re.search(r'l_conv: \S+ l_percep: [\d.e+-]+', conv_log)
    for log, iters in ((div_log, 3), (conv_log, 2)):
        values = lpips_values(log)  # one validation per iteration, and BasicSR's final one
        assert len(values) == iters + 1 and all(0 < v < 2 for v, _, _ in values)


def test_best_lpips_is_tracked_as_the_minimum(percep_runs):
    log = train_log(percep_runs['div'])
    values = lpips_values(log)
    assert len(values) == 4, re.findall(r'# lpips.*', log)  # one validation per iteration, and the final one
    assert len({v for v, _, _ in values}) > 1  # LPIPS changed, so "higher is better" would pick another one
    # validations after iterations 1, 2, 3, then BasicSR's final one: the same weights as iteration 3, logged
    # with the counter its loop ends with (past total_iter)
    assert values[3][0] == values[2][0]
    for n in range(1, len(values) + 1):  # after each validation: the minimum so far, and its iteration
        seen = [v for v, _, _ in values[:n]]
        best, best_iter = values[n - 1][1], values[n - 1][2]
        assert best == min(seen), values
        if best_iter <= 3:
            assert seen[best_iter - 1] == best, values
        else:  # a tie at the final validation moves "Best" to it
            assert n == 4 and seen[3] == best, values
    psnr = re.findall(r'# psnr_mean_of_branches: ([\d.]+)\s+Best: ([\d.]+) @', train_log(percep_runs['div']))
    assert float(psnr[-1][1]) == max(float(v) for v, _ in psnr)  # PSNR still tracked as the maximum


def test_perceptual_run_resumes(percep_runs):
    name, opt = percep_runs['conv'], percep_runs['conv_opt']
    longer = dict(opt, train=dict(opt['train'], total_iter=4))
    proc = run_entry('train', '-opt', write_options(longer, percep_runs['tmp'] / 'conv_longer.yml'), '--auto_resume')
    out = proc.stdout + proc.stderr
    assert 'Resuming training from epoch: 0, iter: 2' in out
    assert (experiment_dir(name) / 'training_states' / '4.state').exists()
    assert re.search(r'iter:\s+4, .*l_percep: [\d.e+-]+', train_log(name))


def test_test_entry_point_reports_lpips(percep_runs, photo_data):
    name = unique_name('percep_test')
    opt = tiny_options(photo_data, name, pretrain=str(experiment_dir(percep_runs['conv']) / 'models' /
                                                      'net_g_latest.pth'))
    opt['datasets'] = {'test_1': dict(opt['datasets']['val'])}
    opt['val'] = {'save_img': False, 'metrics': percep_runs['metrics']}
    del opt['train']
    run_entry('test', '-opt', write_options(opt, percep_runs['tmp'] / 'test.yml'))
    log = next(results_dir(name).glob('test_*.log')).read_text()
    lpips = re.search(r'# lpips: ([\d.]+)', log)
    assert lpips and 0 < float(lpips.group(1)) < 2 and '# psnr:' in log


def test_missing_weight_file_stops_before_anything_is_written(photo_data, tmp_path):
    name = unique_name('percep_missing')
    opt = tiny_options(photo_data, name, **{'train:perceptual_opt': {
        'type': 'PerceptualLoss', 'layer_weights': {'conv5_4': 1.0}, 'pretrained_path': str(tmp_path / 'vgg.pth')}})
    proc = run_entry('train', '-opt', write_options(opt, tmp_path / 'train.yml'), check=False)
    assert proc.returncode != 0
    assert 'train:perceptual_opt:pretrained_path' in proc.stderr and str(tmp_path / 'vgg.pth') in proc.stderr
    assert not experiment_dir(name).exists()

    opt = tiny_options(photo_data, name, pretrain=None)
    opt['datasets'] = {'test_1': dict(opt['datasets']['val'])}
    opt['val'] = {'save_img': False,
                  'metrics': {'lpips': dict(LPIPS_METRIC, pretrained=True, pretrained_path=str(tmp_path / 'a.pth'))}}
    del opt['train']
    proc = run_entry('test', '-opt', write_options(opt, tmp_path / 'test.yml'), check=False)
    assert proc.returncode != 0 and 'val:metrics:lpips:pretrained_path' in proc.stderr
    assert not results_dir(name).exists()


def test_benchmark_runs():
    from conftest import load_script

    train, val = load_script('benchmarks/bench_percep.py').main(['--smoke'])
    assert set(train) == {'divergence', 'convergence'}  # (plain, with VGG) x (wall, CPU) seconds per iteration
    assert all(t > 0 for rows in train.values() for row in rows for t in row)
    assert set(val) == {'psnr + ssim (Y)', 'lpips (alex)'}
