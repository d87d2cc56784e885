"""Small helpers shared by the entry points."""
import os
import os.path as osp
import sys
from collections import namedtuple


def check_options_file(argv=None):
    """Exit with a clear message when ``-opt`` names a file that does not exist.

    BasicSR's own parser does the real parsing afterwards; this only turns a bare ``FileNotFoundError``
    deep in BasicSR into a message that names the path.
    """
    argv = sys.argv[1:] if argv is None else argv
    for i, arg in enumerate(argv):
        if arg == '-opt' and i + 1 < len(argv):
            path = argv[i + 1]
            if not osp.isfile(path):
                sys.exit(f'error: options file {path!r} does not exist (-opt expects a YAML file such as '
                         'options/train_D2C_div_x4.yml).')


def resolve_device(name):
    """``'auto'`` -> the GPU when there is one, else the CPU; other names as given. Exits with a clear
    message when a GPU is asked for and none is available."""
    import torch

    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        sys.exit(f'error: --device {name} asks for a GPU, but none is available (use --device cpu)')
    return device


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

    device = resolve_device(name)
    if device.type == 'cpu':
        threads = torch.get_num_threads()
        return SubprocessDevice(device, 0, {'CUDA_VISIBLE_DEVICES': ''},
                                f'cpu ({_cpu_name()}, {threads} thread{"s" if threads != 1 else ""})')
    if device.type != 'cuda':
        sys.exit(f'error: --device {name}: only auto, cpu, cuda and cuda:N are supported')
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
