"""BasicSR's ``PerceptualLoss`` (VGG feature loss, SRGAN's "VGG loss") for D2C-SR's perceptual variant.

``train: perceptual_opt`` takes BasicSR's ``PerceptualLoss`` options (``layer_weights``, ``vgg_type``,
``use_input_norm``, ``range_norm``, ``perceptual_weight``, ``style_weight``, ``criterion``: ``l1`` | ``l2`` |
``fro``; ``l2`` fixed here: BasicSR 1.4.2's refers to a missing ``torch.nn.L2loss``) plus two of its own, which choose the VGG weights:

- ``pretrained_path``: a torchvision VGG checkpoint (``vgg19-dcbb9e9d.pth`` for ``vgg19``, the whole
  ``state_dict`` or its ``features.*`` part). Unset: torch hub's cache, BasicSR's
  ``experiments/pretrained_models/vgg19-dcbb9e9d.pth``, else one download (:mod:`d2csr.utils.pretrained_weights`);
- ``pretrained: false``: a randomly initialised VGG. **For tests only**: random features make no
  perceptual loss.
"""
from copy import deepcopy

import torch
from d2csr.utils.pretrained_weights import basicsr_vgg_default_path, resolve_weights

CRITERIA = ('l1', 'l2', 'fro')  # 'l2' through build_basicsr_perceptual_loss



class _TorchvisionVGGFromFile:
    """Stands in for ``torchvision.models.vgg`` inside ``basicsr.archs.vgg_arch``: ``vgg19(pretrained=...)``
    returns torchvision's network with the weights of ``path`` (random when ``path`` is None), whatever
    ``pretrained`` says, so BasicSR neither reads its fixed path nor downloads."""

    def __init__(self, path):
        self.path = path

    def __getattr__(self, vgg_type):
        from d2csr.utils.pretrained_weights import load_backbone

        def build(pretrained=False, **kwargs):
            return load_backbone(vgg_type, self.path)

        return build


class basicsr_vgg_weights:  # noqa: N801  (used as a context manager, like torch.no_grad)
    """``with basicsr_vgg_weights(path): build_loss({'type': 'PerceptualLoss', ...})`` builds BasicSR's VGG
    with the weights of ``path`` (a torchvision checkpoint, see :mod:`d2csr.utils.pretrained_weights`), or randomly
    initialised with ``path=None``."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        from basicsr.archs import vgg_arch

        self._saved = vgg_arch.vgg, vgg_arch.VGG_PRETRAIN_PATH
        vgg_arch.vgg, vgg_arch.VGG_PRETRAIN_PATH = _TorchvisionVGGFromFile(self.path), ''
        return self

    def __exit__(self, *exc):
        from basicsr.archs import vgg_arch

        vgg_arch.vgg, vgg_arch.VGG_PRETRAIN_PATH = self._saved
        return False


def build_basicsr_perceptual_loss(opt):
    """``build_loss(opt)`` for BasicSR's ``PerceptualLoss``, with ``criterion: l2`` working (MSE of the
    features, SRGAN's VGG loss): built as ``l1``, then given ``torch.nn.MSELoss``, which its ``forward`` calls
    like the L1 criterion."""
    from basicsr.losses import build_loss

    opt = dict(opt)
    l2 = opt.get('criterion') == 'l2'
    if l2:
        opt['criterion'] = 'l1'
    loss = build_loss(opt)
    if l2:
        loss.criterion, loss.criterion_type = torch.nn.MSELoss(), 'l2'
    return loss


def build_perceptual_loss(opt, option='train:perceptual_opt'):
    """BasicSR's ``PerceptualLoss`` built from ``opt`` (see the module doc) with local or random VGG weights.

    Raises:
        MissingWeightsError: the VGG weight file is missing and cannot be downloaded.
        ValueError: an option BasicSR would only reject later or obscurely.
    """
    opt = deepcopy(dict(opt))
    opt.setdefault('type', 'PerceptualLoss')
    if opt['type'] != 'PerceptualLoss':
        raise ValueError(f'{option}:type must be PerceptualLoss (BasicSR\'s VGG feature loss), got {opt["type"]!r}')
    pretrained = opt.pop('pretrained', True)
    path = opt.pop('pretrained_path', None)
    if not pretrained and path:
        raise ValueError(f'{option}: pretrained: false (random VGG) and pretrained_path {path!r} contradict each '
                         'other; remove one.')
    criterion = opt.get('criterion', 'l1')
    if criterion not in CRITERIA:
        raise ValueError(f'{option}:criterion must be one of {CRITERIA}, got {criterion!r}')
    if not opt.get('layer_weights'):
        raise ValueError(f'{option}:layer_weights is required, e.g. {{conv5_4: 1.0}} (SRGAN\'s VGG54).')
    vgg_type = opt.get('vgg_type', 'vgg19')
    if pretrained:
        extra = (basicsr_vgg_default_path(), ) if vgg_type == 'vgg19' else ()
        path = resolve_weights(vgg_type, path, f'{option}:pretrained_path', extra)
    with basicsr_vgg_weights(path if pretrained else None):
        loss = build_basicsr_perceptual_loss(opt)
    return loss


def perceptual_terms(cri, outputs, gt):
    """Perceptual (and style) loss of every output against ``gt``, summed over the outputs.

    Args:
        cri: a BasicSR ``PerceptualLoss``.
        outputs (list[Tensor]): ``P`` images ``(N, 3, H, W)`` (the tree's branches, or ``[fused]``).
        gt (Tensor): ``(N, 3, H, W)``.

    Returns:
        dict: ``l_percep`` (if ``perceptual_weight > 0``) and ``l_style`` (if ``style_weight > 0``), 0-d
        tensors equal to ``sum(cri(output, gt)[i] for output in outputs)`` (tested). With the ``l1`` / ``l2``
        criteria (means, so that sum is ``P`` times the mean over the stacked outputs) the outputs go through
        VGG as one batch of ``P * N`` and ``gt`` once, instead of ``P`` times.
    """
    outputs = list(outputs)
    if cri.criterion_type == 'fro' or len(outputs) == 1:  # 'fro' is a norm: one output at a time
        pairs = [cri(out, gt) for out in outputs]
        return {key: sum(pair[i] for pair in pairs)
                for i, key in enumerate(('l_percep', 'l_style')) if pairs[0][i] is not None}
    num = len(outputs)
    x_feats = cri.vgg(torch.cat(outputs))
    gt_feats = cri.vgg(gt.detach())
    terms = {}
    if cri.perceptual_weight > 0:
        terms['l_percep'] = num * cri.perceptual_weight * sum(
            cri.criterion(x_feats[k], gt_feats[k].repeat(num, 1, 1, 1)) * cri.layer_weights[k] for k in x_feats)
    if cri.style_weight > 0:
        grams = {k: (cri._gram_mat(x_feats[k]), cri._gram_mat(gt_feats[k]).repeat(num, 1, 1)) for k in x_feats}
        terms['l_style'] = num * cri.style_weight * sum(
            cri.criterion(*grams[k]) * cri.layer_weights[k] for k in x_feats)
    return terms
