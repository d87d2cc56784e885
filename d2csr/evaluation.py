"""Per-branch evaluation of a D2CSR network on LR/HR image pairs: the table of paper Sec. 4.6.

For each pair it measures PSNR / SSIM (Y channel, ``crop_border = scale``, BasicSR's metrics on 8-bit
images) of: bicubic upsampling (MATLAB-style, BasicSR's ``imresize``), every branch, the fused output and
the oracle fusion (per pixel, the branch closest to HR). Returns the means over the pairs.
"""
from collections import OrderedDict

import cv2
import numpy as np
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import img2tensor, tensor2img
from basicsr.utils.matlab_functions import imresize

from .models.d2c_model import oracle_fusion


def read_rgb(path):
    """An image file as float32 RGB in [0, 1] ``(H, W, 3)``; names the file if it cannot be read."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f'cannot read image {path}')
    return img[..., ::-1].astype(np.float32) / 255.0


@torch.no_grad()
def evaluate_pairs(net, pairs, scale, device='cpu'):
    """Mean PSNR / SSIM per row (``bicubic``, ``branch1..P``, ``fused``, ``oracle``) over ``pairs``.

    Args:
        net: a :class:`~d2csr.archs.D2CSR` (put in eval mode here).
        pairs: iterable of ``(lr_path, hr_path)``; HR is cropped to ``scale x`` LR size.
        scale (int): the upscale factor (also the border cropped before measuring).

    Returns:
        OrderedDict ``{row: {'psnr': float, 'ssim': float}}``.
    """
    net.eval()
    sums = OrderedDict()
    count = 0
    for lr_path, hr_path in pairs:
        lr, hr = read_rgb(lr_path), read_rgb(hr_path)
        h, w = lr.shape[:2]
        hr = hr[:h * scale, :w * scale]
        if hr.shape[:2] != (h * scale, w * scale):
            raise ValueError(f'HR {hr_path} is smaller than {scale} x LR {lr_path}')
        lr_t = img2tensor(lr, bgr2rgb=False).unsqueeze(0).to(device)
        branches = net.forward_branches(lr_t)
        fused, _ = net.fuse(branches)
        hr_t = img2tensor(hr, bgr2rgb=False).unsqueeze(0).to(device)
        outputs = OrderedDict(bicubic=img2tensor(np.clip(imresize(lr, scale), 0, 1), bgr2rgb=False).unsqueeze(0))
        outputs.update((f'branch{i + 1}', b) for i, b in enumerate(branches))
        outputs['fused'] = fused
        outputs['oracle'] = oracle_fusion(branches, hr_t)
        # tensor2img expects RGB tensors and returns BGR uint8, as BasicSR's validation does
        gt_img = tensor2img([hr_t.cpu()])
        for row, out in outputs.items():
            img = tensor2img([out.cpu()])
            entry = sums.setdefault(row, {'psnr': 0.0, 'ssim': 0.0})
            entry['psnr'] += calculate_psnr(img, gt_img, crop_border=scale, test_y_channel=True)
            entry['ssim'] += calculate_ssim(img, gt_img, crop_border=scale, test_y_channel=True)
        count += 1
    if count == 0:
        raise ValueError('evaluate_pairs: no image pairs given')
    return OrderedDict((row, {k: v / count for k, v in entry.items()}) for row, entry in sums.items())


def format_table(results, title=None):
    """A Markdown table of :func:`evaluate_pairs` results."""
    lines = [f'**{title}**', ''] if title else []
    lines += ['| output | PSNR (dB, Y) | SSIM (Y) |', '| --- | ---: | ---: |']
    lines += [f'| {row} | {m["psnr"]:.2f} | {m["ssim"]:.4f} |' for row, m in results.items()]
    return '\n'.join(lines)
