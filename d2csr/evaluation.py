"""Evaluation of D2C-SR's divergent branches and their fusions: the table of paper Sec. 4.6, in one place.

Every table of the project (validation logs, ``d2csr/test.py``, the demo, the evidence report, the
visualizer's table and panels) is made by :func:`fusion_metrics`, with these rows:

- ``bicubic``: the LR input upsampled by :func:`bicubic_upsample`, MATLAB-style ``imresize`` (BasicSR's
  ``basicsr.utils.matlab_functions.imresize``, the usual SR baseline), named ``BICUBIC_LABEL`` in tables;
- ``branch1`` .. ``branchP``: the divergent predictions;
- ``mean``: their plain average, the simplest fusion (what the convergence net's softmax gives when its
  weights are uniform, ``1 / P``);
- ``fused``: the convergence net's output (learned per-pixel weights, eq. 8);
- ``oracle``: per pixel the branch closest to HR (:func:`oracle_fusion`, the upper bound of Sec. 4.6).

:func:`weight_mad` tells how far the convergence weights are from uniform: ``mean |W_i - 1/P|`` over
pixels and branches, ``0`` when the fused output is the mean, at most ``2 (P - 1) / P**2`` when every
pixel takes one branch. PSNR / SSIM are BasicSR's ``calculate_psnr`` / ``calculate_ssim`` on 8-bit images
(Y channel and ``crop_border = scale`` by default), as the validation computes them.

This module imports nothing from :mod:`d2csr.models` (the model imports it).
"""
import csv
from collections import OrderedDict

import cv2
import numpy as np
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import img2tensor, tensor2img
from basicsr.utils.matlab_functions import imresize

from d2csr.losses import DivergenceLoss
from d2csr.utils.atomic import atomic_write

BICUBIC_LABEL = 'bicubic (MATLAB imresize)'
MEAN_LABEL = 'mean of branches'


def read_rgb(path):
    """An image file as float32 RGB in [0, 1] ``(H, W, 3)``; names the file if it cannot be read."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f'cannot read image {path}')
    return img[..., ::-1].astype(np.float32) / 255.0


def bicubic_upsample(lq, scale):
    """The project's bicubic baseline: MATLAB-style ``imresize`` (BasicSR's), clipped to ``[0, 1]``.

    ``lq``: ``(N, C, h, w)`` tensor in ``[0, 1]``. Returns ``(N, C, scale*h, scale*w)`` float32 on ``lq``'s
    device. (PyTorch's ``F.interpolate(mode='bicubic')`` uses another kernel and gives about 0.1 dB more on
    the demo's photos; it is not used for any reported figure.)
    """
    out = []
    for img in lq.detach().float().cpu():
        up = imresize(img.permute(1, 2, 0).numpy(), scale)
        out.append(torch.from_numpy(np.ascontiguousarray(np.clip(up, 0, 1))).permute(2, 0, 1))
    return torch.stack(out).to(lq.device)


def oracle_fusion(branches, target):
    """Per pixel, the branch value closest to ``target`` (squared error summed over channels).

    ``branches``: list of ``P`` tensors ``(N, C, H, W)``; ``target``: ``(N, C, H, W)``. Returns ``(N, C, H, W)``.
    """
    stacked = torch.stack(branches)  # (P, N, C, H, W)
    best = ((stacked - target.unsqueeze(0))**2).sum(dim=2, keepdim=True).argmin(dim=0, keepdim=True)
    return stacked.gather(0, best.expand(1, *stacked.shape[1:])).squeeze(0)


def mean_fusion(branches):
    """The plain average of ``P`` predictions ``(N, C, H, W)``: the fusion with uniform weights ``1 / P``."""
    return torch.stack(branches).mean(dim=0)


def weight_mad(weights):
    """Mean absolute deviation of convergence weights ``(N, P, H, W)`` from uniform ``1 / P`` (a float).

    ``0``: the fused output is the mean of the branches; the largest value, ``2 (P - 1) / P**2`` (0.375 for
    ``P = 4``), means every pixel takes a single branch.
    """
    return (weights.detach().float() - 1.0 / weights.shape[1]).abs().mean().item()


def fusion_metrics(branches, fused, gt, scale, lq=None, crop_border=None, test_y_channel=True, ssim=False,
                   bicubic=None):
    """PSNR (and SSIM) of one image's rows: ``bicubic``, ``branch1..P``, ``mean``, ``fused``, ``oracle``.

    Args:
        branches (list[Tensor]): ``P`` predictions ``(1, C, H, W)`` in ``[0, 1]``.
        fused (Tensor): the convergence net's output ``(1, C, H, W)``.
        gt (Tensor): HR ``(1, C, H, W)``.
        scale (int): upscale factor (the default ``crop_border``, and the bicubic factor).
        lq (Tensor, optional): LR ``(1, C, h, w)``; gives the ``bicubic`` row (left out without it).
        crop_border (int): pixels cropped at each border before measuring (default ``scale``).
        test_y_channel (bool): measure on Y (BT.601), as the paper; ``False``: RGB.
        ssim (bool): also compute SSIM.
        bicubic (float or dict, optional): the ``bicubic`` row's value(s) already known (validation caches
            it per image), instead of recomputing it from ``lq``.

    Returns:
        OrderedDict ``{row: {'psnr': float[, 'ssim': float]}}`` in the order above.
    """
    opts = dict(crop_border=scale if crop_border is None else crop_border, test_y_channel=test_y_channel)
    gt_img = tensor2img([gt.detach().float().cpu()])
    branches = [b.detach().float() for b in branches]
    outputs = OrderedDict()
    if bicubic is None and lq is not None:
        outputs['bicubic'] = bicubic_upsample(lq, scale)
    outputs.update((f'branch{i + 1}', b) for i, b in enumerate(branches))
    outputs['mean'] = mean_fusion(branches)
    outputs['fused'] = fused.detach().float()
    outputs['oracle'] = oracle_fusion(branches, gt.detach().float().to(branches[0].device))
    rows = OrderedDict()
    if bicubic is not None:
        rows['bicubic'] = dict(bicubic) if isinstance(bicubic, dict) else {'psnr': float(bicubic)}
    for row, out in outputs.items():
        img = tensor2img([out.cpu()])  # RGB tensor -> BGR uint8, as BasicSR's validation does
        rows[row] = {'psnr': float(calculate_psnr(img, gt_img, **opts))}
        if ssim:
            rows[row]['ssim'] = float(calculate_ssim(img, gt_img, **opts))
    if 'bicubic' in rows:
        rows.move_to_end('bicubic', last=False)
    return rows


def psnr_row(lq, branches, sr, gt, scale, psnr_opts=None):
    """PSNRs of one image, :func:`fusion_metrics` without SSIM: ``{'bicubic', 'branch1'.., 'mean', 'fused',
    'oracle'}`` (dB). ``psnr_opts``: a ``psnr`` metric's options; its ``crop_border`` (default ``scale``) and
    ``test_y_channel`` (default ``True``) are used, the rest ignored."""
    opts = dict(crop_border=scale, test_y_channel=True)
    opts.update({k: v for k, v in (psnr_opts or {}).items() if k in opts})
    rows = fusion_metrics(branches, sr, gt, scale, lq=lq, **opts)
    return {row: values['psnr'] for row, values in rows.items()}


def pair_tensors(pairs, scale, device='cpu'):
    """``(lr, hr)`` tensors ``(1, 3, h, w)`` / ``(1, 3, s*h, s*w)`` in ``[0, 1]`` of each ``(lr_path, hr_path)`` of
    ``pairs``, HR cropped to ``scale x`` LR size (``ValueError`` when it is smaller)."""
    for lr_path, hr_path in pairs:
        lr, hr = read_rgb(lr_path), read_rgb(hr_path)
        h, w = lr.shape[:2]
        hr = hr[:h * scale, :w * scale]
        if hr.shape[:2] != (h * scale, w * scale):
            raise ValueError(f'HR {hr_path} is smaller than {scale} x LR {lr_path}')
        yield (img2tensor(lr, bgr2rgb=False).unsqueeze(0).to(device),
               img2tensor(hr, bgr2rgb=False).unsqueeze(0).to(device))


@torch.no_grad()
def evaluate_pairs(net, pairs, scale, device='cpu'):
    """Mean PSNR / SSIM per row (:func:`fusion_metrics`) over ``pairs``, and the weights' deviation.

    Args:
        net: a :class:`~d2csr.archs.D2CSR` (put in eval mode here).
        pairs: iterable of ``(lr_path, hr_path)``; HR is cropped to ``scale x`` LR size.
        scale (int): the upscale factor (also the border cropped before measuring).

    Returns:
        OrderedDict ``{row: {'psnr': float, 'ssim': float}}`` (rows ``bicubic``, ``branch1..P``, ``mean``,
        ``fused``, ``oracle``); the ``fused`` row also holds ``weight_mad`` (:func:`weight_mad`, averaged
        over the images).
    """
    net.eval()
    sums = OrderedDict()
    mad = 0.0
    count = 0
    for lr_t, hr_t in pair_tensors(pairs, scale, device):
        branches = net.forward_branches(lr_t)
        fused, weights = net.fuse(branches)
        rows = fusion_metrics(branches, fused, hr_t, scale, lq=lr_t, ssim=True)
        for row, values in rows.items():
            entry = sums.setdefault(row, {'psnr': 0.0, 'ssim': 0.0})
            for key, value in values.items():
                entry[key] += value
        mad += weight_mad(weights)
        count += 1
    if count == 0:
        raise ValueError('evaluate_pairs: no image pairs given')
    results = OrderedDict((row, {k: v / count for k, v in entry.items()}) for row, entry in sums.items())
    results['fused']['weight_mad'] = mad / count
    return results


def branch_diversity(branches, target):
    """How different the branches' errors are: the mean over branch pairs ``i < j`` of ``mean((res_i - res_j)^2)``,
    ``res = |G(I_i) - G(HR)|`` (paper eq. 2-3: Y channel, each image's own mean and std), a float.

    ``branches``: list of ``P`` tensors ``(N, 3, H, W)``; ``target``: ``(N, 3, H, W)``. 0 when all branches err
    alike; the divergence term (eq. 5) pushes it up. One branch gives 0.
    """
    gray = DivergenceLoss(depth=1, width=1, margins=0.0).to(target.device)  # only its normalized_gray
    with torch.no_grad():
        hr_gray = gray.normalized_gray(target.float())
        res = [(gray.normalized_gray(b.float()) - hr_gray).abs() for b in branches]
        pairs = [((res[i] - res[j])**2).mean().item() for i in range(len(res)) for j in range(i + 1, len(res))]
    return float(np.mean(pairs)) if pairs else 0.0


def diversity_of_pairs(net, pairs, scale, device='cpu'):
    """:func:`branch_diversity` of ``net`` (a :class:`~d2csr.archs.D2CSR`) averaged over image ``pairs``
    (``(lr_path, hr_path)``; HR cropped to ``scale x`` LR size, as :func:`evaluate_pairs` does)."""
    net.eval()
    values = []
    for lr_t, hr_t in pair_tensors(pairs, scale, device):
        with torch.no_grad():
            values.append(branch_diversity(net.forward_branches(lr_t), hr_t))
    if not values:
        raise ValueError('diversity_of_pairs: no image pairs given')
    return float(np.mean(values))


def row_label(row):
    """A row's name as tables print it (``bicubic`` and ``mean`` get their definitions)."""
    return {'bicubic': BICUBIC_LABEL, 'mean': MEAN_LABEL}.get(row, row)


def format_table(results, title=None):
    """A Markdown table of :func:`evaluate_pairs` results (one line per row, averaged over images), then the
    weights' deviation from uniform."""
    lines = [f'**{title}**', ''] if title else []
    lines += ['| output | PSNR (dB, Y) | SSIM (Y) |', '| --- | ---: | ---: |']
    lines += [f'| {row_label(row)} | {m["psnr"]:.2f} | {m["ssim"]:.4f} |' for row, m in results.items()]
    mad = results.get('fused', {}).get('weight_mad')
    if mad is not None:
        num = sum(row.startswith('branch') for row in results)
        lines += ['', f'Convergence weights: mean |W - 1/P| = {mad:.4f} (0: the fused output is the mean of '
                  f'branches; {2 * (num - 1) / num**2:.3f}: one branch per pixel).']
    return '\n'.join(lines)


def format_image_table(rows, names):
    """Per-image PSNRs (:func:`psnr_row` dicts, one per name) as aligned text: one line per image, then the
    mean over images and a legend."""
    if not rows:
        return ''
    keys = list(rows[0])
    width = max(8, *(len(n) for n in names), len('mean'))
    lines = [f'{"image":<{width}} ' + ' '.join(f'{k:>8}' for k in keys)]
    for name, row in zip(names, rows):
        lines.append(f'{name:<{width}} ' + ' '.join(f'{row[k]:8.2f}' for k in keys))
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    lines.append(f'{"mean":<{width}} ' + ' '.join(f'{means[k]:8.2f}' for k in keys))
    lines.append(f'(bicubic: {BICUBIC_LABEL}; mean: {MEAN_LABEL}, uniform weights; last line: mean over images)')
    return '\n'.join(lines)


def write_image_table(path, rows, names):
    """The per-image table of :func:`format_image_table` as CSV (``image, bicubic, branch1..P, mean, fused,
    oracle``; the last line is the mean over images)."""
    keys = list(rows[0]) if rows else []
    with atomic_write(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['image', *keys])
        for name, row in zip(names, rows):
            writer.writerow([name, *(f'{row[k]:.4f}' for k in keys)])
        if rows:
            writer.writerow(['mean', *(f'{np.mean([r[k] for r in rows]):.4f}' for k in keys)])
