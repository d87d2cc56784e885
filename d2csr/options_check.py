"""One check of an options file, before anything is built, loaded, written or trained.

:func:`validate_options` runs at two moments: in ``d2csr/train.py`` / ``d2csr/test.py`` right after the options
are read (:func:`check_entry_options`, before BasicSR makes a folder or builds anything), and again first thing
in :class:`~d2csr.models.D2CModel` (for D2C runs started another way, e.g. through BasicSR's own scripts). It
lists every problem at once, each naming the option (``train:optim_g:lr``) and the fix:

- the schema (:mod:`d2csr.options_schema`): keys nothing reads (a typo such as ``ema_decy``, with "did you mean";
  ``pixel_opt`` in a D2C run), missing required keys, wrong types (``lr: 1e-4``, which YAML reads as text;
  ``batch_size_per_gpu: "4"``), arguments the registered classes do not take;
- values that would run silently with a wrong meaning (``alpha: -1`` switches the triplet term off while the
  log says -1; stage 2 on weights trained with another ``bicubic_skip``) or die later (``gt_size`` not a
  multiple of the scale, ``scale`` different from ``upscale``, ``num_gpu: 1`` without a GPU, a weights file that
  does not exist, ``d2csr/test.py`` without weights, which would score a randomly initialised network).

The loss's tree shape is checked where the loss is built (:func:`d2csr.losses.build_divergence_loss`), also at
start. Problems raise :class:`~d2csr.utils.errors.OptionsError` (a ``ValueError``).
"""
import math
import os.path as osp
import sys

from d2csr.archs.branch_modules import branch_module_options
from d2csr.archs.infer_options import NO_TRACE_OPTIONS
from d2csr.data.eval_check import data_root_problems
from d2csr.loading import saved_network_options
from d2csr.losses.d2csr_losses import DivergenceWeightSchedule
from d2csr.options_schema import lookup, schema_problems, signature_keys
from d2csr.utils.errors import OptionsError, user_error_message


def _arch_defaults(arch_type):
    """``{name: default}`` of a registered architecture's constructor (``None`` when it takes ``**kwargs``)."""
    from basicsr.utils.registry import ARCH_REGISTRY

    arch = lookup(ARCH_REGISTRY, arch_type)  # quietly: BasicSR's get prints a line before its KeyError
    if arch is None:
        return None
    named, _, takes_any = signature_keys(arch)
    return None if takes_any else named


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_network(opt, problems):
    """``network_g`` with its constructor's defaults filled in (its keys are checked by the schema), and
    ``scale`` against ``upscale``."""
    network = opt.get('network_g')
    if not isinstance(network, dict) or 'type' not in network:
        return None
    defaults = _arch_defaults(network['type'])
    if defaults is None:
        return network
    upscale = network.get('upscale', defaults.get('upscale'))
    scale = opt.get('scale')
    if upscale is not None and scale is not None and scale != upscale:
        problems.append(f'scale is {scale} but network_g:upscale is {upscale}; set both to the same factor (the '
                        'data are read at scale, the network upsamples by upscale).')
    return dict(defaults, **network)


def _check_datasets(opt, problems):
    scale = opt.get('scale')
    if not isinstance(scale, int) or scale < 1 or not isinstance(opt.get('datasets'), dict):
        return
    for name, dataset in opt['datasets'].items():
        gt_size = dataset.get('gt_size') if isinstance(dataset, dict) else None
        if not isinstance(dataset, dict) or dataset.get('phase', str(name).split('_')[0]) != 'train' or not _number(gt_size):
            continue  # not a number: the schema says so
        if isinstance(gt_size, int) and not isinstance(gt_size, bool) and gt_size > 0 and gt_size % scale:
            problems.append(f'datasets:{name}:gt_size must be a positive multiple of scale {scale} (the LR patch '
                            f'is gt_size / scale), got {gt_size!r}.')


def _bad_number(value):
    """A number (``int`` / ``float``) that is negative or not finite (other types are the schema's business)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not (math.isfinite(value)
                                                                                    and value >= 0)


def _check_divergence(train, problems):
    div = train.get('divergence_opt')
    if not isinstance(div, dict):
        return
    for key in ('alpha', 'theta', 'loss_weight'):
        if _bad_number(div.get(key)):
            problems.append(f'train:divergence_opt:{key} must be a finite number >= 0 (0 switches the term off), '
                            f'got {div[key]!r}.')
    margins = div.get('margins')
    if margins is not None:
        values = margins if isinstance(margins, (list, tuple)) else [margins]
        if any(_bad_number(m) for m in values):
            problems.append(f'train:divergence_opt:margins must be finite numbers >= 0, got {margins!r}.')
    schedule = div.get('alpha_schedule')
    keys = DivergenceWeightSchedule.ITER_KEYS + ('decay_factor', ) + DivergenceWeightSchedule.EPOCH_KEYS
    for key in keys if isinstance(schedule, dict) else ():
        if _bad_number(schedule.get(key)):
            problems.append(f'train:divergence_opt:alpha_schedule:{key} must be a finite number >= 0, got '
                            f'{schedule[key]!r}.')
    # depth / width against network_g: checked where the loss is built (d2csr.losses.build_divergence_loss)


def _check_device(opt, problems):
    import torch

    num_gpu = opt.get('num_gpu', 0)
    if isinstance(num_gpu, int) and num_gpu > 0 and not torch.cuda.is_available():
        problems.append(f'num_gpu is {num_gpu} but this machine has no usable GPU; set num_gpu: 0 in the options '
                        'file, or add --force_yml num_gpu=0 to the command, to run on the CPU.')


def _check_amp(opt, problems):
    """``train: amp`` / ``val: amp`` as :func:`d2csr.utils.precision.amp_dtype` reads them."""
    from d2csr.utils.precision import amp_dtype

    for section in ('train', 'val'):
        value = opt.get(section).get('amp') if isinstance(opt.get(section), dict) else None
        if isinstance(value, (str, bool)) or value is None:
            try:
                amp_dtype(value, f'{section}:amp')
            except ValueError as error:
                problems.append(f'{error}.')


def _check_backbone_weights(opt, problems):
    from d2csr.utils.pretrained_weights import MissingWeightsError, check_pretrained_weights

    try:
        check_pretrained_weights(opt)
    except MissingWeightsError as error:
        problems.append(str(error))
    except Exception:  # noqa: BLE001  (malformed sections: the schema says what is wrong with them)
        pass


def _check_files(opt, problems, complete):
    """The weights and training state the options name exist; a test run (``complete``: ``d2csr/test.py``)
    names weights at all; the backbone weights of the perceptual loss and LPIPS are there or downloadable."""
    path = opt.get('path') if isinstance(opt.get('path'), dict) else {}
    is_train = opt.get('is_train', True)
    pretrain = path.get('pretrain_network_g')
    if complete:
        _check_backbone_weights(opt, problems)
        problems += data_root_problems(opt)
    if complete and not is_train and opt.get('model_type') in ('D2CModel', 'SRModel') and not pretrain:
        problems.append('path:pretrain_network_g is not set: d2csr/test.py would score a randomly initialised '
                        'network. Set it to the weights to test (e.g. experiments/<name>/models/net_g_latest.pth, '
                        'or a converted official checkpoint).')
    for key, what in (('pretrain_network_g', 'weights'), ('resume_state', 'training state')):
        value = path.get(key)
        if isinstance(value, str) and value and not osp.isfile(osp.expanduser(value)):
            kind = 'is a folder, not a file' if osp.isdir(osp.expanduser(value)) else 'does not exist'
            problems.append(f'path:{key} {value!r} {kind}; point it at the {what} file (relative paths are taken '
                            'from where you run the command).')
    train = opt.get('train') if isinstance(opt.get('train'), dict) else {}
    if is_train and train.get('stage') == 'convergence' and not pretrain and not path.get('resume_state') \
            and not opt.get('auto_resume'):
        problems.append('train:stage is convergence but path:pretrain_network_g is not set: the convergence stage '
                        'needs the divergence weights of stage 1 (e.g. experiments/<stage-1 name>/models/'
                        'net_g_latest.pth).')


# what stage 2 must take over from stage 1 unchanged: the options the frozen tree's weights do not record (the
# convergence net's fusion_last_relu is stage 2's to choose: it trains that net)
STAGE1_NO_TRACE_OPTIONS = tuple(k for k in NO_TRACE_OPTIONS if k != 'fusion_last_relu')


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
        differ = [f'{k}: {_network_value(saved, k)!r} in stage 1, {_network_value(network, k)!r} here'
                  for k in STAGE1_NO_TRACE_OPTIONS
                  if _comparable(_network_value(saved, k)) != _comparable(_network_value(network, k))]
        if differ:
            problems.append(f'network_g differs from the stage-1 run that wrote {pretrain} ({yml}) in options the '
                            f'weights do not record: {"; ".join(differ)}. Use stage 1\'s values in network_g.')


def _network_value(network, key):
    """``network_g``'s value of ``key`` (``'backbone_opt:res_scale'``: inside the backbone's options, with the
    backbone's default), defaults filled in."""
    if not key.startswith('backbone_opt:'):
        return network.get(key)
    name = key.split(':', 1)[1]
    try:
        default = branch_module_options(network.get('backbone') or 'rcan').get(name)
    except ValueError:  # an unknown backbone: reported by the network check
        default = None
    return (network.get('backbone_opt') or {}).get(name, default)


def _comparable(value):
    """A network option as compared with stage 1's saved one: numbers (also in lists) as floats."""
    if isinstance(value, (list, tuple)):
        return [float(v) if _number(v) else v for v in value]
    return float(value) if _number(value) else value


def option_problems(opt, complete=True):
    """Every problem of ``opt`` (an options dict; ``is_train`` as BasicSR's parser sets it, missing means
    training), as a list of sentences: the schema's, then the values' and files'. ``complete``: the options of a
    whole run (the entry points), not only of a model built on its own (:func:`schema_problems`)."""
    problems = schema_problems(opt, complete)
    if not isinstance(opt, dict):
        return problems
    network = _check_network(opt, problems)
    _check_device(opt, problems)
    _check_files(opt, problems, complete)
    if opt.get('model_type') == 'D2CModel':
        _check_amp(opt, problems)
    if opt.get('is_train', True) and isinstance(opt.get('train'), dict):
        _check_datasets(opt, problems)
        _check_divergence(opt['train'], problems)
        _check_stage1(opt, network, problems)
    return problems


def format_problems(name, problems):
    return (f'{name}: {len(problems)} problem(s) in the options, all listed (nothing was built or written):\n  - '
            + '\n  - '.join(problems))


def validate_options(opt, complete=False):
    """Raise :class:`~d2csr.utils.errors.OptionsError` (a ``ValueError``) listing every problem of ``opt`` (a
    parsed BasicSR options dict) at once. :class:`~d2csr.models.D2CModel` calls it with ``complete=False``: the
    model's own sections must be complete, the pipeline's are checked by the entry points."""
    problems = option_problems(opt, complete)
    if problems:
        raise OptionsError(format_problems(opt.get('name', 'options') if isinstance(opt, dict) else 'options',
                                           problems))


# --------------------------------------------------------------------------------------------------
# the entry points
def read_entry_options(is_train, argv=None):
    """The options ``d2csr/train.py`` / ``test.py`` will run, as BasicSR's ``parse_options`` reads them from
    ``argv`` (``-opt``, ``--force_yml``, ``--launcher``, ``--auto_resume``), without starting anything.

    Returns ``(options file, opt or None, problems)``; ``opt`` is ``None`` when there is no ``-opt`` file to
    read (BasicSR's parser says so itself).
    """
    import argparse

    from d2csr.utils.yaml_io import OptionsFileError, load_options

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt')
    parser.add_argument('--launcher', default='none')
    parser.add_argument('--auto_resume', action='store_true')
    parser.add_argument('--force_yml', nargs='+', default=None)
    argv = sys.argv[1:] if argv is None else argv
    args, _ = parser.parse_known_args(argv)
    if not args.opt or any(arg in ('-h', '--help') for arg in argv) or not osp.isfile(args.opt):
        return args.opt, None, []
    try:
        opt = load_options(args.opt, require_mapping=False)  # data only: no !!python tags, no alias bombs
    except OptionsFileError as error:
        return args.opt, None, [str(error)]
    if not isinstance(opt, dict):
        return args.opt, None, [f'{args.opt} holds no options (key: value sections).']
    problems = [p for entry in args.force_yml or () for p in [_force_yml(opt, entry)] if p]
    opt.update(is_train=is_train, dist=args.launcher != 'none', auto_resume=args.auto_resume)
    if opt.get('num_gpu') == 'auto':
        import torch

        opt['num_gpu'] = torch.cuda.device_count()
    return args.opt, opt, problems


def _force_yml(opt, entry):
    """Apply one ``--force_yml a:b=value`` as BasicSR does (the value converted by BasicSR's own rules, a list
    read as YAML); returns a problem or ``None``."""
    from basicsr.utils.options import _postprocess_yml_value
    import yaml

    if entry.count('=') != 1:
        return f'--force_yml {entry}: expected one key:sub_key=value.'
    keys, value = (part.strip() for part in entry.split('='))
    value = yaml.safe_load(value) if value.startswith('[') else _postprocess_yml_value(value)
    target = opt
    *parents, last = keys.split(':')
    for i, parent in enumerate(parents):
        if not isinstance(target, dict) or not isinstance(target.get(parent), dict):
            return (f'--force_yml {entry}: the options file has no section {":".join(parents[:i + 1])} (BasicSR '
                    'only sets keys inside existing sections).')
        target = target[parent]
    target[last] = value
    return None


def check_entry_options(is_train, argv=None):
    """``d2csr/train.py`` / ``test.py``, right after the command line is read: check the options file they will
    run (with ``--force_yml``) and exit with every problem listed, before BasicSR builds anything or makes a
    folder. Returns the checked options (``None`` without an ``-opt`` file)."""
    path, opt, problems = read_entry_options(is_train, argv)
    if opt is not None:
        problems += option_problems(opt)
    if problems:
        sys.exit(user_error_message(format_problems(path, problems)))
    return opt
