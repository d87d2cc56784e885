"""The PSNR and SSIM the D2C-SR paper's tables were computed with (the authors' ``metrics/PSNR.py`` and
``metrics/SSIM.py``), as BasicSR metrics chosen in an options file::

    val:
      metrics:
        psnr_paper:                         # the paper's tables (Tables 1-3, 5)
          type: calculate_d2csr_paper_psnr
          crop_border: 4                    # the authors shave `scale` pixels
        ssim_paper:
          type: calculate_d2csr_paper_ssim  # the authors' SSIM crops nothing (crop_border: 0, the default)

How they differ from BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with ``test_y_channel: true`` (the paper's
text, "PSNR and SSIM on the Y channel", and d2csr's default):

- **luma**: the authors weight the channels by ``(65.738, 129.057, 25.064) / 256`` in array order, and their
  arrays are BGR (``cv2.imread``), so B gets the weight BT.601 gives R: ``Y' = 0.2568 B + 0.5041 G + 0.0979 R``
  (no +16 offset; it cancels in PSNR, and their SSIM constants assume the range [0, 1]);
- **PSNR** on float images clipped to [0, 1] (peak 1), no rounding to 8 bits; ``scale`` pixels shaved;
- **SSIM**: 11 x 11 Gaussian window (sigma 1.5) applied with *zero padding* (the map has the image's size, its
  border pulled down by the zeros), constants ``(0.01)^2`` and ``(0.03)^2``, mean of the whole map, no border
  shaved, the output not clipped.

BasicSR's validation hands metrics 8-bit images (``tensor2img``); the authors' numbers are on the float output.
:func:`float_outputs_for_metrics` gives these metrics the float output instead: :class:`~d2csr.models.D2CModel`
uses it in its validation (``d2csr/test.py`` and training), so there they see exactly what the authors' code
sees. Called on 8-bit images (another model's validation, or directly), they compute the same formulas on
them; the rounding of the output moves PSNR by a few thousandths of a dB.

Inputs: ``(H, W, 3)`` arrays in BGR order (what ``tensor2img`` gives, and the authors' order): ``uint8`` in
[0, 255] or float in [0, 1] (unclipped floats are allowed: the authors' SSIM sees the raw output).
"""
import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from basicsr.metrics.metric_util import reorder_image
from d2csr.utils.registry import METRIC_REGISTRY  # d2csr's names, not BasicSR's table

# the authors' coefficients, applied to the channels in their (BGR) order: B, G, R
AUTHORS_LUMA = (65.738 / 256, 129.057 / 256, 25.064 / 256)
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2


def _as_unit_float(img, input_order, name):
    """``(H, W, 3)`` float64 on the [0, 1] scale (uint8 divided by 255; floats taken as [0, 1]-scaled, as they
    are)."""
    img = reorder_image(np.asarray(img), input_order=input_order)
    if img.shape[2] != 3:
        raise ValueError(f'{name}: the authors\' metrics take 3-channel BGR images, got shape {img.shape}')
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f'{name}: images must be uint8 in [0, 255] or float in [0, 1], got {img.dtype}')
    return img.astype(np.float64)  # [0, 1]-scaled; a network's output may leave the range (PSNR clips it)


def authors_luma(img):
    """``(H, W, 3)`` BGR -> ``(H, W)``: the authors' weighted sum, ``0.2568 B + 0.5041 G + 0.0979 R``."""
    return img @ np.asarray(AUTHORS_LUMA)


@METRIC_REGISTRY.register()
def calculate_d2csr_paper_psnr(img, img2, crop_border, input_order='HWC', **kwargs):
    """The authors' PSNR (dB): both images clipped to [0, 1], the difference reduced to their luma (B, G, R
    weighted 0.2568 / 0.5041 / 0.0979), ``crop_border`` pixels shaved (they shave ``scale``), peak 1.

    Args:
        img, img2 (ndarray): ``(H, W, 3)`` BGR, uint8 in [0, 255] or float in [0, 1].
        crop_border (int): pixels shaved from each edge (the authors: the scale).
        input_order (str): ``'HWC'`` or ``'CHW'``.

    Returns:
        float: PSNR in dB (``inf`` for identical images).
    """
    assert img.shape == img2.shape, f'Image shapes are different: {img.shape}, {img2.shape}.'
    a = np.clip(_as_unit_float(img, input_order, 'calculate_d2csr_paper_psnr'), 0, 1)
    b = np.clip(_as_unit_float(img2, input_order, 'calculate_d2csr_paper_psnr'), 0, 1)
    diff = authors_luma(a - b)
    if crop_border:
        diff = diff[crop_border:-crop_border, crop_border:-crop_border]
    mse = float(np.mean(diff**2))
    return float('inf') if mse == 0 else -10 * math.log10(mse)


def _gaussian_window(size=SSIM_WINDOW, sigma=SSIM_SIGMA):
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x**2 / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


@METRIC_REGISTRY.register()
def calculate_d2csr_paper_ssim(img, img2, crop_border=0, input_order='HWC', **kwargs):
    """The authors' SSIM: on their luma (B, G, R weighted 0.2568 / 0.5041 / 0.0979) of the images as given (the
    output is not clipped), an 11 x 11 Gaussian window (sigma 1.5) applied with zero padding, constants
    ``0.01**2`` / ``0.03**2``, the mean of the whole map. The authors shave nothing (``crop_border=0``); a
    ``crop_border`` crops the map.

    Args:
        img, img2 (ndarray): ``(H, W, 3)`` BGR, uint8 in [0, 255] or float in [0, 1].
        crop_border (int): border of the SSIM map left out of the mean (the authors: 0).
        input_order (str): ``'HWC'`` or ``'CHW'``.

    Returns:
        float: SSIM.
    """
    assert img.shape == img2.shape, f'Image shapes are different: {img.shape}, {img2.shape}.'
    y1 = torch.from_numpy(authors_luma(_as_unit_float(img, input_order, 'calculate_d2csr_paper_ssim')))[None, None]
    y2 = torch.from_numpy(authors_luma(_as_unit_float(img2, input_order, 'calculate_d2csr_paper_ssim')))[None, None]
    window = _gaussian_window()
    pad = SSIM_WINDOW // 2

    def blur(x):
        return F.conv2d(x, window, padding=pad)  # zero padding, as theirs

    mu1, mu2 = blur(y1), blur(y2)
    sigma1 = blur(y1 * y1) - mu1**2
    sigma2 = blur(y2 * y2) - mu2**2
    sigma12 = blur(y1 * y2) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + SSIM_C1) * (2 * sigma12 + SSIM_C2)) / ((mu1**2 + mu2**2 + SSIM_C1) *
                                                                       (sigma1 + sigma2 + SSIM_C2))
    if crop_border:
        ssim_map = ssim_map[..., crop_border:-crop_border, crop_border:-crop_border]
    return float(ssim_map.mean())


FLOAT_INPUT_METRICS = ('calculate_d2csr_paper_psnr', 'calculate_d2csr_paper_ssim')


def _bgr_float(tensor):
    """``(1, 3, H, W)`` RGB tensor -> ``(H, W, 3)`` BGR float64 array, values as they are."""
    return np.ascontiguousarray(tensor.detach().float().cpu()[0].permute(1, 2, 0).numpy()[..., ::-1],
                                dtype=np.float64)


def float_outputs(opt, output, gt):
    """``(output, gt)`` for :func:`float_outputs_for_metrics` when the options' ``val: metrics`` ask for one of
    :data:`FLOAT_INPUT_METRICS`, else ``None``. ``output`` is copied: BasicSR's ``tensor2img`` clamps the
    tensor it is given in place (on the CPU, where ``.cpu()`` does not copy), and the authors' SSIM sees the
    unclipped output."""
    metrics = ((opt or {}).get('val') or {}).get('metrics') or {}
    if not any(isinstance(m, dict) and m.get('type') in FLOAT_INPUT_METRICS for m in metrics.values()):
        return None
    return output.detach().clone(), gt


@contextlib.contextmanager
def float_outputs_for_metrics(model):
    """Within the block, BasicSR's validation loop (``basicsr.models.sr_model``) hands the metrics of
    :data:`FLOAT_INPUT_METRICS` the float output and target (``model.metric_floats``: ``(output, gt)`` tensors,
    set by the model for the image being scored, see :func:`float_outputs`) instead of the 8-bit images; every
    other metric gets what BasicSR gives it. BasicSR's function is put back when the block ends."""
    import basicsr.models.sr_model as sr_model

    basicsr_calculate_metric = sr_model.calculate_metric

    def calculate_metric(data, opt):
        floats = getattr(model, 'metric_floats', None)
        if opt.get('type') in FLOAT_INPUT_METRICS and floats is not None and floats[1] is not None:
            data = dict(data, img=_bgr_float(floats[0]), img2=_bgr_float(floats[1]))
        return basicsr_calculate_metric(data, opt)

    sr_model.calculate_metric = calculate_metric
    try:
        yield
    finally:
        sr_model.calculate_metric = basicsr_calculate_metric
