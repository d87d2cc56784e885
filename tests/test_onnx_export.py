"""ONNX export: every backbone x upsampler, dynamic batch / height / width, the contract in the metadata, fp16,
verified before it is written, written whole or not at all."""
import os

import pytest
import torch
import yaml

from conftest import OFFICIAL_FIXTURE, load_script
from d2csr.archs.d2csr_arch import UPSAMPLERS
from d2csr.convert import save_basicsr_checkpoint
from d2csr.loading import load_network
from tiny_d2c import TINY_BACKBONE_OPT, tiny_d2c

onnx = pytest.importorskip('onnx', reason='onnx is an optional extra: pip install "d2csr[onnx]"')
ort = pytest.importorskip('onnxruntime', reason='onnxruntime is an optional extra: pip install "d2csr[onnx]"')
from d2csr.integrations import onnx_export  # noqa: E402

def tiny(backbone='rcan', **kwargs):
    return tiny_d2c(backbone, **dict(dict(depth=1, width=2, upscale=4), **kwargs))


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return torch.from_numpy(session.run(['output'], {'input': x.numpy()})[0])


def metadata(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize('upsampler', UPSAMPLERS)
@pytest.mark.parametrize('backbone', sorted(TINY_BACKBONE_OPT))
def test_every_backbone_and_upsampler_exports_and_reproduces_pytorch(backbone, upsampler, tmp_path):
    net, opts = tiny(backbone, upsampler=upsampler, upscale=3 if upsampler == 'pixelshuffle' else 2,
                     bicubic_skip=upsampler == 'bicubic_input', mean_shift='learnable')
    path = tmp_path / 'model.onnx'
    meta, results = onnx_export.export_onnx(net, path, opts)
    assert [shape for shape, _ in results] == [(n, 3, h, w) for n, h, w in onnx_export.CHECK_SIZES]
    assert all(diff <= 1e-4 for _, diff in results)
    # the plain math: none of the CPU shortcuts (FewOutputConv2d's shifted taps would add Slice / ScatterND)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not ops & {'ScatterND', 'Slice', 'Transpose'}, ops
    # dynamic batch, height and width: another batch and size than the checks used
    x = torch.rand(3, 3, 9, 14)
    with torch.no_grad():
        ref = net(x).clamp(0, 1)
    out = run_onnx(path, x)
    assert out.shape == ref.shape and (out - ref).abs().max() <= 1e-4
    assert metadata(path)['d2csr.scale'] == str(net.upscale)


def write_checkpoint(tmp_path, **kwargs):
    net, opts = tiny(**kwargs)
    path = tmp_path / 'net_g_latest.pth'
    save_basicsr_checkpoint(net, path)
    return net, path


def test_script_writes_the_contract_and_a_verified_model(tmp_path, capsys):
    net, model = write_checkpoint(tmp_path)
    out = tmp_path / 'onnx' / 'd2csr_x4.onnx'  # a folder that does not exist yet
    assert load_script('scripts/export_onnx.py').main([str(model), str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'input (N, 3, H, W) float32, NCHW, RGB, range [0, 1]' in printed and 'scale: 4' in printed
    assert 'ONNX checker passed' in printed and '1x3x37x53' in printed and '2x3x23x41' in printed
    meta = metadata(out)
    assert meta['d2csr.scale'] == '4' and meta['d2csr.color_order'] == 'RGB' and meta['d2csr.layout'] == 'NCHW'
    assert meta['d2csr.input_range'] == '[0, 1]' and meta['d2csr.precision'] == 'fp32'
    assert 'dynamic' in meta['d2csr.input'] and '(N, 3, 4*H, 4*W)' in meta['d2csr.output']
    assert yaml.safe_load(meta['d2csr.network_g'])['num_group'] == 2
    model_proto = onnx.load(str(out))
    dims = [d.dim_param or d.dim_value for d in model_proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ['batch', 3, 'height', 'width']
    x = torch.rand(2, 3, 19, 31)
    with torch.no_grad():
        ref = net(x).clamp(0, 1)
    assert (run_onnx(out, x) - ref).abs().max() <= 1e-4


def test_fp16_variant_is_half_precision_throughout(tmp_path, capsys):
    net, model = write_checkpoint(tmp_path)
    out = tmp_path / 'd2csr_x4_fp16.onnx'
    assert load_script('scripts/export_onnx.py').main([str(model), str(out), '--fp16']) == 0
    assert '(fp16)' in capsys.readouterr().out
    proto = onnx.load(str(out))
    half = onnx.TensorProto.FLOAT16
    assert proto.graph.input[0].type.tensor_type.elem_type == half
    assert proto.graph.output[0].type.tensor_type.elem_type == half
    assert {t.data_type for t in proto.graph.initializer} == {half}  # no fp32 weights (no silent fp32 compute)
    assert metadata(out)['d2csr.precision'] == 'fp16'
    x = torch.rand(1, 3, 21, 17)
    with torch.no_grad():
        ref = net(x).clamp(0, 1)
    out16 = run_onnx(out, x.half())
    assert out16.dtype == torch.float16 and (out16.float() - ref).abs().max() <= onnx_export.FP16_TOLERANCE


def test_authors_pickle_and_options_files_export(tmp_path):
    out = tmp_path / 'official.onnx'
    pickle = OFFICIAL_FIXTURE / 'checkpoint.pkl'
    assert load_script('scripts/export_onnx.py').main([str(pickle), str(out)]) == 0
    net, _, _ = load_network(str(pickle))
    x = torch.rand(1, 3, 15, 11)
    with torch.no_grad():
        assert (run_onnx(out, x) - net(x).clamp(0, 1)).abs().max() <= 1e-4
    # a bicubic_input network (D2C-VDSR) needs its options file: -opt
    vdsr, opts = tiny('vdsr', upsampler='bicubic_input', bicubic_skip=True, mean_shift='none')
    save_basicsr_checkpoint(vdsr, tmp_path / 'vdsr.pth')
    yml = tmp_path / 'vdsr.yml'
    yml.write_text(yaml.safe_dump({'network_g': opts}))
    script = load_script('scripts/export_onnx.py')
    with pytest.raises(SystemExit, match=r'bicubic_input.*-opt'):
        script.main([str(tmp_path / 'vdsr.pth'), str(tmp_path / 'vdsr.onnx')])
    assert script.main([str(tmp_path / 'vdsr.pth'), str(tmp_path / 'vdsr.onnx'), '-opt', str(yml)]) == 0
    with torch.no_grad():
        assert (run_onnx(tmp_path / 'vdsr.onnx', x) - vdsr(x).clamp(0, 1)).abs().max() <= 1e-4


def test_a_model_that_fails_verification_is_not_written(tmp_path, monkeypatch):
    _, model = write_checkpoint(tmp_path)
    out = tmp_path / 'model.onnx'
    out.write_bytes(b'the previous export')
    monkeypatch.setattr(onnx_export, 'FP32_TOLERANCE', 0.0)  # ONNX Runtime never matches PyTorch bit for bit here
    with pytest.raises(SystemExit, match=r'differs from PyTorch by .* at input \(1, 3, 37, 53\).*nothing was written'):
        load_script('scripts/export_onnx.py').main([str(model), str(out), '--force'])
    assert out.read_bytes() == b'the previous export'
    assert sorted(os.listdir(tmp_path)) == ['model.onnx', 'net_g_latest.pth']  # no temporary file left

    def refuse(*args, **kwargs):
        raise RuntimeError('Exporting the operator foo to ONNX opset version 17 is not supported.')

    monkeypatch.setattr(torch.onnx, 'export', refuse)
    with pytest.raises(SystemExit, match=r'cannot export this network \(x4, backbone rcan, upsampler pixelshuffle, '
                       r'2 branches\): RuntimeError: Exporting the operator foo.*nothing was written'):
        load_script('scripts/export_onnx.py').main([str(model), str(tmp_path / 'new.onnx')])
    assert not (tmp_path / 'new.onnx').exists()


def test_bad_arguments_name_the_problem(tmp_path, monkeypatch):
    _, model = write_checkpoint(tmp_path)
    script = load_script('scripts/export_onnx.py')
    with pytest.raises(SystemExit, match='does not exist'):
        script.main([str(tmp_path / 'missing.pth'), str(tmp_path / 'a.onnx')])
    (tmp_path / 'taken.onnx').write_bytes(b'x')
    with pytest.raises(SystemExit, match='exists; pass --force'):
        script.main([str(model), str(tmp_path / 'taken.onnx')])
    with pytest.raises(SystemExit, match='is a folder'):
        script.main([str(model), str(tmp_path), '--force'])
    monkeypatch.setitem(__import__('sys').modules, 'onnxruntime', None)  # as if the extra were not installed
    with pytest.raises(SystemExit, match=r'pip install "d2csr\[onnx\]"'):
        script.main([str(model), str(tmp_path / 'b.onnx')])
    assert not (tmp_path / 'a.onnx').exists() and not (tmp_path / 'b.onnx').exists()


def test_timing_benchmark_runs(capsys):
    """benchmarks/bench_onnx.py (the ONNX Runtime vs PyTorch timing) on a tiny network."""
    assert load_script('benchmarks/bench_onnx.py').main(['--smoke']) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith('24x20'))
    ratio_best, ratio_median, diff = row.split()[-3:]
    assert ratio_best.endswith('x') and ratio_median.endswith('x') and float(diff) <= 1e-4
    assert any('ONNX Runtime vs PyTorch max |diff|' in line for line in lines)
