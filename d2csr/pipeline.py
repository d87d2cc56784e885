"""d2csr's changes to BasicSR 1.4.2's training and test pipeline, for the runs of d2csr's entry points.

Nothing here runs on ``import d2csr``: :func:`apply_training_patches` applies them, once per process, called by
``d2csr/train.py``, ``d2csr/test.py`` and (for D2C runs) the BasicSR entry-point hook ``d2csr_basicsr_hook``.
It

1. replaces BasicSR's ``init_dist`` (in ``basicsr.utils.dist_util`` and where ``parse_options`` imported
   it): the same on GPU, but without a GPU it uses the gloo backend and does not call
   ``torch.cuda.set_device``, so ``--launcher pytorch`` / ``slurm`` train on CPU machines; a launch whose
   world size cannot work (not started by torchrun, ``RANK >= WORLD_SIZE``, more processes per node than
   GPUs) stops with a message that names the problem;
2. replaces ``basicsr.train.load_resume_state``, which calls ``torch.cuda.current_device()`` and so
   fails on a machine without a GPU, by a device-agnostic version that loads with ``weights_only=True``,
   picks the newest *complete* state with ``--auto_resume`` (and says which), and refuses a state of
   another network shape before anything is written (:mod:`d2csr.utils.checkpoint`);
3. makes the training data position resumable: ``basicsr.train`` builds a :class:`ResumableEnlargedSampler`
   (BasicSR's ``EnlargedSampler`` that can start an epoch part-way) and its ``create_train_val_dataloader``
   is wrapped so that, on resume, the sampler skips the batches of the current epoch that were already
   trained on and restores the saved RNG states when the first new batch is drawn. BasicSR itself restarts
   the epoch from its first batch. It also checks every data set before the first batch
   (:func:`d2csr.data.eval_check.check_eval_dataset`; LMDBs: keys, ``data.mdb``, sizes, and before BasicSR
   builds on them :func:`~d2csr.data.eval_check.check_lmdb_roots`), refuses a world size / batch size with no
   batch per epoch, sorts the file lists BasicSR made with ``os.scandir`` (:func:`sort_scanned_paths`: the
   same order on every node) and sets the number of epochs from the loader's real epoch length, so that a run
   does exactly ``total_iter`` iterations (:func:`exact_last_epoch`);
4. checks, before ``basicsr.train`` / ``basicsr.test`` create the experiment / results folder (and before a
   resume), that every data folder the options name exists (:func:`d2csr.data.eval_check.check_data_roots`,
   naming the option and the step that makes the folder) and that every backbone weight file the options need
   (perceptual loss, LPIPS) is there or downloadable
   (:func:`d2csr.utils.pretrained_weights.check_pretrained_weights`), so a missing one stops the run before
   anything is written.

:func:`run_basicsr_entry_point` runs BasicSR's own ``python -m basicsr.train`` / ``basicsr/test.py`` through the
imported ``basicsr.train`` / ``basicsr.test`` module, which carries the changes above (the copy Python runs as
``__main__`` would not); called by the import hook ``d2csr_basicsr_hook``.
"""
import itertools
import math
import os
import os.path as osp
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import d2csr.utils.torchvision_shim  # noqa: F401  (before basicsr)
import basicsr.test  # noqa: E402
import basicsr.train  # noqa: E402
import basicsr.utils.dist_util  # noqa: E402
import basicsr.utils.options  # noqa: E402
from basicsr.data.data_sampler import EnlargedSampler  # noqa: E402
from basicsr.utils import check_resume  # noqa: E402

from d2csr.data.eval_check import check_eval_dataset, check_lmdb_roots  # noqa: E402
from d2csr.utils.checkpoint import (check_network_matches, error_summary, find_resume_state,  # noqa: E402
                                    load_lazily, remove_stale_temporaries, restore_rng_state, state_network_path,
                                    unreadable_reason)
from d2csr.utils.errors import ResumeError  # noqa: E402

# --------------------------------------------------------------------------------------------------
# distributed launch
_basicsr_init_dist = basicsr.utils.dist_util.init_dist
TORCHRUN_HINT = 'python -m torch.distributed.run --nproc_per_node=N d2csr/train.py -opt X --launcher pytorch'


def _env_int(name, launcher, hint):
    value = os.environ.get(name)
    if value is None:
        raise RuntimeError(f'--launcher {launcher}: environment variable {name} is not set. {hint}')
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f'--launcher {launcher}: {name}={value!r} is not an integer. {hint}') from None


def _check_world(launcher, rank, world_size, local_rank, local_world_size, use_cuda):
    """Refuse a launch whose world size cannot work, naming the numbers."""
    if world_size < 1:
        raise RuntimeError(f'--launcher {launcher}: world size {world_size} < 1; start at least one process.')
    if not 0 <= rank < world_size:
        raise RuntimeError(f'--launcher {launcher}: rank {rank} is outside the world size {world_size} '
                           f'(ranks are 0..{world_size - 1}); the launcher environment is inconsistent.')
    if use_cuda:
        num_gpus = torch.cuda.device_count()
        if local_world_size is not None and local_world_size > num_gpus:
            raise RuntimeError(
                f'--launcher {launcher}: {local_world_size} processes per node but only {num_gpus} visible '
                f'GPU(s) (world size {world_size}); start at most {num_gpus} per node (--nproc_per_node='
                f'{num_gpus}) or make more GPUs visible (CUDA_VISIBLE_DEVICES).')
        if local_rank is not None and local_rank >= num_gpus:
            raise RuntimeError(f'--launcher {launcher}: local rank {local_rank} has no GPU (only {num_gpus} '
                               'visible); start fewer processes per node.')


def _slurm_master_addr(node_list):
    import subprocess

    try:
        out = subprocess.run(['scontrol', 'show', 'hostnames', node_list], capture_output=True, text=True,
                             check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError) as error:
        raise RuntimeError(f'--launcher slurm: cannot resolve SLURM_NODELIST={node_list!r} with scontrol '
                           f'({error}); set MASTER_ADDR yourself.') from None
    return out[0]


def init_dist(launcher, backend='nccl', **kwargs):
    """BasicSR's ``init_dist`` that also works without a GPU (gloo) and checks the world size first.

    With CUDA available it validates the launcher's environment and then calls BasicSR's own
    ``init_dist`` (nothing else changes). Without CUDA it sets up the same environment and calls
    ``torch.distributed.init_process_group('gloo')``. A second call in an initialised process is a no-op.
    """
    if dist.is_available() and dist.is_initialized():
        return
    if launcher not in ('pytorch', 'slurm'):
        raise ValueError(f"--launcher must be 'none', 'pytorch' or 'slurm', got {launcher!r}")
    use_cuda = torch.cuda.is_available()
    if launcher == 'pytorch':
        hint = f'--launcher pytorch expects to be started by torchrun ({TORCHRUN_HINT}); drop --launcher to ' \
               'train in one process.'
        world_size = _env_int('WORLD_SIZE', launcher, hint)
        rank = _env_int('RANK', launcher, hint)
        local_rank = int(os.environ.get('LOCAL_RANK', rank))
        local_world = os.environ.get('LOCAL_WORLD_SIZE')
        _check_world(launcher, rank, world_size, local_rank, int(local_world) if local_world else None, use_cuda)
        for name in ('MASTER_ADDR', 'MASTER_PORT'):
            if name not in os.environ:
                raise RuntimeError(f'--launcher pytorch: environment variable {name} is not set. {hint}')
    else:
        hint = '--launcher slurm expects to run under srun, which sets SLURM_PROCID, SLURM_NTASKS, SLURM_NODELIST.'
        rank = _env_int('SLURM_PROCID', launcher, hint)
        world_size = _env_int('SLURM_NTASKS', launcher, hint)
        local_rank = int(os.environ.get('SLURM_LOCALID', 0))
        if 'SLURM_NODELIST' not in os.environ:
            raise RuntimeError(f'--launcher slurm: environment variable SLURM_NODELIST is not set. {hint}')
        _check_world(launcher, rank, world_size, local_rank, None, use_cuda)
    if use_cuda:
        return _basicsr_init_dist(launcher, backend, **kwargs)

    # no GPU: gloo, no torch.cuda.set_device
    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method('spawn')
    if launcher == 'slurm':
        port = kwargs.pop('port', None)
        if port is not None:
            os.environ['MASTER_PORT'] = str(port)
        os.environ.setdefault('MASTER_PORT', '29500')
        if 'MASTER_ADDR' not in os.environ:
            os.environ['MASTER_ADDR'] = _slurm_master_addr(os.environ['SLURM_NODELIST'])
        os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(local_rank))
    kwargs.pop('backend', None)
    dist.init_process_group(backend='gloo', **kwargs)
    if rank == 0:
        print(f'Distributed training on CPU: {world_size} processes, gloo backend (no GPU).', flush=True)


# --------------------------------------------------------------------------------------------------
# resume
def resume_map_location(opt):
    """Where resume states are loaded to: the current CUDA device when training on GPU, else the CPU."""
    if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available():
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def load_resume_state(opt):
    """Drop-in for ``basicsr.train.load_resume_state`` that also works without a GPU.

    With ``--auto_resume`` it picks the newest *complete* ``<iter>.state`` in
    ``opt['path']['training_states']`` (its ``net_g_<iter>.pth`` must exist and load too) and says which
    one and why newer ones were passed over; otherwise it reads ``path: resume_state``. Before returning
    it checks that the saved network has the shapes of ``network_g`` (else ``ValueError``, nothing
    written) and deletes temporary files of interrupted saves. Returns the state dict or ``None``.
    """
    resume_state_path = None
    states_dir, models_dir = opt['path']['training_states'], opt['path']['models']
    main_process = opt.get('rank', 0) == 0
    if opt['auto_resume']:
        resume_state_path, skipped = find_resume_state(states_dir, models_dir)
        for path, reason in skipped if main_process else ():
            print(f'Resume: skipping {path}: {reason}.', flush=True)
        if resume_state_path is not None:
            opt['path']['resume_state'] = resume_state_path
    elif opt['path'].get('resume_state'):
        resume_state_path = opt['path']['resume_state']

    if resume_state_path is None:
        return None
    reason = unreadable_reason(resume_state_path)
    if reason == 'missing':
        raise ResumeError(f'path:resume_state {resume_state_path!r} does not exist; point it at an existing '
                          'experiments/<name>/training_states/<iter>.state or remove it to start from scratch.')
    try:
        resume_state = None if reason else torch.load(resume_state_path, map_location=resume_map_location(opt),
                                                      weights_only=True)
    except Exception as error:  # noqa: BLE001  (a truncated or foreign file)
        reason = f'unreadable ({error_summary(error)})'
    if reason:
        raise ResumeError(f'path:resume_state {resume_state_path} cannot be read ({reason}): it is truncated or '
                          'not a training state. Point it at another <iter>.state, or drop it and use --auto_resume, '
                          'which picks the newest complete one.')
    if not isinstance(resume_state, dict) or 'iter' not in resume_state:
        raise ResumeError(f'path:resume_state {resume_state_path} is not a BasicSR training state (no "iter"); '
                          'point it at experiments/<name>/training_states/<iter>.state, or use --auto_resume.')
    saved_stage, stage = resume_state.get('stage'), (opt.get('train') or {}).get('stage')
    if saved_stage is not None and saved_stage != stage:
        raise ResumeError(f'refusing to resume from {resume_state_path}: it was written by the {saved_stage!r} '
                          f'stage but this options file trains train:stage {stage!r}. Use the options of that run, '
                          'or give this run another name (stage 2 starts from stage 1 through '
                          'path:pretrain_network_g, not by resuming). Nothing was written.')
    check_resume(opt, resume_state['iter'])  # sets path:pretrain_network_g to models/net_g_<iter>.pth
    net_path = opt['path'].get('pretrain_network_g')
    if net_path == state_network_path(models_dir, resume_state['iter']):
        if not osp.isfile(net_path):
            raise ResumeError(f'path:resume_state {resume_state_path} needs its network {net_path}, which does '
                              'not exist; resume from another state (or use --auto_resume, which picks the newest '
                              'complete one).')
        check_network_matches(opt['network_g'], net_path, resume_state_path,
                              strict=opt['path'].get('strict_load_g', True),
                              saved_network_opt=resume_state.get('network_g'))
    if main_process:
        for path in remove_stale_temporaries(states_dir, models_dir):
            print(f'Resume: removed {path}, left by an interrupted save.', flush=True)
        print(f"Resume: using training state {resume_state_path} (iteration {resume_state['iter']}, epoch "
              f"{resume_state['epoch']}) and network {net_path}.", flush=True)
    return resume_state


# --------------------------------------------------------------------------------------------------
# resumable data position
class ResumableEnlargedSampler(EnlargedSampler):
    """BasicSR's :class:`~basicsr.data.data_sampler.EnlargedSampler` that can resume part-way into an epoch.

    :meth:`resume_at` makes the epoch ``epoch`` (once :meth:`set_epoch` selects it) start at sample
    ``num_consumed`` of this process's share instead of its first sample, and calls ``on_start`` when that
    epoch's indices are first drawn, i.e. right before the first new batch is loaded (with
    ``num_worker_per_gpu: 0``). The order of the samples is BasicSR's: a permutation seeded by the epoch.
    """

    def __init__(self, dataset, num_replicas, rank, ratio=1):
        super().__init__(dataset, num_replicas, rank, ratio)
        self._resume_epoch = None
        self._num_consumed = 0
        self._on_start = None

    def resume_at(self, epoch, num_consumed, on_start=None):
        if not 0 <= num_consumed <= self.num_samples:
            raise ValueError(f'cannot skip {num_consumed} of the {self.num_samples} samples of an epoch')
        self._resume_epoch, self._num_consumed, self._on_start = epoch, num_consumed, on_start

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        if self._resume_epoch is not None and epoch != self._resume_epoch:
            self._resume_epoch, self._num_consumed, self._on_start = None, 0, None

    def __iter__(self):
        indices = super().__iter__()
        if self._resume_epoch is not None and self.epoch == self._resume_epoch:
            indices = itertools.islice(indices, self._num_consumed, None)
            if self._on_start is not None:
                on_start, self._on_start = self._on_start, None
                on_start()
        return indices


_basicsr_create_train_val_dataloader = basicsr.train.create_train_val_dataloader


def _check_batches_per_epoch(opt, train_loader, train_sampler):
    if len(train_loader) > 0:
        return
    dataset_opt = opt['datasets']['train']
    ratio = dataset_opt.get('dataset_enlarge_ratio', 1)
    raise ValueError(
        f'no training batch per epoch: the world size is {opt["world_size"]} process(es), each with batches '
        f'of {train_loader.batch_size}, but an epoch has {len(train_loader.dataset)} training pairs x '
        f'dataset_enlarge_ratio {ratio}, i.e. {train_sampler.num_samples} per process. Use fewer processes, '
        'a smaller batch_size_per_gpu or a larger dataset_enlarge_ratio.')


def create_train_val_dataloader(opt, logger):
    """BasicSR's ``create_train_val_dataloader`` with d2csr's checks and fixes (see the module doc): LMDB roots
    checked before BasicSR builds on them, every data set checked before the first batch, file order
    independent of the file system, exactly ``total_iter`` iterations, then the resume of the data position."""
    for dataset_opt in opt['datasets'].values():
        check_lmdb_roots(dataset_opt)
    result = list(_basicsr_create_train_val_dataloader(opt, logger))
    logger.info(f'd2csr: BasicSR training patches active ({", ".join(TRAINING_PATCHES)}).')
    train_loader, train_sampler = result[0], result[1]
    if train_loader is None:
        return tuple(result)
    for loader in [train_loader] + list(result[2] or []):
        sort_scanned_paths(loader.dataset)
    # empty, sizes and gt_size (LMDBs: keys and data.mdb), before the first batch
    check_eval_dataset(train_loader.dataset, opt['scale'], opt['datasets']['train'].get('gt_size'))
    for val_loader in result[2] or []:  # not only at the first validation, hours later
        check_eval_dataset(val_loader.dataset, opt['scale'])
    _check_batches_per_epoch(opt, train_loader, train_sampler)
    result[3] = exact_last_epoch(opt, logger, train_loader, train_sampler, result[3], result[4])
    resume_path = opt['path'].get('resume_state')
    if resume_path and isinstance(train_sampler, ResumableEnlargedSampler):
        _resume_data_position(opt, logger, resume_path, train_loader, train_sampler)
    return tuple(result)


def sort_scanned_paths(dataset):
    """Put the file list of a BasicSR data set that scanned its folders (``PairedImageDataset`` /
    ``SingleImageDataset`` on disk without ``meta_info_file``) in sorted order.

    BasicSR lists folders with ``os.scandir``, whose order depends on the file system: nodes holding their own
    copy of the data can list the same files in different orders, so the sampler's shards (indices into the
    list) disagree across nodes and a resumed run on another machine sees other images. A meta_info file or an
    LMDB gives the order itself; d2csr's own data sets sort.
    """
    opt = getattr(dataset, 'opt', None) or {}
    paths = getattr(dataset, 'paths', None)
    if (opt.get('io_backend') or {}).get('type', 'disk') != 'disk' or opt.get('meta_info_file') \
            or not isinstance(paths, list) or getattr(dataset, 'checks_own_sizes', False):
        return
    if all(isinstance(p, dict) for p in paths):
        paths.sort(key=lambda p: tuple(str(p.get(k, '')) for k in ('gt_path', 'lq_path')))
    elif all(isinstance(p, str) for p in paths):
        paths.sort()


def exact_last_epoch(opt, logger, train_loader, train_sampler, total_epochs, total_iters):
    """The last epoch index for ``basicsr.train``'s loop (``for epoch in range(start, total_epochs + 1)``) so
    that it runs exactly ``total_iters`` iterations.

    BasicSR counts ``ceil(pairs x enlarge ratio / (batch x world size))`` iterations per epoch, but its loader
    drops the last partial batch of each process's share, so an epoch can have fewer: at the paper's setting
    (459 pairs, batch 4) 114 instead of 115 on one GPU, and the run would end up to a few percent short of
    ``total_iter`` in its last learning-rate stage. This counts the loader's real epoch length.
    """
    per_epoch = len(train_loader)
    last_epoch = math.ceil(total_iters / per_epoch) - 1
    dataset_opt = opt['datasets']['train']
    basicsr_per_epoch = math.ceil(len(train_loader.dataset) * dataset_opt.get('dataset_enlarge_ratio', 1) /
                                  (dataset_opt['batch_size_per_gpu'] * opt['world_size']))
    basicsr_iters = min((total_epochs + 1) * per_epoch, total_iters)
    note = ''
    if basicsr_iters < total_iters:
        short = total_iters - basicsr_iters
        note = (f' (BasicSR\'s statistics above count {basicsr_per_epoch}, rounded up: its {total_epochs + 1} '
                f'epochs would stop after {basicsr_iters} iterations, {short} or {100 * short / total_iters:.1f}% '
                'short)')
    logger.info(f'd2csr: an epoch is {per_epoch} iterations per process ({train_sampler.num_samples} samples / '
                f'batch {train_loader.batch_size}, the last partial batch dropped){note}. Training runs epochs '
                f'0-{last_epoch}: exactly total_iter = {total_iters} iterations.')
    return last_epoch


def _resume_data_position(opt, logger, resume_path, train_loader, train_sampler):
    state = load_lazily(resume_path)
    epoch, it = state['epoch'], state['iter']
    per_epoch = len(train_loader)
    consumed = it - epoch * per_epoch
    if not 0 <= consumed <= per_epoch:
        logger.warning(f'Resume: iteration {it} is not in epoch {epoch} with {per_epoch} iterations per epoch '
                       '(did the data, batch size or world size change?); the epoch restarts from its first '
                       'batch, as in BasicSR, and the resumed run is not exact.')
        return
    rng = state.get('rng')
    rank = opt.get('rank', 0)
    on_start = None
    if rng is None:
        logger.warning(f'Resume: {resume_path} holds no RNG states (written by another tool); the resumed run '
                       'continues from the right data position but is not bit-exact.')
    elif len(rng) != opt['world_size']:
        logger.warning(f'Resume: the state was saved by {len(rng)} process(es), this run has '
                       f'{opt["world_size"]}; RNG states are not restored and the resumed run is not exact.')
    else:
        on_start = lambda: restore_rng_state(rng[rank])  # noqa: E731
    train_sampler.resume_at(epoch, consumed * train_loader.batch_size, on_start)
    dataset_opt = opt['datasets']['train']
    inexact = []
    if dataset_opt.get('num_worker_per_gpu', 0) > 0:
        inexact.append('num_worker_per_gpu > 0 (workers keep their own RNG streams)')
    if dataset_opt.get('prefetch_mode') in ('cpu', 'cuda'):
        inexact.append(f'prefetch_mode {dataset_opt["prefetch_mode"]} (batches are loaded ahead)')
    if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available():
        inexact.append('GPU kernels (cuDNN autotuning, atomics) that are not bit-deterministic')
    note = f' Not bit-exact because of {" and ".join(inexact)}.' if inexact else ''
    logger.info(f'Resume: data position epoch {epoch}, skipping the {consumed} of its {per_epoch} iterations '
                f'already trained{"" if on_start is None else "; RNG states restored at the next batch"}.{note}')


# --- 4. backbone weight files checked before the experiment folder is made ------------------------------------
_basicsr_make_exp_dirs = basicsr.test.make_exp_dirs


def make_exp_dirs(opt):
    """BasicSR's ``make_exp_dirs`` for ``basicsr.test``, after checking the data folders and the backbone weight
    files."""
    from d2csr.data.eval_check import check_data_roots
    from d2csr.utils.pretrained_weights import check_pretrained_weights

    check_data_roots(opt)
    check_pretrained_weights(opt)
    _basicsr_make_exp_dirs(opt)


def checked_load_resume_state(opt):
    """:func:`load_resume_state` for ``basicsr.train``, after checking the backbone weight files: it is the
    first thing the training pipeline does with the options, before the experiment folder or a resume. The data
    folders the options name are checked first (a missing one is named with the step that makes it)."""
    from d2csr.data.eval_check import check_data_roots
    from d2csr.utils.pretrained_weights import check_pretrained_weights

    check_data_roots(opt)
    check_pretrained_weights(opt)
    return load_resume_state(opt)


# --- the explicit training patches ------------------------------------------------------------------------
# (module, attribute, replacement name in this module): what apply_training_patches() installs.
_PATCHES = (
    ('basicsr.utils.dist_util', 'init_dist', 'init_dist'),
    ('basicsr.utils.options', 'init_dist', 'init_dist'),  # parse_options imported the name
    ('basicsr.train', 'load_resume_state', 'checked_load_resume_state'),
    ('basicsr.train', 'EnlargedSampler', 'ResumableEnlargedSampler'),
    ('basicsr.train', 'create_train_val_dataloader', 'create_train_val_dataloader'),
    ('basicsr.test', 'make_exp_dirs', 'make_exp_dirs'),
)
TRAINING_PATCHES = ('gloo init_dist without GPUs and launch checks', 'exact resume (load_resume_state)',
                    'resumable sampler and data checks (create_train_val_dataloader)',
                    'backbone weight checks before make_exp_dirs / load_resume_state')
_applied = False


def training_patches_applied():
    """Whether :func:`apply_training_patches` has run in this process."""
    return _applied


def apply_training_patches(verbose=True):
    """Apply d2csr's training-time changes to BasicSR, once per process (a second call does nothing).

    ``import d2csr`` only installs the torchvision shim and registers d2csr's classes; BasicSR's own
    functions stay untouched until this call, which ``d2csr/train.py``, ``d2csr/test.py`` and BasicSR's
    entry points run through ``d2csr_basicsr_hook`` make. It replaces BasicSR's ``init_dist`` (gloo without
    GPUs, world-size checks), ``basicsr.train.load_resume_state`` (device-agnostic, exact resume, weight
    checks), ``basicsr.train.EnlargedSampler`` / ``create_train_val_dataloader`` (resumable data position,
    data checks) and ``basicsr.test.make_exp_dirs`` (weight checks). With ``verbose`` the main process
    says so on stdout; the training log says so when the data loaders are built.
    """
    global _applied
    if _applied:
        return
    import importlib

    for module_name, attribute, replacement in _PATCHES:
        setattr(importlib.import_module(module_name), attribute, globals()[replacement])
    _applied = True
    if verbose and os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0')) == '0':
        print(f'd2csr: BasicSR training patches active ({", ".join(TRAINING_PATCHES)}).', flush=True)


# --------------------------------------------------------------------------------------------------
# BasicSR's own entry points (see d2csr_basicsr_hook)
def basicsr_root_path(script=None):
    """BasicSR's ``root_path`` for its entry points: the folder above the ``basicsr`` package (a source
    checkout, as BasicSR computes it), or the current directory when that folder is site-packages (an
    installed basicsr: ``experiments/`` and ``results/`` then land where the command runs, as with
    ``d2csr/train.py``)."""
    import basicsr

    origin = script or basicsr.__file__
    root = os.path.abspath(os.path.join(os.path.dirname(origin), os.pardir))
    if os.path.basename(root) in ('site-packages', 'dist-packages'):
        return os.getcwd()
    return root


def run_basicsr_entry_point(kind, script=None):
    """Run BasicSR's ``train_pipeline`` / ``test_pipeline`` (``kind``: ``'train'`` / ``'test'``) as BasicSR's
    ``train.py`` / ``test.py`` would, with d2csr registered and its shims in place, then exit.

    ``script``: the ``basicsr/<kind>.py`` file run as a script (its checkout gives the root path), ``None``
    for ``python -m basicsr.<kind>``. BasicSR's flags (``-opt``, ``--launcher``, ``--auto_resume``,
    ``--debug``, ``--force_yml``) are read by BasicSR itself.
    """
    import basicsr.test
    import basicsr.train
    from d2csr.utils.misc import check_options_file, print_entry_help

    if kind not in ('train', 'test'):
        raise ValueError(f'run_basicsr_entry_point: kind must be train or test, got {kind!r}')
    if script is None:  # python -m: runpy puts '-m' in sys.argv[0] until it runs the module itself
        sys.argv[0] = os.path.join(os.path.dirname(basicsr.train.__file__), f'{kind}.py')
    print_entry_help(kind)
    check_options_file()
    apply_training_patches()
    root = basicsr_root_path(script)
    if kind == 'train':
        basicsr.train.train_pipeline(root)
    else:
        basicsr.test.test_pipeline(root)
    sys.exit(0)
