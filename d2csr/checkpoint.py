"""Crash-safe checkpoints and exact resume: atomic writes, RNG states, choosing and checking a resume state.

A training run writes, at every ``save_checkpoint_freq`` iterations, ``models/net_g_<iter>.pth`` and then
``training_states/<iter>.state``. Both go through :func:`atomic_save`: the bytes are written to a temporary
file in the same folder (``<name>.tmp<pid>``), flushed and fsynced, and only then renamed over the final
name (``os.replace`` is atomic on POSIX and Windows), after which the folder itself is fsynced. A process
killed at any moment therefore leaves either the complete old file, the complete new one, or a stray
``*.tmp<pid>`` that nothing reads (resume deletes it).

:func:`find_resume_state` picks the newest *complete* pair (a readable ``<iter>.state`` and a readable
``net_g_<iter>.pth``) and says why it passed over newer ones; :func:`check_network_matches` refuses a state
written by another network shape before anything is written.

Test hook: the environment variable ``D2CSR_TEST_SLOW_SAVE=<seconds>`` makes :func:`atomic_save` write half of
each file, fsync, sleep that long, then write the rest, so that a test can kill a process while a save is
in flight. Unset (the default), saving is a plain ``torch.save`` into the temporary file.
"""
import contextlib
import io
import os
import os.path as osp
import random
import re
import time
from copy import deepcopy

import numpy as np
import torch

SLOW_SAVE_ENV = 'D2CSR_TEST_SLOW_SAVE'
_TMP_PATTERN = re.compile(r'\.tmp\d+$')


# --------------------------------------------------------------------------------------------------
# atomic writes
def _fsync_dir(directory):
    if os.name == 'nt':  # directories cannot be opened for fsync on Windows; the rename is durable there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj, path):
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``.

    Writes ``<path>.tmp<pid>`` in the same folder, fsyncs it, renames it to ``path`` and fsyncs the folder.
    On any error (or interruption) the temporary file is removed and ``path`` keeps its previous content.
    """
    path = os.fspath(path)
    tmp = f'{path}.tmp{os.getpid()}'
    pause = float(os.environ.get(SLOW_SAVE_ENV) or 0)
    try:
        with open(tmp, 'wb') as f:
            if pause > 0:  # test hook (see the module docstring): a save that is half-written for a while
                buffer = io.BytesIO()
                torch.save(obj, buffer)
                data = buffer.getbuffer()
                f.write(data[:len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                time.sleep(pause)
                f.write(data[len(data) // 2:])
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(osp.dirname(osp.abspath(path)))


def _is_disk_full(error):
    """ENOSPC as ``OSError`` (plain writes), or as torch's ``RuntimeError`` from its zip writer
    (``[enforce fail at inline_container.cc] . unexpected pos ...`` / ``file write failed``)."""
    import errno

    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(error)
    return isinstance(error, RuntimeError) and ('unexpected pos' in text or 'file write failed' in text)


def save_with_retry(obj, path, logger, retries=3):
    """:func:`atomic_save` with BasicSR's retry-on-error policy.

    BasicSR retries a failed save three times and then carries on training; so does this (the previous
    complete checkpoint stays in place and the next save tries again). A full disk (``OSError`` ENOSPC, or
    torch's ``RuntimeError: ... unexpected pos`` form of it) is handled the same way and logged as
    "disk full". Returns whether it was saved.
    """
    full = False
    for attempt in range(retries):
        try:
            atomic_save(obj, path)
            return True
        except (OSError, RuntimeError) as error:
            if isinstance(error, RuntimeError) and not _is_disk_full(error):
                raise
            full = _is_disk_full(error)
            what = 'disk full' if full else str(error).splitlines()[0]
            logger.warning(f'Saving {path} failed ({what}); {retries - attempt - 1} retries left.')
            time.sleep(1)
    hint = (f' The disk holding {osp.dirname(osp.abspath(path))} is full: free some space (e.g. delete old '
            'net_g_<iter>.pth / <iter>.state files); the next save tries again.') if full else ''
    logger.error(f'Could not save {path}{" (disk full)" if full else ""}; training continues, the previous '
                 f'checkpoint is kept.{hint}')
    return False


def remove_stale_temporaries(*directories):
    """Delete ``*.tmp<pid>`` files that killed saves left behind; returns their paths."""
    removed = []
    for directory in directories:
        if not osp.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            if _TMP_PATTERN.search(name):
                with contextlib.suppress(OSError):
                    os.remove(osp.join(directory, name))
                    removed.append(osp.join(directory, name))
    return removed


# --------------------------------------------------------------------------------------------------
# random number generator states (python, numpy, torch, CUDA), in a form torch.load(weights_only=True) reads
def capture_rng_state():
    """The process's global RNG states as a dict of tensors, ints and lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        'python': [version, list(internal), gauss],
        'numpy': [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state):
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if state.get('cuda') is not None and torch.cuda.is_available():
        for device, cuda_state in enumerate(state['cuda'][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


# --------------------------------------------------------------------------------------------------
# choosing and checking a resume state
def state_network_path(models_dir, resume_iter, label='net_g'):
    return osp.join(models_dir, f'{label}_{resume_iter}.pth')


def load_lazily(path):
    """``torch.load`` on the CPU with ``weights_only``, mapping the tensor data instead of reading it.

    Files in the pre-1.6 (non-zip) format cannot be mapped and are read whole.
    """
    try:
        return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except RuntimeError as error:
        if 'zipfile' not in str(error):
            raise
        return torch.load(path, map_location='cpu', weights_only=True)


def _unreadable(path):
    """``None`` when ``path`` is a complete torch file, else why not (missing, truncated, ...)."""
    if not osp.isfile(path):
        return 'missing'
    try:  # reads the archive's index and pickle, not the tensor data
        load_lazily(path)
    except Exception as error:  # a truncated zip, a bad pickle, ...
        return f'unreadable ({type(error).__name__}: {str(error).splitlines()[0][:120]})'
    return None


def find_resume_state(states_dir, models_dir, label='net_g'):
    """Newest complete training state in ``states_dir``.

    Complete means ``<iter>.state`` and ``<models_dir>/<label>_<iter>.pth`` both exist and load. Returns
    ``(state_path or None, skipped)`` where ``skipped`` lists ``(path, reason)`` for newer, incomplete ones.
    Raises ``RuntimeError`` when there are states but none is complete.
    """
    if not osp.isdir(states_dir):
        return None, []
    iters = sorted((int(name[:-len('.state')]) for name in os.listdir(states_dir)
                    if name.endswith('.state') and name[:-len('.state')].isdigit()), reverse=True)
    skipped = []
    for it in iters:
        state_path = osp.join(states_dir, f'{it}.state')
        reason = _unreadable(state_path)
        if reason is None:
            net_path = state_network_path(models_dir, it, label)
            net_reason = _unreadable(net_path)
            if net_reason is None:
                return state_path, skipped
            reason = f'its network {net_path} is {net_reason}'
        else:
            reason = f'it is {reason}'
        skipped.append((state_path, reason))
    if skipped:
        details = '; '.join(f'{p}: {r}' for p, r in skipped)
        raise RuntimeError(f'--auto_resume: no complete training state in {states_dir} ({details}). Point '
                           'path:resume_state at a good one, or move the folder away to start from scratch.')
    return None, []


def _network_shapes(network_opt):
    """``{key: shape}`` of the state dict of ``network_opt``'s network, built without allocating it."""
    from basicsr.utils.registry import ARCH_REGISTRY

    kwargs = deepcopy(dict(network_opt))
    arch = ARCH_REGISTRY.get(kwargs.pop('type'))
    try:
        with torch.device('meta'):
            net = arch(**kwargs)
    except Exception:  # an architecture that cannot be built on the meta device
        net = arch(**kwargs)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def check_network_matches(network_opt, net_path, state_path, strict=True, saved_network_opt=None):
    """Raise ``ValueError`` when the weights in ``net_path`` do not fit ``network_opt``'s network.

    Called before resuming, before anything is written. Shape differences are always refused; missing or
    unexpected keys only with ``strict`` (``path: strict_load_g``).
    """
    expected = _network_shapes(network_opt)
    saved = load_lazily(net_path)
    if isinstance(saved, dict) and isinstance(saved.get('params'), dict):
        saved = saved['params']
    found = {(k[len('module.'):] if k.startswith('module.') else k): tuple(v.shape) for k, v in saved.items()}
    shape = [k for k in expected if k in found and expected[k] != found[k]]
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if not shape and not (strict and (missing or unexpected)):
        return
    problems = []
    if shape:
        k = shape[0]
        problems.append(f'{len(shape)} tensors differ in shape (e.g. {k}: {found[k]} saved, {expected[k]} now)')
    if strict and missing:
        problems.append(f'{len(missing)} are missing (e.g. {missing[0]})')
    if strict and unexpected:
        problems.append(f'{len(unexpected)} are unexpected (e.g. {unexpected[0]})')
    if saved_network_opt:
        now = dict(network_opt)
        diff = [f'{k}: {saved_network_opt.get(k)!r} saved, {now.get(k)!r} now'
                for k in sorted(set(saved_network_opt) | set(now)) if saved_network_opt.get(k) != now.get(k)]
        if diff:
            problems.append('network_g options differ: ' + '; '.join(diff))
    raise ValueError(f'refusing to resume from {state_path}: it was trained with a different network than '
                     f'network_g in this options file ({", ".join(problems)}; weights {net_path}). Resume with '
                     'the options of that run (a copy is in its experiments/<name>/ folder), or give this run '
                     'another name to start a new experiment. Nothing was written.')
