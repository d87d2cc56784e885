"""Exact tiled inference of :class:`~d2csr.archs.D2CSR` for images of any size.

Overlapping tiles are usually only *close* to the untiled output. D2CSR can be tiled exactly because its
only global operation, channel attention's average pooling, lives in the tree at LR resolution:

1. the LR half (:meth:`D2CSR.leaf_features`: head, tree nodes, deep residual convs) runs on the whole LR
   image: ``P`` feature maps ``(N, F, h, w)``, cheap next to the HR part;
2. the HR half (each leaf's upsampler tail, :meth:`D2CSR.leaf_prediction`, and the convergence net,
   :meth:`D2CSR.fuse`) is fully convolutional with a finite receptive field, so it runs tile by tile on crops
   of the leaf features widened by ``tile_pad`` LR pixels (:func:`receptive_radius`) and only the crop's
   centre is kept. Tiles touching the image border see the same zero padding as the whole image, interior
   tiles see real neighbours: the result equals the untiled forward up to float rounding.

With ``upsampler: bicubic_input`` (VDSR-style) the tree itself runs at the output size, so the leaf
features are ``(N, F, s*h, s*w)``: tiles are still laid out in LR pixels and the features are cropped at
``s`` times those positions (:func:`feature_factor`). Every backbone x upsampler that :class:`D2CSR` accepts
tiles exactly.

The ``P`` full-size HR branches are never held at once unless ``return_branches=True``.
"""
import math
from collections import namedtuple

import torch
from torch import nn

TiledOutput = namedtuple('TiledOutput', ['sr', 'branches', 'weights'])


def _conv_radius(module):
    """Sum of the radii of ``module``'s convs, in the pixels of each conv's own resolution, rescaled to the
    module's input resolution; also returns the module's resolution factor (pixel shuffles)."""
    radius, resolution = 0.0, 1
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            radius += max((k // 2) * d for k, d in zip(layer.kernel_size, layer.dilation)) / resolution
        elif isinstance(layer, nn.PixelShuffle):
            resolution *= layer.upscale_factor
        elif isinstance(layer, (nn.Upsample, nn.ConvTranspose2d)):
            raise ValueError(f'receptive_radius: cannot bound the receptive field of {type(layer).__name__}')
    return radius, resolution


def feature_factor(net):
    """Resolution of the leaf features relative to the LR input: ``net.upscale`` for ``upsampler:
    bicubic_input`` (the tree runs on the bicubic-upsampled input), 1 otherwise."""
    return net.upscale if getattr(net, 'upsampler', 'pixelshuffle') == 'bicubic_input' else 1


def receptive_radius(net):
    """LR pixels of context each side of a tile that make the tile's centre exact.

    Radius of one leaf's tail (convs at the features' and intermediate resolutions, rescaled to LR pixels;
    1x1 output mean shift), or 2 LR pixels for the bicubic skip, plus the convergence net's radius at HR,
    rounded up, plus one pixel for the rounding of HR positions to LR ones. For the default RCAN D2CSR:
    x2 4, x3 4, x4 4, x8 4.
    """
    tail_radius, _ = _conv_radius(net.tails[0])
    tail_radius /= feature_factor(net)
    if net.bicubic_skip:
        tail_radius = max(tail_radius, 2.0)
    fusion_radius, _ = _conv_radius(net.fusion)
    return math.ceil(tail_radius + fusion_radius / net.upscale) + 1


def _split(length, tile):
    """``[0, length)`` cut into ``ceil(length / tile)`` near-equal parts (no thin leftover strip)."""
    parts = -(-length // tile) if tile > 0 else 1
    edges = [round(i * length / parts) for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def tile_boxes(height, width, tile):
    """Non-overlapping ``(y0, y1, x0, x1)`` boxes of at most ``tile`` x ``tile`` covering an image; the
    image is cut into near-equal tiles. ``tile <= 0``: one box."""
    return [(y0, y1, x0, x1) for y0, y1 in _split(height, tile) for x0, x1 in _split(width, tile)]


@torch.no_grad()
def tiled_forward(net, x, tile=128, tile_pad=None, return_branches=False, return_weights=False,
                  output_device=None, progress=None):
    """Fused SR of ``x`` (``(N, C, h, w)``) by ``net``, computed tile by tile at HR resolution.

    Args:
        net (D2CSR): in eval mode.
        x (Tensor): ``(N, C, h, w)`` LR input on the network's device and dtype.
        tile (int): tile side in LR pixels; ``<= 0`` runs the HR half in one piece. Default: 128.
        tile_pad (int, optional): context each side in LR pixels; at least :func:`receptive_radius` (the
            default), a smaller value raises ``ValueError`` because the result would not be exact.
        return_branches (bool): also return the ``P`` HR branches (``P`` full-size images in memory).
        return_weights (bool): also return the convergence weights ``(N, P, s*h, s*w)``.
        output_device: where the outputs are assembled (e.g. ``'cpu'`` for a large image on a GPU);
            defaults to ``x``'s device.
        progress (callable, optional): called with ``(done, total)`` after each tile.

    Returns:
        TiledOutput: ``sr`` ``(N, C, s*h, s*w)`` float32, ``branches`` (list or ``None``), ``weights``
        (or ``None``).
    """
    if x.dim() != 4:
        raise ValueError(f'tiled_forward expects an (N, C, h, w) tensor, got shape {tuple(x.shape)}')
    min_pad = receptive_radius(net)
    if tile_pad is None:
        tile_pad = min_pad
    elif tile_pad < min_pad:
        raise ValueError(f'tile_pad {tile_pad} is smaller than the receptive radius {min_pad} of the '
                         'network\'s HR part: tiles would not be exact. Use tile_pad >= '
                         f'{min_pad} (or leave it unset).')
    n, _, h, w = x.shape
    s = net.upscale
    device = output_device if output_device is not None else x.device
    features = net.leaf_features(x)
    fs = feature_factor(net)
    if tuple(features[0].shape[-2:]) != (h * fs, w * fs):
        raise ValueError(f'tiled_forward: leaf features of shape {tuple(features[0].shape)} for an input of '
                         f'{h}x{w}; expected {h * fs}x{w * fs} (upsampler {getattr(net, "upsampler", None)!r})')

    def buffer(channels):
        return torch.empty(n, channels, h * s, w * s, dtype=torch.float32, device=device)

    sr = branches = weights = None  # allocated at the first tile, when the output channels are known
    boxes = tile_boxes(h, w, tile)
    for done, (y0, y1, x0, x1) in enumerate(boxes, 1):
        cy0, cy1, cx0, cx1 = max(y0 - tile_pad, 0), min(y1 + tile_pad, h), max(x0 - tile_pad, 0), min(x1 + tile_pad, w)
        x_crop = x[..., cy0:cy1, cx0:cx1]
        preds = [net.leaf_prediction(i, f[..., cy0 * fs:cy1 * fs, cx0 * fs:cx1 * fs], x_crop)
                 for i, f in enumerate(features)]
        sr_tile, w_tile = net.fuse(preds)
        if sr is None:
            sr = buffer(sr_tile.shape[1])
            branches = [buffer(sr_tile.shape[1]) for _ in features] if return_branches else None
            weights = buffer(len(features)) if return_weights else None
        src = (..., slice((y0 - cy0) * s, (y1 - cy0) * s), slice((x0 - cx0) * s, (x1 - cx0) * s))
        dst = (..., slice(y0 * s, y1 * s), slice(x0 * s, x1 * s))
        sr[dst] = sr_tile[src].to(device, torch.float32)
        if branches is not None:
            for full, pred in zip(branches, preds):
                full[dst] = pred[src].to(device, torch.float32)
        if weights is not None:
            weights[dst] = w_tile[src].to(device, torch.float32)
        del preds, sr_tile, w_tile
        if progress is not None:
            progress(done, len(boxes))
    return TiledOutput(sr, branches, weights)
