"""One check of a D2C-SR options file at model start, before anything is built, loaded or trained.

:func:`validate_options` is called by :class:`~d2csr.models.D2CModel` first thing. Every problem it finds
would otherwise run silently with a wrong meaning (``alpha: -1`` switches the triplet term off while the log
says -1; stage 2 on weights trained with another ``bicubic_skip``) or die later with a raw traceback (a
``network_g`` key typo, ``gt_size`` not a multiple of the scale, ``scale`` different from ``upscale``,
``num_gpu: 1`` without a GPU). The loss's tree shape is checked where the loss is built
(:func:`d2csr.losses.build_divergence_loss`), also at start. It raises ``ValueError`` listing all
of them at once, each naming the option and the fix.
"""
import inspect
import math
import os.path as osp

from d2csr.loading import NO_TRACE_OPTIONS, saved_network_options


def _arch_defaults(arch_type):
    """``{name: default}`` of a registered architecture's constructor (``None`` when it takes ``**kwargs``)."""
    from basicsr.utils.registry import ARCH_REGISTRY

    try:
        arch = ARCH_REGISTRY.get(arch_type)
    except KeyError:
        return None
    params = inspect.signature(arch.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None
    return {k: p.default for k, p in params.items() if k != 'self'}


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_network(opt, problems):
    network = opt.get('network_g')
    if not isinstance(network, dict) or 'type' not in network:
        problems.append('network_g is missing or has no type (e.g. type: D2CSR).')
        return None
    defaults = _arch_defaults(network['type'])
    if defaults is None:
        return network
    unknown = sorted(k for k in network if k != 'type' and k not in defaults)
    if unknown:
        problems.append(f'network_g ({network["type"]}) has no option(s) {", ".join(unknown)}; valid: '
                        f'{", ".join(defaults)}.')
    upscale = network.get('upscale', defaults.get('upscale'))
    scale = opt.get('scale')
    if upscale is not None and scale is not None and scale != upscale:
        problems.append(f'scale is {scale} but network_g:upscale is {upscale}; set both to the same factor (the '
                        'data are read at scale, the network upsamples by upscale).')
    return dict(defaults, **network)


def _check_datasets(opt, problems):
    scale = opt.get('scale')
    for name, dataset in (opt.get('datasets') or {}).items():
        gt_size = (dataset or {}).get('gt_size')
        if dataset.get('phase', name) != 'train' or gt_size is None or not isinstance(scale, int) or scale < 1:
            continue
        if not isinstance(gt_size, int) or isinstance(gt_size, bool) or gt_size <= 0 or gt_size % scale:
            problems.append(f'datasets:{name}:gt_size must be a positive multiple of scale {scale} (the LR patch '
                            f'is gt_size / scale), got {gt_size!r}.')


def _check_divergence(train, network, problems):
    if not isinstance(train.get('log_grad_ratio', True), bool):
        problems.append(f'train:log_grad_ratio must be true or false (the divergence term\'s gradient ratio at log '
                        f'lines), got {train["log_grad_ratio"]!r}.')
    div = train.get('divergence_opt')
    if not div:
        return
    for key in ('alpha', 'theta', 'loss_weight'):
        if key in div and not (_number(div[key]) and div[key] >= 0):
            problems.append(f'train:divergence_opt:{key} must be a finite number >= 0 (0 switches the term off), '
                            f'got {div[key]!r}.')
    margins = div.get('margins')
    if margins is not None:
        values = margins if isinstance(margins, (list, tuple)) else [margins]
        if not all(_number(m) and m >= 0 for m in values):
            problems.append(f'train:divergence_opt:margins must be finite numbers >= 0, got {margins!r}.')
    schedule = div.get('alpha_schedule') or {}
    for key in ('start_iter', 'period', 'on_iters', 'decay_every', 'decay_factor', 'iters_per_epoch', 'start_epoch',
                'every_epochs', 'on_epochs', 'decay_epochs'):
        if schedule.get(key) is not None and not (_number(schedule[key]) and schedule[key] >= 0):
            problems.append(f'train:divergence_opt:alpha_schedule:{key} must be a finite number >= 0, got '
                            f'{schedule[key]!r}.')
    # depth / width against network_g: checked where the loss is built (d2csr.losses.build_divergence_loss)


def _check_device(opt, problems):
    import torch

    num_gpu = opt.get('num_gpu', 0)
    if num_gpu not in (0, None, 'auto') and not torch.cuda.is_available():
        problems.append(f'num_gpu is {num_gpu} but this machine has no usable GPU; set num_gpu: 0 in the options '
                        'file, or add --force_yml num_gpu=0 to the command, to run on the CPU.')


def _check_stage1(opt, network, problems):
    """Stage 2 loads stage 1's weights: options that leave no trace in them must agree with stage 1's run."""
    train = opt.get('train') or {}
    pretrain = (opt.get('path') or {}).get('pretrain_network_g')
    if train.get('stage') != 'convergence' or not pretrain or network is None or not osp.isfile(pretrain):
        return
    defaults = _arch_defaults(network.get('type')) or {}
    for saved, yml in saved_network_options(pretrain):
        if saved.get('type') != network.get('type'):
            continue
        saved = dict(defaults, **saved)
        differ = [f'{k}: {saved.get(k)!r} in stage 1, {network.get(k)!r} here' for k in NO_TRACE_OPTIONS
                  if _comparable(saved.get(k)) != _comparable(network.get(k))]
        if differ:
            problems.append(f'network_g differs from the stage-1 run that wrote {pretrain} ({yml}) in options the '
                            f'weights do not record: {"; ".join(differ)}. Use stage 1\'s values in network_g.')


def _comparable(value):
    """A network option as compared with stage 1's saved one: numbers (also in lists) as floats."""
    if isinstance(value, (list, tuple)):
        return [float(v) if _number(v) else v for v in value]
    return float(value) if _number(value) else value


def validate_options(opt):
    """Raise ``ValueError`` listing every problem of ``opt`` (a parsed BasicSR options dict) at once."""
    problems = []
    network = _check_network(opt, problems)
    _check_device(opt, problems)
    if opt.get('is_train'):
        train = opt.get('train') or {}
        _check_datasets(opt, problems)
        _check_divergence(train, network, problems)
        _check_stage1(opt, network, problems)
    if problems:
        name = opt.get('name', 'options')
        raise ValueError(f'{name}: {len(problems)} problem(s) in the options, all listed:\n  - '
                         + '\n  - '.join(problems))
