"""The paper's metric on request: the authors' PSNR and SSIM (their luma on BGR order, float, their SSIM padding,
no crop) as BasicSR metrics, checked against the authors' formulas written out here with numpy, and fed the float
output in D2CModel's validation."""
import math

import numpy as np
import pytest
import torch
from basicsr.data import build_dataloader, build_dataset
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.models import build_model
from basicsr.utils.registry import METRIC_REGISTRY

from conftest import TINY_NET, tiny_options
from d2csr.metrics.paper_metrics import calculate_d2csr_paper_psnr, calculate_d2csr_paper_ssim

# REFERENCE.md section 2 / the authors' metrics/PSNR.py and SSIM.py: these coefficients / 256, applied to the
# channels in array order; their arrays are what cv2.imread gives, B, G, R
COEFFS = [65.738, 129.057, 25.064]


def authors_psnr(sr, hr, shave):
    """Their cal_psnr on (3, H, W) float arrays in their channel order: clip, weighted channel sum of the
    difference, shave, -10 log10(mse)."""
    diff = np.clip(sr, 0, 1) - np.clip(hr, 0, 1)
    gray = sum(c / 256 * diff[i] for i, c in enumerate(COEFFS))
    valid = gray[shave:-shave, shave:-shave]
    return -10 * math.log10(np.mean(valid**2))


def authors_ssim(img1, img2, size=11, sigma=1.5):
    """Their ssim(): luma as above, Gaussian window, 'same' correlation with zeros outside, mean of the map."""
    y1 = sum(c / 256 * img1[i] for i, c in enumerate(COEFFS))
    y2 = sum(c / 256 * img2[i] for i, c in enumerate(COEFFS))
    g = np.array([math.exp(-(x - size // 2)**2 / float(2 * sigma**2)) for x in range(size)])
    g /= g.sum()
    window = np.outer(g, g)

    def filt(x):
        padded = np.pad(x, size // 2)  # zeros
        out = np.zeros_like(x)
        for dy in range(size):
            for dx in range(size):
                out += window[dy, dx] * padded[dy:dy + x.shape[0], dx:dx + x.shape[1]]
        return out

    mu1, mu2 = filt(y1), filt(y2)
    s1, s2, s12 = filt(y1 * y1) - mu1**2, filt(y2 * y2) - mu2**2, filt(y1 * y2) - mu1 * mu2
    c1, c2 = 0.01**2, 0.03**2
    return float(np.mean(((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))))


def pair(seed=0, h=24, w=20):
    """A BGR float pair (H, W, 3): a smooth image and a noisy, colour-shifted copy (red and blue differ)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    hr = np.stack([0.2 + 0.6 * xx, 0.5 + 0.3 * np.sin(6 * yy), 0.8 - 0.5 * yy * xx], -1)
    sr = hr + rng.normal(0, 0.03, hr.shape) + np.array([0.04, 0.0, -0.02])
    sr[0, 0] = [1.2, -0.1, 0.5]  # outside [0, 1]: clipped by their PSNR, not by their SSIM
    return sr, hr


def chw(img):
    return img.transpose(2, 0, 1)


def test_psnr_is_the_authors_formula_on_floats_and_on_8_bit_images():
    sr, hr = pair()
    assert calculate_d2csr_paper_psnr(sr, hr, crop_border=4) == pytest.approx(authors_psnr(chw(sr), chw(hr), 4),
                                                                              abs=1e-9)
    u8 = [np.round(np.clip(x, 0, 1) * 255).astype(np.uint8) for x in (sr, hr)]
    assert calculate_d2csr_paper_psnr(*u8, crop_border=4) == pytest.approx(
        authors_psnr(*(chw(x / 255.) for x in u8), 4), abs=1e-9)
    assert calculate_d2csr_paper_psnr(hr, hr, crop_border=4) == float('inf')
    # it is BasicSR's Y PSNR of the images with red and blue swapped (same coefficients: 65.481/255 ~ 65.738/256),
    # and not BasicSR's Y PSNR of the images as they are
    swapped = calculate_psnr(u8[0][..., ::-1], u8[1][..., ::-1], 4, test_y_channel=True)
    assert calculate_d2csr_paper_psnr(*u8, crop_border=4) == pytest.approx(swapped, abs=1e-3)
    assert abs(calculate_d2csr_paper_psnr(*u8, crop_border=4) - calculate_psnr(*u8, 4, test_y_channel=True)) > 0.05


def test_ssim_is_the_authors_formula_with_zero_padding_and_no_crop():
    sr, hr = pair(1)
    ours = calculate_d2csr_paper_ssim(sr, hr)
    assert ours == pytest.approx(authors_ssim(chw(sr), chw(hr)), abs=1e-12)
    assert calculate_d2csr_paper_ssim(hr, hr) == pytest.approx(1.0, abs=1e-12)
    # the zeros pulled into the border make it differ from BasicSR's (valid window, shaved border)
    u8 = [np.round(np.clip(x, 0, 1) * 255).astype(np.uint8) for x in (sr, hr)]
    assert calculate_d2csr_paper_ssim(*u8) == pytest.approx(authors_ssim(*(chw(x / 255.) for x in u8)), abs=1e-12)
    assert abs(calculate_d2csr_paper_ssim(*u8) - calculate_ssim(*u8, 0, test_y_channel=True)) > 1e-3


def test_bad_inputs_are_named():
    sr, hr = pair()
    with pytest.raises(ValueError, match=r'uint8 in \[0, 255\] or float in \[0, 1\], got int64'):
        calculate_d2csr_paper_psnr((hr * 255).astype(np.int64), (hr * 255).astype(np.int64), crop_border=4)
    with pytest.raises(ValueError, match='3-channel BGR'):
        calculate_d2csr_paper_ssim(sr[..., :1], hr[..., :1])
    assert METRIC_REGISTRY.get('calculate_d2csr_paper_psnr') is calculate_d2csr_paper_psnr


def test_d2c_validation_gives_them_the_float_output(photo_data, tmp_path):
    """In BasicSR's validation metrics get tensor2img's 8-bit image; in D2CModel's, these two get the float
    output the authors' code scores (and BasicSR's calculate_metric is BasicSR's again afterwards)."""
    import basicsr.models.sr_model as sr_model

    metrics = {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True},
               'psnr_paper': {'type': 'calculate_d2csr_paper_psnr', 'crop_border': 4},
               'ssim_paper': {'type': 'calculate_d2csr_paper_ssim'}}
    network = dict(TINY_NET, bicubic_skip=True, mean_shift='none')
    opt = tiny_options(photo_data, 'paper_metric', network=network, **{'val:metrics': metrics})
    opt.update(is_train=False, dist=False, rank=0, world_size=1)
    del opt['datasets']['train'], opt['train']  # a test run's options
    opt['path'].update(visualization=str(tmp_path))
    model = build_model(opt)
    with torch.no_grad():  # near the bicubic upsampling: a PSNR where 8-bit rounding shows
        for p in model.net_g.parameters():
            p.mul_(0.01)
    val_opt = dict(opt['datasets']['val'], phase='val', scale=4)
    loader = build_dataloader(build_dataset(val_opt), val_opt, num_gpu=0, dist=False, sampler=None)
    before = sr_model.calculate_metric
    model.validation(loader, current_iter=0, tb_logger=None, save_img=False)
    assert sr_model.calculate_metric is before
    data = next(iter(loader))
    with torch.no_grad():
        sr = model.net_g(data['lq']).double().numpy()[0][::-1]  # RGB -> the authors' BGR
    hr = data['gt'].double().numpy()[0][::-1]
    reported = model.metric_results
    assert sr.min() < 0 or sr.max() > 1  # the authors' SSIM sees these values unclipped (tensor2img clamps)
    assert reported['psnr_paper'] > 20
    assert reported['psnr_paper'] == pytest.approx(authors_psnr(sr, hr, 4), abs=1e-5)  # float32 forward
    assert reported['ssim_paper'] == pytest.approx(authors_ssim(sr, hr), abs=1e-7)
    rounded = np.round(np.clip(sr, 0, 1) * 255) / 255
    assert abs(reported['psnr_paper'] - authors_psnr(rounded, hr, 4)) > 1e-4  # not the 8-bit image


def test_stage1_validation_gives_them_the_mean_of_the_branches(photo_data, tmp_path, monkeypatch):
    """While stage 1 trains, validation scores the mean of the branches (``*_mean_of_branches``): the float
    metrics score that image too, not the untrained convergence net's fused output."""
    metrics = {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True},
               'psnr_paper': {'type': 'calculate_d2csr_paper_psnr', 'crop_border': 4}}
    network = dict(TINY_NET, bicubic_skip=True, mean_shift='none')
    opt = tiny_options(photo_data, 'paper_metric_mean', network=network, **{'val:metrics': metrics})
    opt.update(is_train=False, dist=False, rank=0, world_size=1)
    del opt['datasets']['train'], opt['train']
    opt['path'].update(visualization=str(tmp_path))
    model = build_model(opt)
    monkeypatch.setattr(model, 'scores_mean_of_branches', lambda: True)  # as in a stage-1 training run
    val_opt = dict(opt['datasets']['val'], phase='val', scale=4)
    loader = build_dataloader(build_dataset(val_opt), val_opt, num_gpu=0, dist=False, sampler=None)
    model.validation(loader, current_iter=0, tb_logger=None, save_img=False)
    data = next(iter(loader))
    with torch.no_grad():
        branches = model.net_g.forward_branches(data['lq'])
        mean = (sum(b.double() for b in branches) / len(branches)).numpy()[0][::-1]
        fused = model.net_g(data['lq']).double().numpy()[0][::-1]
    hr = data['gt'].double().numpy()[0][::-1]
    reported = model.metric_results['psnr_paper_mean_of_branches']
    assert reported == pytest.approx(authors_psnr(mean, hr, 4), abs=1e-4)
    assert abs(reported - authors_psnr(fused, hr, 4)) > 1e-3  # not the fused output
