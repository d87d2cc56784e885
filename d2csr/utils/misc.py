"""Small helpers shared by the entry points."""
import math
import os
import sys
from collections import namedtuple


def resolve_device(device):
    """``'auto'`` (the GPU when there is one), ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or a ``torch.device`` -> the
    ``torch.device``; ``ValueError`` naming it for anything else or for a GPU that is not there."""
    import torch

    if isinstance(device, torch.device):
        resolved = device
    elif device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f'device {device!r} is not a device; use auto, cpu, cuda or cuda:N') from None
    if resolved.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {device} asks for a GPU, but none is available (use cpu)')
    if resolved.type not in ('cpu', 'cuda'):
        raise ValueError(f'device {device!r}: only cpu and cuda devices are supported')
    return resolved


def device_from_flag(name):
    """:func:`resolve_device` of a script's ``--device``: a name that does not work ends the script with the
    message (``error: --device ...``)."""
    try:
        return resolve_device(name)
    except ValueError as err:
        sys.exit(f'error: --{err}')


def set_tf32(enabled):
    """TF32 (``True``) or full fp32 (``False``) for CUDA convolutions (cuDNN) and matmuls.

    PyTorch's default runs fp32 convolutions on a GPU in TF32 (10-bit mantissa): the authors' outputs are then
    reproduced to about 3e-3 relative instead of about 1e-6 (measured on an H200 with the official
    fixtures). No effect on the CPU. Returns the previous ``(cudnn, matmul)`` settings.
    """
    import torch

    if not isinstance(enabled, bool):
        raise ValueError(f'tf32 must be true or false, got {enabled!r}')
    previous = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    return previous


def available_cpus():
    """CPUs this process may run on: its affinity mask (``os.sched_getaffinity``), capped by a cgroup v2 CPU
    quota (``/sys/fs/cgroup/cpu.max``, containers); ``os.cpu_count()`` where neither exists."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        with open('/sys/fs/cgroup/cpu.max') as f:
            quota, period = f.read().split()[:2]
        if quota != 'max':
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(cpus, 1)


def compute_threads(cpus=None, load=None):
    """Intra-op threads for a CPU run: the CPUs that are free now, at least 1.

    ``cpus`` defaults to :func:`available_cpus`, ``load`` to the 1-minute load average (other programs'
    runnable threads). On a busy machine fewer threads are faster: each OpenMP thread of an op waits at a
    barrier for the slowest one, and a thread that is not scheduled holds up all the others.
    """
    cpus = available_cpus() if cpus is None else cpus
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cpus, int(cpus - load + 0.5)))


def thread_env(threads, env=None):
    """``env`` (default ``os.environ``) with OpenMP / MKL / OpenBLAS limited to ``threads`` threads, for a
    child process (``torch.set_num_threads`` does not reach it)."""
    env = dict(os.environ if env is None else env)
    for key in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
        env[key] = str(threads)
    return env


def pythonpath_env(path, env=None):
    """``env`` (default ``os.environ``) with ``path`` first on ``PYTHONPATH``, for a child process that must
    import this checkout's ``d2csr``. No empty entry is left (an empty item means the child's current folder)."""
    env = dict(os.environ if env is None else env)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(path), env.get('PYTHONPATH', '')) if p)
    return env


SubprocessDevice = namedtuple('SubprocessDevice', ['device', 'num_gpu', 'env', 'description'])


def subprocess_device(name='auto'):
    """Where the ``d2csr/train.py`` / ``test.py`` subprocesses of a script (demo, evidence) run.

    ``name``: ``'auto'`` (the first GPU when there is one, else the CPU), ``'cpu'``, ``'cuda'`` (GPU 0) or
    ``'cuda:N'``. Returns ``device`` (for work in this process), ``num_gpu`` (for the option dicts: 1 or 0),
    ``env`` (environment variables for the subprocesses: ``CUDA_VISIBLE_DEVICES`` names the one GPU, or
    none on the CPU, so a CPU run never touches a GPU) and ``description`` (e.g. ``'cuda:0 (NVIDIA H100)'``).
    Exits with a message naming the device when it does not exist.
    """
    import torch

    device = device_from_flag(name)
    if device.type == 'cpu':
        threads = torch.get_num_threads()
        return SubprocessDevice(device, 0, {'CUDA_VISIBLE_DEVICES': ''},
                                f'cpu ({_cpu_name()}, {threads} thread{"s" if threads != 1 else ""})')
    index = device.index if device.index is not None else 0
    count = torch.cuda.device_count()
    if index >= count:
        sys.exit(f'error: --device {name}: there {"is" if count == 1 else "are"} only {count} GPU(s) '
                 f'(cuda:0 to cuda:{count - 1})')
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    physical = visible.split(',')[index].strip() if visible else str(index)
    return SubprocessDevice(torch.device('cuda', index), 1, {'CUDA_VISIBLE_DEVICES': physical},
                            f'cuda:{index} ({torch.cuda.get_device_name(index)})')


def _cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or 'unknown CPU'
