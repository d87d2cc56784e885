"""LPIPS (Zhang et al., CVPR 2018) as a BasicSR metric, computed by the LPIPS authors' ``lpips`` package.

In an options file::

    val:
      metrics:
        lpips:
          type: calculate_lpips
          crop_border: 4
          net: alex            # alex (the LPIPS authors' default) | vgg
          better: lower        # BasicSR's best-metric tracking: lower LPIPS is better
          # pretrained_path: experiments/pretrained_models/alexnet-owt-7be5be79.pth   # offline machines

``lpips`` ships its linear layers (``lpips/weights/v0.1/{alex,vgg}.pth``); the backbone (torchvision's AlexNet
or VGG16 ImageNet weights) is downloaded once by torchvision or read from ``pretrained_path``
(:mod:`d2csr.utils.pretrained_weights`). ``pretrained: false`` gives a randomly initialised backbone with the
package's linear layers: **for tests only**, it is not LPIPS.
"""
import functools
import warnings

import numpy as np
import torch
from basicsr.metrics.metric_util import reorder_image
from d2csr.utils.registry import METRIC_REGISTRY  # d2csr's names, not BasicSR's table

from d2csr.utils.pretrained_weights import BACKBONES, load_backbone, lpips_backbone, resolve_weights  # noqa: F401

def _default_device():
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


@functools.lru_cache(maxsize=None)
def _cached_lpips_net(net, path, device):
    import lpips

    with warnings.catch_warnings():  # lpips asks torchvision for `pretrained=False`, deprecated but working
        warnings.filterwarnings('ignore', category=UserWarning, module='torchvision')
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)  # backbone below; linear layers: lpips'
    if path is not None:
        features = load_backbone(lpips_backbone(net), path).features
        for stage in model.net.children():  # lpips' slices keep torchvision's module indices as names
            for index, module in stage.named_children():
                module.load_state_dict(features[int(index)].state_dict())
    model.eval().requires_grad_(False)
    return model.to(device)


def get_lpips_net(net='alex', pretrained_path=None, pretrained=True, device=None, option='calculate_lpips'):
    """The ``lpips.LPIPS`` network for ``net``, built once per (net, weight file, device) and cached.

    ``pretrained_path`` unset: the backbone's ImageNet weights from torch hub's cache, or downloaded once;
    ``pretrained=False``: random backbone (tests only). Raises ``MissingWeightsError`` naming the file and
    ``option`` when the weights are missing on a machine that cannot download them.
    """
    arch = lpips_backbone(net)
    device = torch.device(device) if device is not None else _default_device()
    if not pretrained and pretrained_path:
        raise ValueError(f'{option}: pretrained: false (random backbone) and pretrained_path {pretrained_path!r} '
                         'contradict each other; remove one.')
    path = resolve_weights(arch, pretrained_path, f'{option}:pretrained_path') if pretrained else None
    return _cached_lpips_net(net, path, device)


def _to_lpips_input(img, crop_border, input_order):
    """HWC (or CHW) BGR image in [0, 255] -> ``(1, 3, H, W)`` RGB float tensor in [-1, 1], LPIPS's input."""
    img = reorder_image(np.asarray(img), input_order=input_order).astype(np.float64)
    if crop_border != 0:
        img = img[crop_border:-crop_border, crop_border:-crop_border, ...]
    if img.ndim == 2 or img.shape[2] == 1:
        img = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    rgb = np.ascontiguousarray(img[..., 2::-1])  # BGR -> RGB (BasicSR's tensor2img gives BGR)
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1


@METRIC_REGISTRY.register()
def calculate_lpips(img, img2, crop_border, input_order='HWC', net='alex', pretrained_path=None, pretrained=True,
                    device=None, **kwargs):
    """LPIPS distance between two images, as BasicSR's validation passes them (lower is better).

    Args:
        img, img2 (ndarray): images ``(H, W, 3)`` (``input_order='HWC'``) in BGR order, range [0, 255] (uint8
            or float), as ``tensor2img`` gives them.
        crop_border (int): pixels cropped from each edge before the comparison.
        net (str): ``'alex'`` (the LPIPS authors' default) or ``'vgg'``.
        pretrained_path (str | None): torchvision weight file of the backbone (``alexnet-owt-7be5be79.pth`` or
            ``vgg16-397923af.pth``), for machines that cannot download it.
        pretrained (bool): False: random backbone, for tests only.
        device (str | None): where LPIPS runs; default the GPU if there is one.

    Returns:
        float: the LPIPS distance (0 for identical images).
    """
    assert img.shape == img2.shape, f'Image shapes are different: {img.shape}, {img2.shape}.'
    model = get_lpips_net(net, pretrained_path, pretrained, device)
    dev = next(model.parameters()).device
    with torch.no_grad():
        a = _to_lpips_input(img, crop_border, input_order).to(dev)
        b = _to_lpips_input(img2, crop_border, input_order).to(dev)
        return float(model(a, b).item())
