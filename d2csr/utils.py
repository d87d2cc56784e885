"""Small helpers shared by the entry points."""
import os.path as osp
import sys


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
