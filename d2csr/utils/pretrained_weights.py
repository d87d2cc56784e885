"""Local weight files for the ImageNet backbones of the perceptual loss (VGG19) and of LPIPS (AlexNet / VGG16).

BasicSR's ``VGGFeatureExtractor`` and the ``lpips`` package ask torchvision for ImageNet weights, which
torchvision downloads once into torch hub's cache (``~/.cache/torch/hub/checkpoints/<file>``). On a machine
that cannot download, that fails deep inside the first iteration or the first validation. Here the weight file
is found *before* anything is built:

1. the path option (``pretrained_path``), if set: it must exist;
2. otherwise the places where torchvision / BasicSR look (torch hub's cache, and for VGG19 BasicSR's
   ``experiments/pretrained_models/vgg19-dcbb9e9d.pth``);
3. otherwise one download by torchvision into torch hub's cache; if that fails, a :class:`MissingWeightsError`
   names the file, where to put it and the option to set.

A weight file is a torchvision checkpoint of the backbone: the whole network's ``state_dict`` (as torchvision
downloads it), or only its ``features.*`` entries (all that the perceptual loss and LPIPS use).
"""
import os.path as osp

import torch
import torchvision

from .errors import UserError


class MissingWeightsError(UserError, RuntimeError):
    """A backbone's weight file is neither where the options say nor downloadable."""


BACKBONES = {'alex': 'alexnet', 'vgg': 'vgg16'}


def lpips_backbone(net):
    """torchvision name of the backbone of LPIPS's ``net`` (``'alex'`` -> ``'alexnet'``, ``'vgg'`` -> ``'vgg16'``)."""
    if net not in BACKBONES:
        raise ValueError(f'calculate_lpips: net must be one of {tuple(BACKBONES)}, got {net!r}')
    return BACKBONES[net]


def weights_url(arch):
    """The URL torchvision downloads ``arch``'s ImageNet weights from (``arch``: ``'vgg19'``, ``'alexnet'``, ...)."""
    try:
        enum = torchvision.models.get_model_weights(arch)
    except ValueError as err:
        raise ValueError(f'unknown torchvision backbone {arch!r}') from err
    return enum.IMAGENET1K_V1.url


def hub_cache_path(arch):
    """Where torchvision keeps ``arch``'s downloaded weights (torch hub's ``checkpoints`` folder)."""
    return osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(weights_url(arch)))


def resolve_weights(arch, pretrained_path, option, extra_candidates=()):
    """The path of ``arch``'s ImageNet weight file, downloading it once if it is nowhere (see the module doc).

    Args:
        arch (str): torchvision name of the backbone (``'vgg19'``, ``'vgg16'``, ``'alexnet'``).
        pretrained_path (str | None): the path option; when set, it is the only place looked at.
        option (str): the option's name, for the messages (e.g. ``'train:perceptual_opt:pretrained_path'``).
        extra_candidates (tuple[str]): other places to look before torch hub's cache.

    Raises:
        MissingWeightsError: the file is not where ``pretrained_path`` says, or not found and not downloadable.
    """
    url = weights_url(arch)
    name = osp.basename(url)
    if pretrained_path:
        path = osp.expanduser(str(pretrained_path))
        if not osp.isfile(path):
            raise MissingWeightsError(
                f'{option}: {pretrained_path!r} does not exist. It must be the {arch} ImageNet weight file '
                f'{name} (download it once from {url}) or its features.* part.')
        return path
    candidates = [*extra_candidates, hub_cache_path(arch)]
    for path in candidates:
        if osp.isfile(path):
            return path
    try:
        torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True)
    except Exception as err:  # offline: URLError, socket errors, HTTP errors, ...
        raise MissingWeightsError(
            f'the {arch} ImageNet weights ({name}) are needed but not found (looked at {", ".join(candidates)}) '
            f'and the download from {url} failed ({type(err).__name__}: {err}). Download {name} once on a '
            f'machine that can and put it at {" or ".join(candidates)}, or set {option} to its path.') from err
    return hub_cache_path(arch)


def load_backbone(arch, path=None):
    """torchvision's ``arch`` with the weights of ``path`` (random initialisation when ``path`` is None).

    ``path`` holds the whole network's ``state_dict`` or only its ``features.*`` entries; any other content is
    an error naming the file.
    """
    net = torchvision.models.get_model(arch, weights=None)
    if path is None:
        return net
    state = torch.load(path, map_location='cpu', weights_only=True)
    if isinstance(state, dict) and 'state_dict' in state and isinstance(state['state_dict'], dict):
        state = state['state_dict']
    try:
        if isinstance(state, dict) and state and all(k.startswith('features.') for k in state):
            net.features.load_state_dict({k[len('features.'):]: v for k, v in state.items()})
        else:
            net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise MissingWeightsError(f'{path} is not a torchvision {arch} checkpoint (whole state_dict or its '
                                  f'features.* entries): {err}') from err
    return net


def basicsr_vgg_default_path():
    """BasicSR's fixed VGG19 location, relative to the working directory, as ``VGGFeatureExtractor`` reads it."""
    from basicsr.archs import vgg_arch

    return vgg_arch.VGG_PRETRAIN_PATH


def check_pretrained_weights(opt):
    """Resolve (and download once, if possible) every backbone weight file that ``opt`` will need.

    Looks at ``train: perceptual_opt`` and at every ``val: metrics`` entry of ``type: calculate_lpips``. Called
    before BasicSR creates the experiment / results folder, so a missing file stops the run before anything is
    written; raises :class:`MissingWeightsError`.
    """
    percep = (opt.get('train') or {}).get('perceptual_opt') if opt.get('is_train', True) else None
    if percep and percep.get('pretrained', True):
        vgg_type = percep.get('vgg_type', 'vgg19')
        extra = (basicsr_vgg_default_path(), ) if vgg_type == 'vgg19' else ()
        resolve_weights(vgg_type, percep.get('pretrained_path'), 'train:perceptual_opt:pretrained_path', extra)
    for name, metric in ((opt.get('val') or {}).get('metrics') or {}).items():
        if metric.get('type') == 'calculate_lpips' and metric.get('pretrained', True):
            resolve_weights(lpips_backbone(metric.get('net', 'alex')), metric.get('pretrained_path'),
                            f'val:metrics:{name}:pretrained_path')

