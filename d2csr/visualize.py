"""Pictures of D2C-SR at work (paper Figs. 5, 8, 10): branches, fused result and convergence weight maps.

:func:`make_panel` draws one image's panel with the PSNRs of :func:`d2csr.evaluation.psnr_row` (each branch, the
mean, the fused output, the oracle fusion and bicubic), the data set's table is
:func:`d2csr.evaluation.format_image_table` / :func:`~d2csr.evaluation.write_image_table`. Used by
``scripts/visualize_d2c.py`` and by :class:`~d2csr.models.D2CModel` (``val: save_panels: true``).

Panel layout (``P`` branches, every cell the HR size, or shrunk to ``max_side``, under a label band of
``LABEL_HEIGHT`` pixels)::

    | LR (nearest) | branch 1 | ... | branch P | mean of branches | fused  | HR          |
    | colour bar   | W 1      | ... | W P      | |W - 1/P|        | oracle | oracle pick |

Images are labelled with their PSNR against HR (the LR cell with bicubic's, MATLAB-style ``imresize``);
weight maps are heat maps on a fixed ``[0, 1]`` scale (colour bar in the first cell); ``|W - 1/P|`` is the
per-pixel mean absolute deviation of the weights from uniform, on a ``[0, 2 (P - 1) / P**2]`` scale (0, dark
blue: the fused pixel is the mean of the branches; red: one branch), labelled with its image mean
(:func:`d2csr.evaluation.weight_mad`); the oracle pick shows which branch the oracle takes per pixel. Without
HR, the PSNRs, the HR cell and the oracle cells are left out (blank).
"""
import os
import os.path as osp

import cv2
import numpy as np
import torch
from torch.nn import functional as F
from basicsr.utils import get_root_logger, tensor2img

from d2csr.utils.image_io import write_encoded
from d2csr.evaluation import format_image_table, mean_fusion, oracle_fusion, psnr_row, weight_mad, write_image_table

LABEL_HEIGHT = 24
_FONT = cv2.FONT_HERSHEY_SIMPLEX
# distinct colours (BGR) for the oracle-pick map, one per branch
_PICK_COLOURS = np.array([[232, 126, 31], [14, 127, 255], [44, 160, 44], [40, 39, 214], [189, 103, 148],
                          [75, 86, 140], [194, 119, 227], [127, 127, 127], [34, 189, 188]], dtype=np.uint8)


def _to_bgr(tensor):
    return tensor2img([tensor.detach().float().cpu()])


def _heat(weight):
    """``(H, W)`` weights in ``[0, 1]`` -> BGR heat map."""
    return cv2.applyColorMap(np.clip(weight * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)


def _colour_bar(height, width):
    ramp = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(max(width // 4, 1), axis=1)
    cell = np.full((height, width, 3), 255, np.uint8)
    bar = _heat(ramp)
    cell[:, :bar.shape[1]] = bar
    for value, y in (('1', 0.06), ('0.5', 0.5), ('0', 0.96)):
        _put_text(cell, value, bar.shape[1] + 4, int(y * height) + 5, width - bar.shape[1] - 4, (0, 0, 0))
    return cell


def _put_text(img, text, x, y, max_width, colour):
    scale = 0.5
    while scale > 0.2 and cv2.getTextSize(text, _FONT, scale, 1)[0][0] > max_width:
        scale -= 0.05
    cv2.putText(img, text, (x, y), _FONT, scale, colour, 1, cv2.LINE_AA)


def _labelled(cell, label):
    """``cell`` under a white band with ``label``: a string, or ``[(text, BGR colour), ...]`` segments."""
    band = np.full((LABEL_HEIGHT, cell.shape[1], 3), 255, np.uint8)
    segments = [(label, (0, 0, 0))] if isinstance(label, str) else label
    text = ' '.join(t for t, _ in segments)
    scale = 0.5
    while scale > 0.2 and cv2.getTextSize(text, _FONT, scale, 1)[0][0] > cell.shape[1] - 6:
        scale -= 0.05
    x = 3
    for t, colour in segments:
        cv2.putText(band, t, (x, LABEL_HEIGHT - 8), _FONT, scale, tuple(int(c) for c in colour), 1, cv2.LINE_AA)
        x += cv2.getTextSize(t + ' ', _FONT, scale, 1)[0][0]
    return np.concatenate([band, cell], axis=0)


def make_panel(lq, branches, sr, weights, gt=None, scale=None, psnr_opts=None, max_side=480):
    """One image's panel (layout in the module docstring) as a BGR ``uint8`` array, and its PSNR row.

    Args:
        lq (Tensor): ``(1, C, h, w)`` LR input in ``[0, 1]``.
        branches (list[Tensor]): ``P`` predictions ``(1, C, H, W)``.
        sr (Tensor): fused output ``(1, C, H, W)``.
        weights (Tensor): convergence weights ``(1, P, H, W)``.
        gt (Tensor, optional): HR ``(1, C, H, W)``; without it there are no PSNRs.
        scale (int): the upscaling factor (default ``H // h``).
        psnr_opts (dict): ``crop_border`` / ``test_y_channel`` for the PSNRs (default: ``scale``, ``True``).
        max_side (int): cells are shrunk so that their longer side is at most this; ``0``: full size.

    Returns:
        (ndarray, dict): the panel ``(2 * (H' + LABEL_HEIGHT), (P + 4) * W', 3)`` and the PSNR row
        (empty without ``gt``).
    """
    height, width = sr.shape[-2:]
    scale = scale or height // lq.shape[-2]
    num = len(branches)
    row = psnr_row(lq, branches, sr, gt, scale, psnr_opts) if gt is not None else {}

    def db(key):
        return f' {row[key]:.2f} dB' if key in row else ''

    lr_near = F.interpolate(lq.float(), size=(height, width), mode='nearest')
    top = [(_to_bgr(lr_near), f'LR x{scale} (bicubic{db("bicubic")})' if row else f'LR x{scale}')]
    top += [(_to_bgr(b), f'branch {i + 1}{db(f"branch{i + 1}")}') for i, b in enumerate(branches)]
    top.append((_to_bgr(mean_fusion([b.detach().float().cpu() for b in branches])), f'mean of branches{db("mean")}'))
    top.append((_to_bgr(sr), f'fused{db("fused")}'))
    blank = np.full((height, width, 3), 255, np.uint8)
    top.append((_to_bgr(gt), 'HR') if gt is not None else (blank, ''))
    w = weights.detach().float().cpu()[0].numpy()
    bottom = [(_colour_bar(height, width), 'weight scale')]
    bottom += [(_heat(w[i]), f'W{i + 1} (mean {w[i].mean():.2f})') for i in range(num)]
    deviation = np.abs(w - 1.0 / num).mean(axis=0) / (2 * (num - 1) / num**2 if num > 1 else 1.0)
    bottom.append((_heat(deviation), f'|W - 1/P| (mean {weight_mad(weights):.4f})'))
    if gt is not None:
        stacked = torch.stack([b.detach().float().cpu() for b in branches])
        pick = ((stacked - gt.detach().float().cpu().unsqueeze(0))**2).sum(dim=2).argmin(dim=0)[0].numpy()
        oracle = oracle_fusion([b.detach().float().cpu() for b in branches], gt.detach().float().cpu())
        bottom.append((_to_bgr(oracle), f'oracle{db("oracle")}'))
        shares = [(f'{i + 1}:{(pick == i).mean():.0%}', _PICK_COLOURS[i % len(_PICK_COLOURS)]) for i in range(num)]
        bottom.append((_PICK_COLOURS[pick % len(_PICK_COLOURS)], [('oracle pick', (0, 0, 0))] + shares))
    else:
        bottom += [(blank, ''), (blank, '')]

    cell_h, cell_w = height, width
    if max_side and max(height, width) > max_side:
        factor = max_side / max(height, width)
        cell_h, cell_w = max(1, round(height * factor)), max(1, round(width * factor))

    def cell(img, label):
        if img.shape[:2] != (cell_h, cell_w):
            img = cv2.resize(img, (cell_w, cell_h), interpolation=cv2.INTER_AREA)
        return _labelled(np.ascontiguousarray(img), label)

    rows = [np.concatenate([cell(img, label) for img, label in line], axis=1) for line in (top, bottom)]
    return np.concatenate(rows, axis=0), row


def save_validation_panels(model, dataloader, current_iter):
    """Panels and PSNR table of a validation set, for :class:`~d2csr.models.D2CModel` (``val: save_panels``).

    Writes ``<name>_panel.png`` per image and ``psnr_table.csv`` to
    ``<path:visualization>/panels/<dataset>`` (``<dataset>_<iter>`` during training) and logs the table.
    PSNRs follow the ``psnr`` metric's options; ``val: panel_max_side`` sets the cell size (default 480).
    """
    val_opt = model.opt.get('val') or {}
    dataset_name = dataloader.dataset.opt['name']
    folder = osp.join(model.opt['path']['visualization'], 'panels',
                      f'{dataset_name}_{current_iter}' if model.opt['is_train'] else dataset_name)
    os.makedirs(folder, exist_ok=True)
    rows, names = [], []
    for data in dataloader:
        name = osp.splitext(osp.basename(data['lq_path'][0]))[0]
        model.feed_data(data)
        model.test()
        gt = getattr(model, 'gt', None)
        panel, row = make_panel(model.lq.cpu(), [b.cpu() for b in model.branches], model.output.cpu(),
                                model.weights.cpu(), None if gt is None else gt.cpu(), model.opt['scale'],
                                model._psnr_opts(), val_opt.get('panel_max_side', 480))
        write_encoded(osp.join(folder, f'{name}_panel.png'), panel)
        if row:
            rows.append(row)
            names.append(name)
        for attr in ('lq', 'gt', 'output', 'branches', 'weights'):
            model.__dict__.pop(attr, None)
    if rows:
        write_image_table(osp.join(folder, 'psnr_table.csv'), rows, names)
        get_root_logger().info(f'Panels of {dataset_name} in {folder}; PSNR (dB):\n{format_image_table(rows, names)}')
