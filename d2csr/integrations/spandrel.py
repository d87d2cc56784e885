"""D2C-SR in spandrel, the model loader of ComfyUI and chaiNNer: ``install()`` and D2C checkpoints load there.

    import spandrel
    import d2csr.integrations.spandrel

    d2csr.integrations.spandrel.install()          # once, before models are loaded
    model = spandrel.ModelLoader().load_from_file('net_g_latest.pth')
    sr = model(image)                                # (1, 3, h, w) RGB in [0, 1] -> (1, 3, s*h, s*w)

:func:`install` adds the ``D2CSR`` architecture to spandrel's ``MAIN_REGISTRY`` (or a registry passed in) with
spandrel's own ``Architecture`` / ``ArchSupport`` / ``ArchRegistry.add`` API, as ``spandrel_extra_arches.install()``
does. spandrel sees only the state dict (it unwraps BasicSR's ``params_ema`` / ``params``, EMA first, and drops
a ``module.`` prefix), so the detection works on the weights alone (:func:`detect`): every name lies in D2CSR's
own modules (``head``, ``nodes``, ``tails``, ``fusion``, ...), a namespace no other architecture uses, so it
claims nothing else; it is placed before the architectures already registered, so that no looser detector
takes a D2C checkpoint first. Loading reads every structural option off the weights
(:func:`d2csr.archs.infer_options.infer_network_options`: scale, backbone and its options, tree depth and width,
features, upsampler, learnable mean shift, deep residual); the options that leave no trace take D2CSR's
defaults (:data:`~d2csr.archs.infer_options.NO_TRACE_OPTIONS`), and a ``bicubic_input`` network (D2C-VDSR), whose
scale is not in its weights, is refused with that reason.

The descriptor: purpose ``'SR'``, the inferred scale and channels, fp16 and bf16 supported (measured with
``benchmarks/spandrel_dtypes.py`` on a photograph: every backbone's output stays finite, max |diff| to fp32
<= 7.1e-4 in fp16 and <= 5.2e-3 in bf16), no size requirement (any ``h, w >= 1``), tiling supported (the
convs see a finite neighbourhood; with the ``rcan`` and ``imdn`` backbones the channel attention sees the tile,
not the whole image, so tiles differ slightly from one whole-image pass; d2csr's own tiled inference is exact).

spandrel is imported only when :func:`install` / :func:`architecture` is called: this module imports without it.
"""
import functools

from d2csr.archs import D2CSR
from d2csr.archs.infer_options import infer_network_options, is_d2csr_state
from d2csr.utils.checkpoint import CheckpointFormatError, check_finite

ARCH_ID = 'D2CSR'
ARCH_NAME = 'D2C-SR'
SUPPORTS_HALF = True  # measured: benchmarks/spandrel_dtypes.py
SUPPORTS_BFLOAT16 = True


def _import_spandrel():
    try:
        import spandrel
    except ImportError as err:
        raise ImportError('d2csr.integrations.spandrel needs the spandrel package: pip install "d2csr[spandrel]" '
                          '(or pip install spandrel)') from err
    return spandrel


def detect(state_dict):
    """Whether ``state_dict`` (spandrel's canonical state dict) is a D2C-SR network's: names only, see
    :func:`d2csr.archs.infer_options.is_d2csr_state`."""
    return is_d2csr_state(state_dict)


def model_tags(opts):
    """spandrel's short description tags of a D2CSR, e.g. ``['rcan', '64nf', 'L2C2', '2g4b']``."""
    tags = [opts.get('backbone', 'rcan'), f'{opts["num_feat"]}nf', f'L{opts["depth"]}C{opts["width"]}']
    if opts.get('backbone', 'rcan') == 'rcan':
        tags.append(f'{opts["num_group"]}g{opts["num_block"]}b')
    else:
        tags.extend(f'{k}={v}' for k, v in opts['backbone_opt'].items())
    if opts['upsampler'] != 'pixelshuffle':
        tags.append(opts['upsampler'])
    if opts['mean_shift'] == 'learnable':
        tags.append('learnable-mean')
    if not opts['deep_residual']:
        tags.append('no-deep-residual')
    return tags


def load_descriptor(state_dict, architecture):
    """spandrel's ``ImageModelDescriptor`` of the D2CSR whose weights are ``state_dict``.

    Raises :class:`~d2csr.utils.checkpoint.CheckpointFormatError` (a ``ValueError``) saying why when the
    weights cannot be rebuilt (a ``bicubic_input`` network, shapes that fit no D2CSR, NaN / Inf weights).
    """
    spandrel = _import_spandrel()
    try:
        opts = infer_network_options(state_dict)
    except CheckpointFormatError as err:
        raise CheckpointFormatError(f'{err} In spandrel (ComfyUI, chaiNNer) only the weights are seen: run such a '
                                    'model with d2csr (inference/inference_d2csr.py -opt OPTIONS), or export it '
                                    'with scripts/export_onnx.py MODEL OUT.onnx -opt OPTIONS.') from None
    check_finite(state_dict, 'the D2C-SR checkpoint')
    net = D2CSR(**{k: v for k, v in opts.items() if k != 'type'}).eval()
    try:
        return spandrel.ImageModelDescriptor(
            net, state_dict, architecture=architecture, purpose='SR', tags=model_tags(opts),
            supports_half=SUPPORTS_HALF, supports_bfloat16=SUPPORTS_BFLOAT16, scale=opts['upscale'],
            input_channels=opts['num_in_ch'], output_channels=opts['num_out_ch'],
            size_requirements=spandrel.SizeRequirements(), tiling=spandrel.ModelTiling.SUPPORTED)
    except RuntimeError as err:  # load_state_dict: names or shapes that do not fit the inferred network
        raise CheckpointFormatError(f'the D2C-SR weights do not fit the inferred network {opts}: {err}') from None


@functools.lru_cache(maxsize=None)
def _architecture_class():
    spandrel = _import_spandrel()

    class D2CSRArch(spandrel.Architecture):
        """spandrel ``Architecture`` of D2C-SR: :func:`detect` and :func:`load_descriptor`."""

        def __init__(self):
            super().__init__(id=ARCH_ID, name=ARCH_NAME, detect=detect)

        def load(self, state_dict):
            return load_descriptor(state_dict, self)

    return D2CSRArch


def architecture():
    """A spandrel ``Architecture`` for D2C-SR (what an ``ArchSupport`` wraps)."""
    return _architecture_class()()


def install(registry=None, *, ignore_duplicates=False):
    """Add D2C-SR to spandrel's ``registry`` (default ``spandrel.MAIN_REGISTRY``, which ``ModelLoader()`` uses).

    D2C-SR is detected before every architecture already in the registry (its detector claims only D2CSR's
    own namespace). A second call raises spandrel's ``DuplicateArchitectureError`` unless
    ``ignore_duplicates=True`` (then the registry keeps what it has), as ``spandrel_extra_arches.install`` does.
    Returns the list of ``ArchSupport`` entries added (empty when already there and ignored).
    """
    spandrel = _import_spandrel()
    registry = spandrel.MAIN_REGISTRY if registry is None else registry
    others = tuple(s.architecture.id for s in registry.architectures() if s.architecture.id != ARCH_ID)
    support = spandrel.ArchSupport.from_architecture(architecture(), before=others)
    return registry.add(support, ignore_duplicates=ignore_duplicates)

