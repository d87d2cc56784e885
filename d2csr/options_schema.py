"""What an option file of d2csr's entry points may hold: every key BasicSR 1.4.2 and d2csr read, with its type.

BasicSR reads its options with ``opt['key']`` and ``opt.get('key', default)``: a key it does not know is never
read (``ema_decy: 0.999`` leaves EMA off, ``use_grad_clip: true`` clips nothing), a missing one ends in a
``KeyError`` wherever it is first read, a wrong type in a ``TypeError`` (``batch_size_per_gpu: "4"``) or a
``ValueError`` (``lr: 1e-4``, which YAML reads as text) deep inside the run. :func:`schema_problems` compares an
options dict with the tables below and returns every difference at once, each naming the option
(``train:optim_g:lr``, the spelling of ``--force_yml``), what is wrong, and what to write instead (with "did you
mean" for a misspelt key).

Sources of the tables:

- the sections BasicSR reads itself (top level, ``path``, ``logger``, ``dist_params``, the data loader keys of
  ``datasets``, ``val``) and the keys of the models d2csr's entry points run: BasicSR's ``SRModel`` (the
  original-backbone baselines) and d2csr's ``D2CModel``; BasicSR's ``PairedImageDataset`` /
  ``SingleImageDataset`` and d2csr's data sets;
- the registered classes themselves: ``network_g`` is checked against its architecture's constructor, every
  ``train: *_opt`` against its loss class, ``val: metrics`` against the metric function, ``optim_g`` /
  ``optim_c`` against the ``torch.optim`` class BasicSR builds, ``scheduler`` against BasicSR's scheduler.

A key added to what d2csr reads must be added here too: ``tests/test_options_schema.py`` checks every option
file in ``options/`` against these tables.
"""
import difflib
import inspect
import math
from collections import namedtuple

# --------------------------------------------------------------------------------------------------
# value kinds
Key = namedtuple('Key', ['kinds', 'required', 'choices', 'minimum', 'note'])


def key(kinds, required=False, choices=None, minimum=None, note=''):
    """One option: ``kinds`` (a name or a tuple of names of :data:`KINDS`), whether it must be given, the
    allowed values, the smallest allowed number, and what it does (said when it is missing or wrong)."""
    return Key(kinds if isinstance(kinds, tuple) else (kinds, ), required, choices, minimum, note)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


KINDS = {
    'int': lambda v: isinstance(v, int) and not isinstance(v, bool),
    # a count BasicSR converts with int() or uses in %: 5000 or 5e3 (!!float 5e3, as BasicSR's own files write it)
    'count': lambda v: _is_number(v) and math.isfinite(v) and float(v).is_integer(),
    'number': _is_number,  # finite or not: where it matters, the value checks say so (d2csr.options_check)
    'bool': lambda v: isinstance(v, bool),
    'str': lambda v: isinstance(v, str),
    'list': lambda v: isinstance(v, (list, tuple)),
    'dict': lambda v: isinstance(v, dict),
    'none': lambda v: v is None,
    'auto': lambda v: v == 'auto',
    'any': lambda v: True,
}
KIND_WORDS = {'int': 'an integer', 'count': 'a whole number', 'number': 'a number', 'bool': 'true or false',
              'str': 'a text', 'list': 'a list', 'dict': 'a section (key: value lines)', 'none': '~', 'auto': 'auto', 'any': 'any'}


# --------------------------------------------------------------------------------------------------
# the tables
TOP = {
    'name': key('str', True, note='the experiment name (experiments/<name>, results/<name>)'),
    'model_type': key('str', True, note='D2CModel, or SRModel for the original-backbone baselines'),
    'scale': key('int', minimum=1, note='the upscaling factor, also given to every data set'),
    'num_gpu': key(('int', 'auto'), True, minimum=0, note='0 trains on the CPU; auto uses every visible GPU'),
    'manual_seed': key(('int', 'none')),
    'datasets': key('dict', True, note='train and val* data sets (test: any names)'),
    'network_g': key('dict', True, note='the network, with its type'),
    'path': key('dict', True, note='pretrain_network_g, strict_load_g, param_key_g, resume_state'),
    'train': key(('dict', 'none')),
    'val': key(('dict', 'none')),
    'logger': key(('dict', 'none')),
    'dist_params': key(('dict', 'none'), note='backend and port for --launcher slurm'),
    'find_unused_parameters': key('bool'),
    'tf32': key(('bool', 'none'), note="d2csr: false runs a GPU's fp32 convolutions in full fp32"),
}
# keys BasicSR's parse_options and pipelines set themselves (a value in the file is overwritten)
SET_BY_BASICSR = {
    '': {'is_train', 'dist', 'rank', 'world_size', 'auto_resume', 'root_path'},
    'path': {'experiments_root', 'models', 'training_states', 'log', 'visualization', 'results_root'},
    'dataset': {'phase', 'scale'},
}
PATH = {
    'pretrain_network_g': key(('str', 'none'), note='weights to start from (training) or to test'),
    'strict_load_g': key('bool'),
    'param_key_g': key(('str', 'none'), note='params or params_ema'),
    'resume_state': key(('str', 'none'), note='experiments/<name>/training_states/<iter>.state'),
}
LOGGER = {
    'print_freq': key('count', True, minimum=1),
    'save_checkpoint_freq': key('count', True, minimum=1),
    'use_tb_logger': key('bool', True),
    'wandb': key(('dict', 'none')),
}
WANDB = {'project': key(('str', 'none')), 'resume_id': key(('str', 'none'))}
DIST_PARAMS = {'backend': key('str'), 'port': key('int', minimum=0)}

# BasicSR's build_dataloader and create_train_val_dataloader (read for the training set only)
LOADER = {
    'batch_size_per_gpu': key('int', True, minimum=1, note='the batch of each process'),
    'num_worker_per_gpu': key('int', True, minimum=0, note='data loading workers of each process (0: none)'),
    'dataset_enlarge_ratio': key('count', minimum=1),
    'prefetch_mode': key(('str', 'none'), choices=(None, 'cpu', 'cuda')),
    'pin_memory': key('bool'),
    'persistent_workers': key('bool'),
    'num_prefetch_queue': key('int', minimum=1),
}
DATASET_COMMON = {'name': key('str', True), 'type': key('str', True, note='a registered data set')}
IO_BACKEND = {'type': key('str', True, choices=('disk', 'lmdb', 'memcached'))}
_AUGMENT = {'gt_size': key('int', minimum=1, note='HR patch size of training crops'),
            'use_hflip': key('bool'), 'use_rot': key('bool'), 'color': key(('str', 'none'), choices=(None, 'y')),
            'mean': key(('list', 'none')), 'std': key(('list', 'none'))}
_D2C_DATASET = dict(_AUGMENT, io_backend=key('dict'), lq_at_gt_size=key(('str', 'none'), choices=(None, 'bicubic')),
                    check_sizes=key('bool'))
_RAW_LAYOUT = {'dataroot': key('str', True, note='the data set as downloaded'), 'split': key(('str', 'none'))}
# per data set type: its keys, and those needed in the training phase (a crop size and BasicSR's flips)
DATASETS = {
    'PairedImageDataset': (dict(_AUGMENT, dataroot_gt=key('str', True, note='the HR folder or HR LMDB'),
                                dataroot_lq=key('str', True, note='the LR folder or LR LMDB'),
                                io_backend=key('dict', True, note='{type: disk} or {type: lmdb}'),
                                meta_info_file=key(('str', 'none')), filename_tmpl=key('str')),
                           ('gt_size', 'use_hflip', 'use_rot')),
    'SingleImageDataset': ({'dataroot_lq': key('str', True), 'io_backend': key('dict', True),
                            'meta_info_file': key(('str', 'none')), 'color': _AUGMENT['color'],
                            'mean': _AUGMENT['mean'], 'std': _AUGMENT['std']}, ()),
    'RealSRDataset': (dict(_D2C_DATASET, **_RAW_LAYOUT, cameras=key(('list', 'str', 'none'))), ('gt_size', )),
    'DRealSRDataset': (dict(_D2C_DATASET, **_RAW_LAYOUT), ('gt_size', )),
    'D2CRealSRDataset': (dict(_D2C_DATASET, **_RAW_LAYOUT), ('gt_size', )),
    'PairListDataset': (dict(_D2C_DATASET, meta_info_file=key('str', True, note='one "lr_path hr_path" per line'),
                             dataroot=key(('str', 'none'))), ('gt_size', )),
    'PairedFolderDataset': (dict(_D2C_DATASET, dataroot_gt=key('str', True), dataroot_lq=key('str', True),
                                 filename_tmpl=key('str'), gt_filename_tmpl=key('str'),
                                 lq_regex=key(('str', 'none')), gt_regex=key(('str', 'none'))), ('gt_size', )),
}

# train: what each model reads (BasicSR's SRModel; D2CModel, which does not read pixel_opt)
_TRAIN_COMMON = {
    'ema_decay': key('number', minimum=0, note='0 = off; e.g. 0.999'),
    'optim_g': key('dict', True, note='the optimizer, e.g. {type: Adam, lr: !!float 1e-4}'),
    'scheduler': key('dict', True, note='e.g. {type: MultiStepLR, milestones: [...], gamma: 0.5}'),
    'total_iter': key('count', True, minimum=1, note='iterations to train'),
    'warmup_iter': key('int', note='-1: no warm-up'),
    'perceptual_opt': key(('dict', 'none')),
}
TRAIN = {
    'SRModel': dict(_TRAIN_COMMON, pixel_opt=key(('dict', 'none'), note='e.g. {type: MSELoss}')),
    'D2CModel': dict(
        _TRAIN_COMMON,
        stage=key('str', True, choices=('divergence', 'convergence', 'joint')),
        nan_policy=key('str', choices=('stop', 'skip')),
        amp=key(('str', 'bool', 'none'), note='bf16, fp16 or ~ (fp32)'),  # values: d2csr.options_check
        compile=key(('str', 'bool', 'none')),
        compile_backend=key('str'),
        log_grad_ratio=key('bool', note='stage 1: log the triplet term\'s gradient ratio at log lines (default true)'),
        optim_c=key(('dict', 'none'), note='stage joint: the convergence net\'s optimizer (default: optim_g)'),
        divergence_opt=key(('dict', 'none'), note='the divergence loss (stages divergence and joint)'),
        convergence_opt=key(('dict', 'none'), note='the convergence loss (stages convergence and joint)')),
}
# train keys a model does not read, and why (said instead of a plain "unknown")
NOT_READ = {
    ('D2CModel', 'pixel_opt'): 'D2CModel does not read pixel_opt: the divergence stage trains with divergence_opt '
                               '(an MSE per branch plus the triplet term), the convergence stage with '
                               'convergence_opt. Remove it (or use model_type: SRModel for a single network)',
}
# stage -> train keys it needs, and those that only another stage reads
STAGE_KEYS = {
    'divergence': (('divergence_opt', ), ('convergence_opt', 'optim_c')),
    'convergence': (('convergence_opt', ), ('divergence_opt', 'optim_c')),
    'joint': (('divergence_opt', 'convergence_opt'), ()),
}
_VAL_COMMON = {
    'val_freq': key('count', minimum=1, note='validate every val_freq iterations'),
    'save_img': key('bool', True),
    'suffix': key(('str', 'none'), note='added to saved image names; ~ = the experiment name'),
    'metrics': key(('dict', 'none')),
    'pbar': key('bool'),
}
VAL = {
    'SRModel': _VAL_COMMON,
    'D2CModel': dict(_VAL_COMMON, amp=key(('str', 'bool', 'none'), note='bf16, fp16 or ~ (fp32)'),
                     save_panels=key('bool'), panel_max_side=key('int', minimum=16),
                     tile=key(('auto', 'int', 'none'), minimum=0,
                              note='auto, 0 (never tile) or a tile size in LR pixels')),
}
# keys a builder reads itself besides its class's constructor arguments
EXTRA_LOSS_KEYS = {'perceptual_opt': ('pretrained', 'pretrained_path')}  # d2csr.losses.perceptual
METRIC_KEYS = ('better', )  # BasicSR's validation reads it besides the metric function's arguments


# --------------------------------------------------------------------------------------------------
# the check
def did_you_mean(name, candidates):
    """``' (did you mean X?)'`` for the closest of ``candidates`` to ``name``, or ``''``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f' (did you mean {close[0]}?)' if close else ''


def _float_text(value):
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _int_text(value):
    return isinstance(value, str) and value.strip().lstrip('+-').isdigit()


def describe(value):
    if isinstance(value, str):
        return f'the text {value!r}'
    if isinstance(value, dict):
        return 'a section'
    return repr(value)


def value_problem(where, value, spec):
    """What is wrong with ``value`` for ``spec`` (a :func:`key`), or ``None``."""
    kinds = spec.kinds
    if not any(KINDS[k](value) for k in kinds):
        wanted = ' or '.join(KIND_WORDS[k] for k in kinds)
        numeric = isinstance(value, str) and (
            (any(k in ('number', 'count') for k in kinds) and _float_text(value))
            or (any(k in ('int', 'count') for k in kinds) and _int_text(value)))
        if numeric and 'e' in value.lower():
            return (f'{where} is the text {value!r}, not a number: YAML reads a number in exponent form without a '
                    f'dot (1e-4) as text. Write {_decimal(value)} or !!float {value.strip()} (in --force_yml: '
                    f'{_positional(value)}).')
        if numeric:
            return f'{where} is the text {value!r} (in quotes), not a number; write {value.strip()} without quotes.'
        return f'{where} must be {wanted}, got {describe(value)}.'
    if spec.choices is not None and value not in spec.choices and not KINDS['dict'](value):
        choices = ', '.join('~' if c is None else str(c).lower() if isinstance(c, bool) else str(c)
                            for c in spec.choices)
        return f'{where} must be one of {choices}, got {value!r}{did_you_mean(value, spec.choices)}.'
    if spec.minimum is not None and _is_number(value) and value < spec.minimum:
        return f'{where} must be at least {spec.minimum}, got {value!r}.'
    return None


def _positional(text):
    """``'1e-4'`` -> ``'0.0001'``: how ``--force_yml`` (BasicSR's own conversion) reads a number."""
    return format(float(text), '.20f').rstrip('0').rstrip('.') if 1e-15 < abs(float(text)) < 1e15 else text


def _decimal(text):
    mantissa, _, exponent = text.strip().lower().partition('e')
    return f'{mantissa if "." in mantissa else mantissa + ".0"}e{exponent}' if exponent else text


def check_section(section, where, table, problems, *, required=True, extra=(), not_read=None, open_keys=False,
                  owner=''):
    """Check the keys of the dict ``section`` (named ``where``, e.g. ``'train'``) against ``table``
    (name -> :func:`key`): unknown keys (with "did you mean"), missing required ones, wrong types. ``extra``:
    keys allowed without a check (set by BasicSR). ``not_read``: ``{key: why}`` for known keys this
    configuration does not read. ``open_keys``: unknown keys are allowed (a class whose options are unknown).
    ``owner``: the class the keys belong to, for the messages."""
    prefix = f'{where}:' if where else ''
    unknown = []
    for name, value in section.items():
        spec = table.get(name)
        if spec is None:
            if name in extra:
                continue
            if not_read and name in not_read:
                problems.append(f'{prefix}{name}: {not_read[name]}.')
            elif not open_keys:
                unknown.append(name)
            continue
        if value is None and 'none' not in spec.kinds and not spec.required:
            continue  # ~ for an optional key: BasicSR's .get() gives its default
        problem = value_problem(f'{prefix}{name}', value, spec)
        if problem:
            problems.append(problem)
    missing = [name for name, spec in table.items()
               if spec.required and (name not in section or (section[name] is None and 'none' not in spec.kinds))]
    for name in unknown:
        hint = did_you_mean(name, table)
        known = '' if hint else f' Known here: {", ".join(table) or "none"}.'
        problems.append(f'{prefix}{name} is not an option{f" of {owner}" if owner else ""}{hint}: nothing reads '
                        f'it, so it would be ignored.{known}')
    if required:
        for name in missing:
            if any(did_you_mean(u, [name]) for u in unknown):
                continue  # said with the misspelt key
            note = f' ({table[name].note})' if table[name].note else ''
            problems.append(f'{prefix}{name} is missing{note}.')


def signature_keys(target, skip=()):
    """``({name: default}, required names, takes **kwargs)`` of a class's constructor or a function, leaving
    out ``self`` and the parameters named in ``skip`` (what the builder passes itself: the optimizer's ``params``,
    a metric's images)."""
    function = target.__init__ if inspect.isclass(target) else target
    params = [p for name, p in inspect.signature(function).parameters.items() if name != 'self' and name not in skip]
    named = {p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    required = [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return named, required, any(p.kind == p.VAR_KEYWORD for p in params)


def _kind_of_default(default):
    """The :func:`key` a constructor argument's default implies (numbers stay numbers, flags stay flags)."""
    if isinstance(default, bool):
        return key(('bool', 'none'))
    if _is_number(default):  # an int default takes a float too (weight_decay=0 with 1e-8)
        return key(('number', 'none'))
    return key('any')


def check_arguments(section, where, target, problems, *, skip=(), ignore=('type', ), extra=(), required_extra=()):
    """Check the option dict ``section`` (named ``where``) against the constructor / function ``target``: unknown
    arguments (with "did you mean", unless it takes ``**kwargs``), missing required ones, and values whose type
    differs from the default's (a text where the default is a number). ``extra``: keys the builder reads itself."""
    named, required, var_kw = signature_keys(target, skip)
    table = {name: _kind_of_default(default) for name, default in named.items()}
    table.update({name: key('any') for name in extra})
    body = {k: v for k, v in section.items() if k not in ignore}
    check_section(body, where, table, problems, required=False, open_keys=var_kw,
                  owner=getattr(target, '__name__', ''))
    for name in list(required) + list(required_extra):
        if name not in section and not any(did_you_mean(k, [name]) for k in body if k not in table):
            problems.append(f'{where}:{name} is missing ({getattr(target, "__name__", target)} needs it).')


def lookup(registry, name):
    """The class / function registered as ``name`` in a BasicSR registry, or ``None``."""
    import contextlib
    import io

    if not isinstance(name, str):
        return None
    if name in registry:
        return registry.get(name)
    with contextlib.redirect_stdout(io.StringIO()):  # Registry.get prints a line before its KeyError
        try:
            return registry.get(name)
        except KeyError:
            return None


def registered_names(registry):
    """BasicSR's names in ``registry`` and d2csr's (which BasicSR's lookup finds only through d2csr's ``get``)."""
    from d2csr.utils.registry import names_resolved_by

    return names_resolved_by(registry)


def check_registered(section, where, registry, kind, problems, **kwargs):
    """``section['type']`` looked up in ``registry`` (its constructor's arguments checked); returns the class."""
    if not isinstance(section, dict):
        return None
    type_ = section.get('type')
    if type_ is None:
        problems.append(f'{where}:type is missing (a registered {kind}).')
        return None
    target = lookup(registry, type_)
    if target is None:
        problems.append(f'{where}:type {type_!r} is not a registered {kind}'
                    f'{did_you_mean(type_, registered_names(registry))}.')
        return None
    check_arguments(section, where, target, problems, **kwargs)
    return target


# --------------------------------------------------------------------------------------------------
# the sections
def _check_datasets(opt, problems, complete):
    datasets = opt.get('datasets')
    if not isinstance(datasets, dict):
        return
    is_train = opt.get('is_train', True)
    if is_train and 'train' not in datasets and complete:
        problems.append('datasets:train is missing (the training set).')
    for phase_name, dataset in datasets.items():
        where = f'datasets:{phase_name}'
        if not isinstance(dataset, dict):
            problems.append(f'{where} must be a section (name, type, data roots...), got {describe(dataset)}.')
            continue
        phase = str(phase_name).split('_')[0]
        phases = ('train', 'val') if is_train else ('test', 'val')
        if phase not in phases:
            problems.append(f'{where}: a {"training" if is_train else "test"} run reads data sets named '
                            f'{phases[0]} and val (or <that>_<anything>); {phase_name!r} is neither'
                            f'{did_you_mean(phase_name, phases)}.')
            continue
        training = is_train and phase == 'train'
        known, train_required = DATASETS.get(dataset.get('type'), (None, ()))
        table = dict(DATASET_COMMON, **(known or {}))
        if training:
            table.update({k: known[k]._replace(required=True) for k in train_required})
            table.update(LOADER)
        else:  # BasicSR's evaluation loaders take batch 1 and no workers: the loader keys are allowed, not read
            table.update({k: v._replace(required=False) for k, v in LOADER.items()})
        check_section(dataset, where, table, problems, extra=SET_BY_BASICSR['dataset'], open_keys=known is None,
                      required=complete)
        type_ = dataset.get('type')
        if isinstance(type_, str):
            from basicsr.utils.registry import DATASET_REGISTRY

            if lookup(DATASET_REGISTRY, type_) is None:
                problems.append(f'{where}:type {type_!r} is not a registered data set'
                                f'{did_you_mean(type_, registered_names(DATASET_REGISTRY))}.')
        backend = dataset.get('io_backend')
        if isinstance(backend, dict):
            check_section(backend, f'{where}:io_backend', IO_BACKEND, problems, open_keys=True)


def _check_network(opt, problems):
    from basicsr.utils.registry import ARCH_REGISTRY

    network = opt.get('network_g')
    arch = check_registered(network, 'network_g', ARCH_REGISTRY, 'architecture', problems)
    if arch is None or not isinstance(network.get('backbone_opt'), dict):
        return
    from d2csr.archs.branch_modules import branch_module_options  # D2C backbones: their branch module's options

    backbone = network.get('backbone', 'rcan')
    try:
        options = branch_module_options(backbone)
    except ValueError as error:
        problems.append(f'{error}.')
        return
    table = {name: _kind_of_default(default) for name, default in options.items()}
    check_section(network['backbone_opt'], 'network_g:backbone_opt', table, problems, required=False)


def _check_optimizer(section, where, problems):
    """``optim_g`` / ``optim_c``: a type BasicSR's ``get_optimizer`` builds, with the ``torch.optim`` class's
    arguments (``lr`` a number)."""
    import torch

    if not isinstance(section, dict):
        return
    type_ = section.get('type')
    optimizer = getattr(torch.optim, type_, None) if isinstance(type_, str) else None
    if not (inspect.isclass(optimizer) and _basicsr_builds(type_)):
        names = [n for n in ('Adam', 'AdamW', 'Adamax', 'SGD', 'ASGD', 'RMSprop', 'Rprop') if _basicsr_builds(n)]
        problems.append(f'{where}:type {type_!r} is not an optimizer BasicSR builds; use '
                        f'{" or ".join(names)}{did_you_mean(type_, names)}.')
        return
    check_arguments(section, where, optimizer, problems, skip=('params', ))
    if 'lr' not in section:
        problems.append(f'{where}:lr is missing (the learning rate, e.g. !!float 1e-4).')


def _basicsr_builds(name):
    """Whether BasicSR's ``get_optimizer`` builds optimizer ``name`` (1.4.2: Adam only), asked of BasicSR itself
    on a throw-away parameter."""
    import torch
    from basicsr.models.base_model import BaseModel

    try:
        BaseModel.get_optimizer(None, name, [torch.nn.Parameter(torch.zeros(1))], 1e-4)
    except NotImplementedError:
        return False
    except Exception:  # noqa: BLE001  (built, then refused its arguments: the type itself is known)
        return True
    return True


def _check_scheduler(section, where, problems):
    from basicsr.models import lr_scheduler

    if not isinstance(section, dict):
        return
    classes = {'MultiStepLR': lr_scheduler.MultiStepRestartLR, 'MultiStepRestartLR': lr_scheduler.MultiStepRestartLR,
               'CosineAnnealingRestartLR': lr_scheduler.CosineAnnealingRestartLR}
    type_ = section.get('type')
    if type_ not in classes:
        problems.append(f'{where}:type must be one of {", ".join(classes)} (the schedulers BasicSR builds), got '
                        f'{describe(type_)}{did_you_mean(type_, classes)}.')
        return
    check_arguments(section, where, classes[type_], problems, skip=('optimizer', ))


def _check_losses(train, problems):
    from basicsr.utils.registry import LOSS_REGISTRY

    for name, section in train.items():
        if name.endswith('_opt') and isinstance(section, dict):
            check_registered(section, f'train:{name}', LOSS_REGISTRY, 'loss', problems,
                             extra=EXTRA_LOSS_KEYS.get(name, ()))
    schedule = (train.get('divergence_opt') or {}).get('alpha_schedule') if isinstance(
        train.get('divergence_opt'), dict) else None
    if isinstance(schedule, dict):
        from d2csr.losses.d2csr_losses import DivergenceWeightSchedule

        check_arguments(schedule, 'train:divergence_opt:alpha_schedule', DivergenceWeightSchedule, problems,
                        skip=('alpha', ))


def _check_train(opt, model, problems):
    train = opt.get('train')
    if not opt.get('is_train', True):
        return
    if not isinstance(train, dict):
        problems.append('train is missing (optimizer, scheduler, total_iter and the losses).')
        return
    table = TRAIN[model]
    not_read = {k: why for (m, k), why in NOT_READ.items() if m == model}
    check_section(train, 'train', table, problems, not_read=not_read, owner=f'{model} training')
    stage = train.get('stage')
    if model == 'D2CModel' and stage in STAGE_KEYS:
        needed, others = STAGE_KEYS[stage]
        for name in needed:
            if train.get(name) is None and name in train:
                problems.append(f'train:{name} is ~ but stage {stage} needs it ({table[name].note}).')
            elif name not in train:
                problems.append(f'train:{name} is missing: stage {stage} needs it ({table[name].note}).')
        for name in others:
            if train.get(name) is not None:
                reader = 'joint' if name == 'optim_c' else next(s for s, (n, _) in STAGE_KEYS.items() if name in n)
                problems.append(f'train:{name} is read by stage {reader} only; stage {stage} would ignore it. Remove '
                                'it (or set train:stage to the stage you mean).')
    if model == 'SRModel' and not train.get('pixel_opt') and not train.get('perceptual_opt'):
        problems.append('train: SRModel needs a loss: pixel_opt (e.g. {type: MSELoss, loss_weight: 1.0}) or '
                        'perceptual_opt.')
    ema = train.get('ema_decay')
    if _is_number(ema) and ema >= 1:
        problems.append(f'train:ema_decay must be below 1 (0 = off, e.g. 0.999), got {ema!r}.')
    _check_optimizer(train.get('optim_g'), 'train:optim_g', problems)
    _check_optimizer(train.get('optim_c'), 'train:optim_c', problems)
    _check_scheduler(train.get('scheduler'), 'train:scheduler', problems)
    _check_losses(train, problems)


def _check_val(opt, model, problems, complete):
    from basicsr.utils.registry import METRIC_REGISTRY

    val = opt.get('val')
    is_train = opt.get('is_train', True)
    if val is None:
        if not is_train and complete:
            problems.append('val is missing: d2csr/test.py reads val:save_img (and val:metrics for the scores).')
        return
    if not isinstance(val, dict):
        return
    table = dict(VAL[model])
    if is_train:
        table['val_freq'] = table['val_freq']._replace(required=True)
    elif val.get('save_img'):  # SRModel's test-time saving reads val:suffix (~ is fine)
        table['suffix'] = table['suffix']._replace(required=True)
    check_section(val, 'val', table, problems, required=complete)
    metrics = val.get('metrics')
    if isinstance(metrics, dict):
        for name, metric in metrics.items():
            where = f'val:metrics:{name}'
            if not isinstance(metric, dict):
                problems.append(f'{where} must be a section with a type (e.g. type: calculate_psnr).')
                continue
            function = lookup(METRIC_REGISTRY, metric.get('type'))
            if function is None:
                problems.append(f'{where}:type {describe(metric.get("type"))} is not a registered metric'
                                f'{did_you_mean(metric.get("type"), registered_names(METRIC_REGISTRY))}.')
                continue
            # BasicSR's metric functions take **kwargs only to ignore them: their named arguments are the options
            named, required, _ = signature_keys(function, skip=('img', 'img2'))
            spec = {n: _kind_of_default(d) for n, d in named.items()}
            spec.update({n: key('str', choices=('higher', 'lower')) for n in METRIC_KEYS})
            check_section({k: v for k, v in metric.items() if k != 'type'}, where, spec, problems, required=False,
                          owner=metric['type'])
            for arg in required:
                if arg not in metric and not any(did_you_mean(k, [arg]) for k in metric if k not in spec):
                    problems.append(f'{where}:{arg} is missing ({metric["type"]} needs it).')


def _check_path(opt, problems):
    path = opt.get('path')
    if isinstance(path, dict):
        check_section(path, 'path', PATH, problems, extra=SET_BY_BASICSR['path'])


def _check_logger(opt, problems, complete):
    logger = opt.get('logger')
    if not opt.get('is_train', True) or (logger is None and not complete):
        return
    if not isinstance(logger, dict):
        problems.append('logger is missing (print_freq, save_checkpoint_freq, use_tb_logger).')
        return
    check_section(logger, 'logger', LOGGER, problems, required=complete)
    if isinstance(logger.get('wandb'), dict):
        check_section(logger['wandb'], 'logger:wandb', WANDB, problems, open_keys=False)


def schema_problems(opt, complete=True):
    """Every difference between ``opt`` (an options dict, with ``is_train`` set: BasicSR's parser sets it; missing
    means training) and what BasicSR and d2csr read, as a list of sentences (empty: none).

    ``complete``: the options of a whole run (an entry point), so the sections BasicSR's pipeline reads
    (``datasets``, ``logger``, ``val``) must have their required keys; ``False`` for a model built on its own
    (the model's sections are still complete; unknown keys and types are checked everywhere).
    """
    from basicsr.utils.registry import MODEL_REGISTRY

    problems = []
    if not isinstance(opt, dict):
        return [f'the options file holds {describe(opt)}, not sections of key: value lines.']
    check_section(opt, '', TOP, problems, extra=SET_BY_BASICSR[''], required=complete)
    model = opt.get('model_type')
    if isinstance(model, str) and lookup(MODEL_REGISTRY, model) is None:
        problems.append(f'model_type {model!r} is not a registered model'
                        f'{did_you_mean(model, registered_names(MODEL_REGISTRY))}.')
    known_model = model if model in TRAIN else None
    _check_network(opt, problems)
    _check_datasets(opt, problems, complete)
    if known_model is not None:  # another plugin's model: its own keys are its business
        _check_path(opt, problems)
        _check_train(opt, known_model, problems)
        _check_val(opt, known_model, problems, complete)
    _check_logger(opt, problems, complete)
    if isinstance(opt.get('dist_params'), dict):
        check_section(opt['dist_params'], 'dist_params', DIST_PARAMS, problems, open_keys=True)
    return problems
