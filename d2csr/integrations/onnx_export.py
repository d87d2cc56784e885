"""D2C-SR as an ONNX model for ONNX Runtime, OpenVINO or TensorRT (``scripts/export_onnx.py`` is its command line).

The contract of the exported file (also written into its ``metadata_props`` and printed by the script):

- input ``input``: ``(N, C, H, W)`` float32 (float16 for the ``fp16`` variant), RGB for ``C = 3``, range [0, 1];
  ``N``, ``H`` and ``W`` are dynamic (any batch, any size >= 1);
- output ``output``: ``(N, C, s*H, s*W)`` of the same type, clamped to [0, 1]; ``s`` is the model's scale.

How: ``torch.onnx.export`` (the TorchScript-based exporter, ``dynamo=False``, opset 17) traces the fused forward of
a copy of the network in NCHW layout. Traced, D2CSR runs its plain math (``torch.jit.is_tracing()``): its CPU-fp32
inference shortcuts (:class:`~d2csr.archs.d2csr_arch.FewOutputConv2d`'s shifted 1x1 taps, which depend on the
image size, and the RCAN blocks' ``addcmul(out=...)``, which does not export and whose ONNX form would compute
an fp16 model in fp32) are left out of the graph. The fp16 variant is the same trace of an fp16 copy: fp16
weights, inputs, outputs and arithmetic throughout. Before anything is written, :func:`verify` runs the ONNX checker and
ONNX Runtime (CPU) at two odd sizes, one of them with a batch of 2, against the PyTorch network's own
forward: max |diff| <= :data:`FP32_TOLERANCE` for fp32 (:data:`FP16_TOLERANCE` for the fp16 variant, whose
reference stays the fp32 network). :func:`export_onnx` writes the file whole or not at all
(:func:`d2csr.utils.atomic.write_bytes_atomic`).

onnx and onnxruntime are an optional extra (``pip install "d2csr[onnx]"``), imported only when used.
"""
import copy
import inspect
import io
import json
import warnings

import torch
from torch import nn

from d2csr.utils.atomic import write_bytes_atomic

OPSET = 17
INPUT_NAME = 'input'
OUTPUT_NAME = 'output'
CHECK_SIZES = ((1, 37, 53), (2, 23, 41))  # (batch, height, width): odd sizes, a batch of 2 (dynamic axes)
TRACE_SIZE = (1, 32, 32)  # the example input the exporter traces (any size: every axis but C is dynamic)
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2  # fp16 weights and activations (10 bits of mantissa) against the fp32 network
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16}


class ExportError(RuntimeError):
    """The network cannot be exported, or the exported file does not reproduce it; nothing was written."""


def require_onnx():
    """``(onnx, onnxruntime)``, or ``ExportError`` saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ExportError(f'ONNX export needs the onnx and onnxruntime packages ({err}); install them with '
                          'pip install "d2csr[onnx]" (or pip install onnx onnxruntime)') from None
    return onnx, onnxruntime


class ClampedSR(nn.Module):
    """The exported graph: ``net(x)`` clamped to [0, 1]. ``(N, C, h, w) -> (N, C, s*h, s*w)``."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).clamp(0, 1)


def plain_copy(net, dtype=torch.float32):
    """A copy of ``net`` in NCHW layout (no layout conversions in the graph), in ``dtype``, on the CPU, in eval
    mode, clamped (:class:`ClampedSR`)."""
    plain = copy.deepcopy(net).cpu().to(dtype).eval()
    plain.set_memory_format(torch.contiguous_format)
    return ClampedSR(plain)


def contract(net, network_opt=None, precision='fp32', source=None):
    """The input / output contract of the exported model as ``{key: str}`` (the file's ``metadata_props``)."""
    channels = net.head.in_channels
    kind = 'float32' if precision == 'fp32' else 'float16'
    colour = 'RGB' if channels == 3 else ('gray' if channels == 1 else f'{channels} channels')
    from d2csr import __version__

    meta = {
        'd2csr.input': f'{INPUT_NAME} (N, {channels}, H, W) {kind}, NCHW, {colour}, range [0, 1]; N, H, W dynamic',
        'd2csr.output': f'{OUTPUT_NAME} (N, {channels}, {net.upscale}*H, {net.upscale}*W) {kind}, {colour}, '
                        'range [0, 1] (clamped)',
        'd2csr.scale': str(net.upscale),
        'd2csr.channels': str(channels),
        'd2csr.color_order': colour,
        'd2csr.layout': 'NCHW',
        'd2csr.input_range': '[0, 1]',
        'd2csr.precision': precision,
        'd2csr.network_g': json.dumps(network_opt or {}, sort_keys=True),
        'd2csr.version': __version__,
        'd2csr.opset': str(OPSET),
    }
    if source:
        meta['d2csr.source'] = str(source)
    return meta


def to_onnx_bytes(net, precision='fp32', opset=OPSET, network_opt=None):
    """The traced ONNX model of ``net`` (see the module docstring) as serialized bytes, without metadata;
    ``network_opt`` names the network in an error."""
    dtype = DTYPES[precision]
    model = plain_copy(net, dtype)
    example = torch.rand(*TRACE_SIZE[:1], net.head.in_channels, *TRACE_SIZE[1:], dtype=dtype)
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # the tracer's notes on Python values (shapes) it records
            torch.onnx.export(model, (example, ), buffer, opset_version=opset, **_torchscript_exporter(),
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: 'batch', 2: 'height', 3: 'width'},
                                            OUTPUT_NAME: {0: 'batch', 2: 'out_height', 3: 'out_width'}})
    except Exception as err:  # noqa: BLE001  (the exporter raises many types; the reason is what matters)
        raise ExportError(f'torch.onnx.export cannot export this network ({describe(net, network_opt)}): '
                          f'{type(err).__name__}: {str(err).splitlines()[0][:500]}') from None
    return buffer.getvalue()


def _torchscript_exporter():
    """``dynamo=False`` where ``torch.onnx.export`` has a choice (torch >= 2.5); before, it is the only one."""
    return {'dynamo': False} if 'dynamo' in inspect.signature(torch.onnx.export).parameters else {}


def describe(net, network_opt=None):
    """``'x4, backbone rcan, upsampler pixelshuffle, 4 branches'``: the network in an error message."""
    backbone = (network_opt or {}).get('backbone', 'rcan' if network_opt else '?')
    return f'x{net.upscale}, backbone {backbone}, upsampler {net.upsampler}, {net.num_branches} branches'


def add_metadata(data, meta):
    """``data`` (serialized ONNX) with ``meta`` in its ``metadata_props`` and d2csr as producer."""
    onnx, _ = require_onnx()
    model = onnx.load_from_string(data)
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = 'd2csr'
    model.producer_version = meta.get('d2csr.version', '')
    model.doc_string = 'D2C-SR super-resolution. ' + meta['d2csr.input'] + ' -> ' + meta['d2csr.output']
    return model.SerializeToString()


def check_inputs(channels, generator=None):
    """The verification inputs: one ``(N, channels, H, W)`` tensor in [0, 1] per :data:`CHECK_SIZES`."""
    generator = generator or torch.Generator().manual_seed(0)
    return [torch.rand(n, channels, h, w, generator=generator) for n, h, w in CHECK_SIZES]


def verify(data, net, precision='fp32'):
    """Check the serialized model ``data`` against ``net``; returns ``[(shape, max |diff|), ...]``.

    The ONNX checker (full check, shape inference included), then ONNX Runtime on the CPU at
    :data:`CHECK_SIZES` against ``net``'s own forward in fp32, clamped (the network as d2csr runs it). Raises
    :class:`ExportError` naming the size and the difference when it exceeds the precision's tolerance.
    """
    onnx, ort = require_onnx()
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except Exception as err:  # noqa: BLE001  (onnx raises ValidationError and InferenceError)
        raise ExportError(f'the ONNX checker refuses the exported model: {err}') from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(data, options, providers=['CPUExecutionProvider'])
    tolerance = FP32_TOLERANCE if precision == 'fp32' else FP16_TOLERANCE
    dtype = DTYPES[precision]
    results = []
    reference_net = copy.deepcopy(net).cpu().float().eval()
    for x in check_inputs(net.head.in_channels):
        with torch.no_grad():
            ref = reference_net(x).clamp(0, 1)
        out = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.to(dtype).numpy()})[0]).float()
        if out.shape != ref.shape:
            raise ExportError(f'ONNX Runtime gives shape {tuple(out.shape)} for input {tuple(x.shape)}; PyTorch '
                              f'gives {tuple(ref.shape)}')
        diff = float((out - ref).abs().max())
        if not diff <= tolerance:  # (NaN fails too)
            raise ExportError(f'ONNX Runtime differs from PyTorch by {diff:.3g} (max |diff|) at input '
                              f'{tuple(x.shape)}, more than the {precision} tolerance {tolerance:g}')
        results.append((tuple(x.shape), diff))
    return results


def export_onnx(net, path, network_opt=None, precision='fp32', source=None, opset=OPSET):
    """Export ``net`` (a :class:`~d2csr.archs.D2CSR`) to ``path``: trace, add the contract as metadata, verify,
    then write the file whole (atomically). Returns ``(contract dict, verification results)``.

    Raises :class:`ExportError` (nothing written) when the exporter fails or the file does not reproduce the
    network.
    """
    if precision not in DTYPES:
        raise ValueError(f'precision must be one of {sorted(DTYPES)}, got {precision!r}')
    require_onnx()
    meta = contract(net, network_opt, precision, source)
    data = add_metadata(to_onnx_bytes(net, precision, opset, network_opt), meta)
    results = verify(data, net, precision)
    write_bytes_atomic(path, data)
    return meta, results
