"""The Python API as a notebook uses it: ``d2csr.Upscaler``, numpy arrays in and out, no files but the model."""
import numpy as np
import pytest
import torch

import d2csr
from d2csr.archs import D2CSR
from d2csr.convert import save_basicsr_checkpoint


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    torch.manual_seed(0)
    net = D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2, fusion_feat=8).eval()
    path = tmp_path_factory.mktemp('api') / 'net_g_latest.pth'
    save_basicsr_checkpoint(net, path)
    return net, str(path)


def reference(net, rgb01):
    """The network's output on an ``(H, W, 3)`` RGB float image, as an ``(sH, sW, 3)`` array in [0, 1]."""
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(rgb01, dtype=np.float32)).permute(2, 0, 1)[None])
    return out[0].clamp(0, 1).permute(1, 2, 0).numpy()


def test_upscale_arrays_as_a_notebook_would(model):
    net, path = model
    upscaler = d2csr.Upscaler(path, device='cpu')  # the checkpoint's network inferred from its weights
    assert upscaler.scale == 2 and not upscaler.net.training and upscaler.amp is None
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)

    sr = upscaler.enhance(rgb)  # uint8 RGB
    assert sr.shape == (20, 24, 3) and sr.dtype == np.uint8
    expected = reference(net, rgb / 255.0) * 255
    assert np.abs(sr - expected).max() <= 0.51

    bgr = upscaler.enhance(rgb[..., ::-1], order='BGR')  # OpenCV's channel order in, the same order out
    assert np.array_equal(bgr, sr[..., ::-1])

    gray16 = rng.integers(0, 65536, (10, 12), dtype=np.uint16)  # 16-bit grayscale: (H, W) out, 16 bits kept
    out = upscaler.enhance(gray16)
    assert out.shape == (20, 24) and out.dtype == np.uint16 and np.any(out % 257 != 0)
    luma = reference(net, np.repeat(gray16[..., None] / 65535.0, 3, axis=2)) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(out - luma * 65535).max() <= 0.51 * 257

    rgba = rng.random((10, 12, 4)).astype(np.float32)  # float RGBA: float out, alpha upscaled bicubically
    out = upscaler.enhance(rgba)
    assert out.shape == (20, 24, 4) and out.dtype == np.float32
    assert np.abs(out[..., :3] - reference(net, rgba[..., :3])).max() <= 1e-5
    assert upscaler.enhance(rgb[..., :1]).shape == (20, 24, 1)

    sr2, branches = upscaler.enhance(rgb, return_branches=True)
    assert np.array_equal(sr2, sr) and len(branches) == 4 and branches[0].shape == sr.shape


def test_api_options_and_refusals(model, tmp_path):
    net, path = model
    options = dict(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2, fusion_feat=8)
    upscaler = d2csr.Upscaler(path, options=options, device='cpu', tile=4, memory='bounded', bounded_tile=6)
    assert upscaler.network_options['num_feat'] == 8 and upscaler.mode == 'bounded'
    img = np.random.default_rng(1).integers(0, 256, (14, 11, 3), dtype=np.uint8)
    assert upscaler.enhance(img).shape == (28, 22, 3)
    with pytest.raises(ValueError, match=r'\(H, W\) or \(H, W, C\) with C = 1, 3 or 4; got shape \(5, 5, 2\)'):
        upscaler.enhance(np.zeros((5, 5, 2), np.uint8))
    with pytest.raises(ValueError, match='samples of type int64 are not supported'):
        upscaler.enhance(np.zeros((5, 5, 3), np.int64))
    with pytest.raises(ValueError, match='NaN or infinite'):
        upscaler.enhance(np.full((5, 5, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="device 'tpu' is not a device"):
        d2csr.Upscaler(path, device='tpu')
    with pytest.raises(ValueError, match="memory must be one of"):
        d2csr.Upscaler(path, device='cpu', memory='huge')
    with pytest.raises(ValueError, match='x2 model, but scale 4'):
        d2csr.Upscaler(path, device='cpu', scale=4)
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_package_top_exports_the_api():
    assert set(d2csr.__all__) >= {'Upscaler', 'load_model', 'tiled_forward', 'bounded_forward', 'MemoryRefused',
                                  'OutOfMemory'}
    from d2csr.upscaler import Upscaler

    assert d2csr.Upscaler is Upscaler
    with pytest.raises(AttributeError):
        d2csr.NoSuchThing  # noqa: B018
