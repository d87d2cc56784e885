"""d2csr's changes to BasicSR 1.4.2's training and test pipeline, for D2C runs only.

A *D2C run* is a run whose options name d2csr's classes (``model_type: D2CModel``, ``type: D2CSR``, ...:
:func:`d2csr.utils.registry.d2csr_names_in`), and every run of ``d2csr/train.py`` / ``d2csr/test.py``. Nothing
here runs on ``import d2csr``. A :class:`D2CRun` installs the changes into the globals of the module whose
``train_pipeline`` / ``test_pipeline`` runs: ``basicsr.train`` / ``basicsr.test`` for d2csr's entry points
(:func:`run_entry_point`), ``__main__`` for BasicSR's own ``train.py`` / ``test.py`` (:func:`watch_basicsr_entry_point`,
called by ``d2csr_basicsr_hook``, changes nothing for a run that does not use D2C). The changes:

1. BasicSR's ``init_dist`` (in ``basicsr.utils.dist_util`` and where ``parse_options`` imported it): the same on
   GPU, but without a GPU it uses the gloo backend and does not call ``torch.cuda.set_device``, so
   ``--launcher pytorch`` / ``slurm`` train on CPU machines; a launch whose world size cannot work (not started
   by torchrun, ``RANK >= WORLD_SIZE``, more processes per node than GPUs) stops with a message that names it;
2. ``load_resume_state`` (BasicSR's calls ``torch.cuda.current_device()`` and so fails without a GPU) is
   replaced by a device-agnostic version that loads with ``weights_only=True``, picks the newest *complete*
   state with ``--auto_resume`` (and says which), and refuses a state of another network shape before anything
   is written (:mod:`d2csr.utils.checkpoint`);
3. the training data position is resumable: ``EnlargedSampler`` becomes :class:`ResumableEnlargedSampler` and
   the script's own ``create_train_val_dataloader`` is wrapped so that, on resume, the sampler skips the
   batches of the current epoch that were already trained on and restores the saved RNG states when the first
   new batch is drawn (BasicSR restarts the epoch from its first batch). It also checks every data set before
   the first batch (:func:`d2csr.data.eval_check.check_eval_dataset`; LMDBs: keys, ``data.mdb``, sizes, and
   before BasicSR builds on them :func:`~d2csr.data.eval_check.check_lmdb_roots`), refuses a world size / batch
   size with no batch per epoch, sorts the file lists BasicSR made with ``os.scandir``
   (:func:`sort_scanned_paths`: the same order on every node) and sets the number of epochs from the loader's
   real epoch length, so that a run does exactly ``total_iter`` iterations (:func:`exact_last_epoch`);
4. before the experiment / results folder is made (the first thing after the options are parsed): the backbone
   weight files the options need (perceptual loss, LPIPS; :func:`d2csr.utils.pretrained_weights.check_pretrained_weights`),
   the data folders (:func:`d2csr.data.eval_check.check_data_roots`, naming the step that makes each), the
   D2CModel options (:func:`d2csr.options_check.validate_options`) are checked, and the run
   locks its name (:mod:`d2csr.utils.run_lock`): a second run of the same name refuses at start, naming the
   running one, instead of BasicSR renaming the running one's folder to ``*_archived_*``.

d2csr's entry points also read the options file with d2csr's safe loader (:mod:`d2csr.utils.yaml_io`), choose
the CPU thread count, and end a distributed run with a barrier and ``destroy_process_group()``.
"""
import atexit
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
from d2csr.utils.errors import ResumeError, UserError, user_error_message  # noqa: E402

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


def create_train_val_dataloader(opt, logger, basicsr_create=_basicsr_create_train_val_dataloader):
    """BasicSR's ``create_train_val_dataloader`` (or a script's own, ``basicsr_create``) with d2csr's checks and
    fixes (see the module doc): LMDB roots checked before BasicSR builds on them, every data set checked before
    the first batch, file order independent of the file system, exactly ``total_iter`` iterations, then the
    resume of the data position."""
    for dataset_opt in opt['datasets'].values():
        check_lmdb_roots(dataset_opt)
    result = list(basicsr_create(opt, logger))
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


# --------------------------------------------------------------------------------------------------
# checks before the experiment / results folder is made, and the run lock
class RunRefused(UserError, ValueError):
    """A D2C run refused before anything was written (missing data or weights, wrong options, name in use);
    the message says what to fix. d2csr's entry points print it without a traceback."""


def check_before_folders(opt):
    """What a D2C run checks before BasicSR writes anything: the backbone weight files (perceptual loss, LPIPS),
    the data paths and, for a D2CModel, its options (:func:`d2csr.options_check.validate_options`). Raises
    :class:`RunRefused`."""
    from d2csr.data.eval_check import check_data_roots
    from d2csr.options_check import validate_options
    from d2csr.utils.pretrained_weights import MissingWeightsError, check_pretrained_weights
    from d2csr.utils.registry import MODEL_REGISTRY

    try:
        check_pretrained_weights(opt)
    except MissingWeightsError as err:
        raise RunRefused(str(err)) from None
    check_data_roots(opt)  # raises DataError (a UserError) naming each missing folder and the step that makes it
    if MODEL_REGISTRY.resolves_to_d2csr(opt.get('model_type')):  # d2csr's D2CModel (not a user's of that name)
        try:
            validate_options(opt)
        except ValueError as err:
            raise RunRefused(str(err)) from None


def lock_run(opt):
    """Lock the run's name (``experiments/<name>`` or ``results/<name>``) for this process and its ranks.

    Rank 0 locks ``<experiments or results>/.<name>.lock`` (next to the folder; BasicSR renames the folder, never
    the lock file) and tells the other ranks, so the ranks of one run share its one lock and all of them stop
    when the name is in use. Raises :class:`RunRefused` naming the running process and what to do.
    """
    from d2csr.utils import run_lock

    folder = opt['path']['experiments_root'] if opt.get('is_train') else opt['path']['results_root']
    lock_path = osp.join(osp.dirname(folder), f'.{osp.basename(folder)}.lock')
    error = None
    if opt.get('rank', 0) == 0:
        try:
            run_lock.acquire(lock_path, f'{osp.basename(osp.dirname(folder))}/{opt["name"]}')
        except run_lock.RunInUseError as err:
            error = run_refused_message(opt, folder, err.holder)
    if opt.get('dist') and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise RunRefused(error)
    return lock_path


def run_refused_message(opt, folder, holder):
    from d2csr.utils.run_lock import describe

    name = opt['name']
    kind = 'training' if opt.get('is_train') else 'test'
    pid = holder.get('pid', '<pid>')
    resume = ' and resume it later with --auto_resume' if opt.get('is_train') else ''
    return (f'{folder} is in use by a running {kind} of the same name: {describe(holder)}. This run stopped before '
            f'writing anything; the running one is untouched. Wait for it to finish, or stop it (kill {pid} on its '
            f'host){resume}, or give this run another name (name: in the options file, or --force_yml '
            f'name={name}_2).')


# --------------------------------------------------------------------------------------------------
# one D2C run: d2csr's changes, installed into the globals of the module whose pipeline runs
def usable_root(root_path):
    """BasicSR's ``root_path`` for a D2C run: as given (a BasicSR checkout, or the current folder for d2csr's
    entry points), but the current folder where BasicSR's scripts would use site-packages (an installed basicsr:
    ``experiments/`` and ``results/`` then land where the command runs, as with ``d2csr/train.py``)."""
    if osp.basename(osp.abspath(root_path)) in ('site-packages', 'dist-packages'):
        return os.getcwd()
    return root_path


def _wrapping(original, replacement):
    """``replacement(original, *args)`` as a function that remembers ``original`` (a second install wraps the
    original, not the wrapper)."""
    original = getattr(original, '__d2csr_wraps__', original)

    def wrapper(*args, **kwargs):
        return replacement(original, *args, **kwargs)

    wrapper.__d2csr_wraps__ = original
    wrapper.__name__ = wrapper.__qualname__ = getattr(original, '__name__', 'wrapper')
    wrapper.__doc__ = f'{replacement.__doc__}\n\nWraps {getattr(original, "__module__", "?")}.{wrapper.__name__}.'
    return wrapper


class D2CRun:
    """d2csr's changes for one D2C run of BasicSR's train (``kind='train'``) or test pipeline.

    ``names``: the d2csr names its options use (for the log). :meth:`install` puts the changes into
    ``namespace``, the globals of the module whose ``train_pipeline`` / ``test_pipeline`` runs; BasicSR's
    functions elsewhere stay as they are (``init_dist`` aside, which ``parse_options`` looks up in its module).
    """

    def __init__(self, kind, names=()):
        if kind not in ('train', 'test'):
            raise ValueError(f'kind must be train or test, got {kind!r}')
        self.kind, self.names = kind, list(names)
        self.notes = []  # plain-words lines for the log (printed at start too)

    def install(self, namespace):
        from d2csr.utils.registry import report_shadowing

        basicsr.utils.dist_util.init_dist = init_dist
        basicsr.utils.options.init_dist = init_dist  # parse_options imported the name
        if self.kind == 'train':
            changes = {'load_resume_state': self.load_resume_state, 'EnlargedSampler': ResumableEnlargedSampler,
                       'create_train_val_dataloader': self.create_train_val_dataloader}
        else:
            changes = {'make_exp_dirs': self.make_exp_dirs}
        for name, change in changes.items():
            if name in namespace:  # an edited script may lack one: the rest still applies
                namespace[name] = change if isinstance(change, type) else _wrapping(namespace[name], change)
        report_shadowing(True)
        return self

    def describe_changes(self):
        used = f' (its options name d2csr\'s {", ".join(self.names)})' if self.names else ''
        if self.kind == 'train':
            return (f'd2csr: D2C run{used}. d2csr checked the weight files, data paths and options and locked the '
                    'experiment name before BasicSR made its folders, and changes for this run: distributed launch '
                    'on CPU with gloo (init_dist), resume of the newest complete state on any device with the data '
                    'position and random state (load_resume_state, EnlargedSampler), data checks before the first '
                    'batch (create_train_val_dataloader).')
        return (f'd2csr: D2C run{used}. d2csr checked the weight files, data paths and options and locked the '
                'results name before BasicSR made its folders; distributed launch on CPU uses gloo (init_dist).')

    def before_folders(self, opt):
        check_before_folders(opt)
        lock_run(opt)
        if opt.get('rank', 0) == 0:
            for line in [self.describe_changes()] + self.notes:
                print(line, flush=True)

    def load_resume_state(self, basicsr_load_resume_state, opt):
        """d2csr's checks and lock before the experiment folder, then d2csr's :func:`load_resume_state` (BasicSR's
        is not called: it needs a GPU)."""
        opt['root_path'] = usable_root(opt.get('root_path', os.getcwd()))  # tb_logger/ (train_pipeline set it)
        self.before_folders(opt)
        return load_resume_state(opt)

    def create_train_val_dataloader(self, basicsr_create, opt, logger):
        """The script's ``create_train_val_dataloader``, then d2csr's data checks and resumed data position."""
        for line in [self.describe_changes()] + self.notes:
            logger.info(line)
        return create_train_val_dataloader(opt, logger, basicsr_create)

    def make_exp_dirs(self, basicsr_make_exp_dirs, opt):
        """d2csr's checks and lock, then the script's ``make_exp_dirs``."""
        self.before_folders(opt)
        basicsr_make_exp_dirs(opt)


def apply_training_patches():
    """Install d2csr's changes into ``basicsr.train`` and ``basicsr.test`` (their ``train_pipeline`` /
    ``test_pipeline`` then run as in ``d2csr/train.py`` / ``test.py``); what the in-process tests use. Once per
    process: a second call changes nothing."""
    global _applied
    if not _applied:
        D2CRun('train').install(vars(basicsr.train))
        D2CRun('test').install(vars(basicsr.test))
        _applied = True


_applied = False


def training_patches_applied():
    """Whether :func:`apply_training_patches` has run in this process."""
    return _applied


# --------------------------------------------------------------------------------------------------
# BasicSR's own train.py / test.py (see d2csr_basicsr_hook)
def _basicsr_parse_options():
    return getattr(basicsr.utils.options.parse_options, '__d2csr_wraps__', basicsr.utils.options.parse_options)


def d2c_names_of(options_path):
    """The d2csr names the options file ``options_path`` uses, read with d2csr's safe loader; ``[]`` when it
    names none or cannot be read safely (then the run is BasicSR's own)."""
    from d2csr.utils.registry import d2csr_names_in
    from d2csr.utils.yaml_io import OptionsFileError, load_options

    if not options_path:
        return []
    try:
        return d2csr_names_in(load_options(options_path))
    except OptionsFileError:
        return []


def watch_basicsr_entry_point():
    """In a program that is BasicSR's own ``train.py`` / ``test.py`` (called by ``d2csr_basicsr_hook`` while the
    script imports basicsr, before it binds ``parse_options``): ``basicsr.utils.options.parse_options`` becomes a
    wrapper that reads the ``-opt`` file with d2csr's safe loader and

    - when it names no d2csr class: calls BasicSR's ``parse_options`` and changes nothing (the run is BasicSR's
      own: its loader, checks, validation, outputs and ``-h``);
    - when it does (a D2C run): installs a :class:`D2CRun` into the caller's globals (the script's
      ``load_resume_state``, ``create_train_val_dataloader``, ...; an edited fork's ``create_train_val_dataloader`` /
      ``make_exp_dirs`` are wrapped, not discarded) and calls BasicSR's ``parse_options``, which loads the file
      with BasicSR's own loader.
    """
    from d2csr_basicsr_hook import options_file_argument

    original = _basicsr_parse_options()

    def parse_options(root_path, is_train=True):
        names = d2c_names_of(options_file_argument(sys.argv[1:]))
        if names:
            D2CRun('train' if is_train else 'test', names).install(sys._getframe(1).f_globals)
            root_path = usable_root(root_path)
        return original(root_path, is_train)

    parse_options.__d2csr_wraps__ = original
    parse_options.__doc__ = original.__doc__
    basicsr.utils.options.parse_options = parse_options


# --------------------------------------------------------------------------------------------------
# d2csr's entry points: d2csr/train.py, d2csr/test.py
def choose_cpu_threads(opt):
    """On the CPU with ``OMP_NUM_THREADS`` unset: use the CPUs that are free (:func:`d2csr.utils.compute_threads`),
    shared by the processes of this node; returns the line that says so (``None`` when nothing was chosen)."""
    from d2csr.utils import compute_threads

    if os.environ.get('OMP_NUM_THREADS') or (opt.get('num_gpu') != 0 and torch.cuda.is_available()):
        return None
    local = int(os.environ.get('LOCAL_WORLD_SIZE') or opt.get('world_size') or 1)
    threads = max(1, compute_threads() // max(local, 1))
    torch.set_num_threads(threads)
    return (f'd2csr: {threads} CPU thread(s) per process (the CPUs free now{f", over {local} processes" if local > 1 else ""}; '
            'set OMP_NUM_THREADS to choose).')


def run_entry_point(kind, args, root=None):
    """``d2csr/<kind>.py`` once its arguments ``args`` (BasicSR's flags) are parsed: reads the options file with
    d2csr's safe loader, checks it, and runs BasicSR's ``train_pipeline`` / ``test_pipeline`` with a
    :class:`D2CRun` installed (experiments/ and results/ under ``root``, default the current folder). Returns the
    exit status; a refused start prints its message (no traceback) and returns 1. A distributed run ends with a
    barrier, so no rank exits while another still validates, and ``destroy_process_group()`` at exit (re-creating
    the group in the same process, for a script that runs this file twice, is not reliable with torchrun's store).
    """
    from d2csr.utils.registry import d2csr_names_in
    from d2csr.utils.yaml_io import OptionsFileError, SafeOptionsLoader, load_options

    module = basicsr.train if kind == 'train' else basicsr.test
    root = os.getcwd() if root is None else root
    from d2csr.options_check import check_entry_options

    try:
        load_options(args.opt)  # a missing file, or one that is not data: its own message
    except OptionsFileError as err:
        return _refuse(err)
    opt = check_entry_options(is_train=kind == 'train')  # the schema, --force_yml: every problem listed, or exit
    run = D2CRun(kind, d2csr_names_in(opt)).install(vars(module))
    basicsr_parse = _basicsr_parse_options()

    def parse_options(root_path, is_train=True):
        """BasicSR's ``parse_options`` (flags, ``--force_yml``, paths), reading the file with d2csr's safe loader."""
        saved = basicsr.utils.options.ordered_yaml
        basicsr.utils.options.ordered_yaml = lambda: (SafeOptionsLoader, None)
        try:
            parsed = basicsr_parse(root_path, is_train)
        finally:
            basicsr.utils.options.ordered_yaml = saved
        note = choose_cpu_threads(parsed[0])
        if note:
            run.notes.append(note)
        return parsed

    module.parse_options = parse_options
    finished = False
    try:
        (module.train_pipeline if kind == 'train' else module.test_pipeline)(root)
        finished = True
    except UserError as err:
        return _refuse(err)
    finally:
        from d2csr.utils import run_lock

        run_lock.release()
        if dist.is_available() and dist.is_initialized():
            if finished:
                dist.barrier()  # every rank has finished (rank 0 validates last) before any process goes on
            atexit.unregister(_destroy_process_group)
            atexit.register(_destroy_process_group)  # at exit: a script may run this file again (same group)
    return 0


def _destroy_process_group():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _refuse(err):
    print(user_error_message(err), file=sys.stderr, flush=True)
    return 1
