"""Hostile inputs (issue 15): nothing silently wrong, nothing lost, every error names the thing and the fix.

Part 1: the cases that gave a wrong result, a hang or lost data. Part 2: the cases that gave a raw traceback.
Tiny networks, in-process, except two forked prepare runs killed with os._exit (no clean-up runs).
"""
import logging
import os
import pickle
import re
import signal
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import d2csr.utils.checkpoint as checkpoint_module
import d2csr.data.prepare as prepare_module
from basicsr.data import build_dataset
from conftest import TINY_NET, load_script, tiny_options
from d2csr.archs import D2CSR
from d2csr.convert import UnsafeCheckpointError, d2csr_to_official, load_official, save_basicsr_checkpoint
from d2csr.loading import load_model, load_network
from d2csr.utils.checkpoint import CheckpointFormatError
from d2csr.data.eval_check import check_eval_dataset
from d2csr.data.pair_index import DataError
from d2csr.utils.image_io import UnreadableImage, read_image
from d2csr.options_check import validate_options
from data_trees import camera_pairs_tree


def tiny_d2c(seed=0, **kwargs):
    torch.manual_seed(seed)
    opts = dict(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2)
    opts.update(kwargs)
    return D2CSR(**opts).eval()


def bomb_png(path, side=100_000):
    """A valid PNG header claiming ``side`` x ``side`` pixels, with a few bytes of data."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)

    Path(path).write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 8, 2, 0, 0, 0))
                           + chunk(b'IDAT', zlib.compress(b'\x00' * 100)) + chunk(b'IEND', b''))
    return path


def write_png(path, shape, value=128):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full(shape, value, np.uint8))
    return path


@pytest.fixture
def script():
    return load_script('inference/inference_d2csr.py')


@pytest.fixture
def prep():
    module = load_script('scripts/prepare_dataset.py')

    def run(*argv):
        try:
            module.main([str(a) for a in argv])
        except SystemExit as exit_:
            return exit_.code
        return 0
    return run


def snapshot(out):
    out = Path(out)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob('*')) if p.is_file()}


# ==================================================================================================
# Part 1: wrong results, hangs, lost data
def test_1_a_tiny_self_referencing_pickle_is_refused_at_once(tmp_path, capsys):
    inner = [np.zeros(1, np.float32)]
    for _ in range(8):  # 8 levels, each list holding the same inner list 50 times: 50**8 paths, 846 bytes
        inner = [inner] * 50
    path = tmp_path / 'tiny.pkl'
    path.write_bytes(pickle.dumps({'state_dict_D': {'head.0.weight': inner}, 'state_dict_C': {}}))
    assert path.stat().st_size < 2000
    start = time.time()
    with pytest.raises(CheckpointFormatError, match='not arrays'):
        load_official(str(path))
    assert time.time() - start < 5
    with pytest.raises(SystemExit, match='not arrays'):
        load_script('scripts/convert_official.py').main([str(path), str(tmp_path / 'out.pth')])
    assert not (tmp_path / 'out.pth').exists()


def test_2_non_finite_weights_are_refused_naming_the_tensor(tmp_path, script):
    net = tiny_d2c()
    with torch.no_grad():
        net.head.weight[0, 0, 0, 0] = float('nan')
    model = tmp_path / 'nan.pth'
    save_basicsr_checkpoint(net, model)
    with pytest.raises(CheckpointFormatError, match=r"'head.weight' holds 1 non-finite"):
        load_model(str(model))
    write_png(tmp_path / 'in' / 'a.png', (6, 7, 3))
    with pytest.raises(SystemExit, match='head.weight'):
        script.main(['-i', str(tmp_path / 'in'), '-o', str(tmp_path / 'out'), '--model_path', str(model)])
    assert not (tmp_path / 'out').exists()
    # the converter refuses an official pickle with an Inf as well
    payload = d2csr_to_official(tiny_d2c(mean_shift='learnable'))
    payload['state_dict_C']['fusion_final.0.conv.weight'][0, 0, 0, 0] = np.inf
    pkl = tmp_path / 'inf.pkl'
    pkl.write_bytes(pickle.dumps(payload))
    with pytest.raises(SystemExit, match='fusion_final.0.conv.weight'):
        load_script('scripts/convert_official.py').main([str(pkl), str(tmp_path / 'out.pth')])
    assert not (tmp_path / 'out.pth').exists()


def _run_folder(tmp_path, net, ymls):
    run = tmp_path / 'experiments' / 'run'
    (run / 'models').mkdir(parents=True)
    save_basicsr_checkpoint(net, run / 'models' / 'net_g_latest.pth')
    for name, network in ymls.items():
        (run / name).write_text(yaml.safe_dump({'name': 'run', 'network_g': network}))
    return run / 'models' / 'net_g_latest.pth'


def test_3_inference_never_guesses_the_network_silently(tmp_path):
    net = tiny_d2c(bicubic_skip=True)
    network = dict(type='D2CSR', num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2)
    ckpt = _run_folder(tmp_path, net, {'train_a.yml': dict(network, bicubic_skip=True),
                                       'train_b.yml': dict(network, bicubic_skip=False)})
    with pytest.raises(ValueError, match=r'differ \(in bicubic_skip\).*train_a.yml, train_b.yml.*-opt'):
        load_network(str(ckpt))
    # the same network_g in both (a resume under another options name): used, and the log names the file
    (ckpt.parent.parent / 'train_b.yml').write_text(yaml.safe_dump({'network_g': dict(network, bicubic_skip=True)}))
    loaded, _, source = load_network(str(ckpt))
    assert loaded.bicubic_skip and source == f'from {ckpt.parent.parent / "train_a.yml"}'
    x = torch.rand(1, 3, 5, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    # saved options that no longer fit the weights: an error, not a network inferred from the weights
    for name in ('train_a.yml', 'train_b.yml'):
        (ckpt.parent.parent / name).write_text(yaml.safe_dump({'network_g': dict(network, num_feat=16)}))
    with pytest.raises(CheckpointFormatError, match='does not fit its weights; pass the options .* with -opt'):
        load_network(str(ckpt))


def model_options(tmp_path, photo_data, **kwargs):
    """A parsed-looking options dict for building a D2CModel in-process."""
    opt = tiny_options(photo_data, 'pytest_hostile', **kwargs)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=False)
    opt['path'].update(experiments_root=str(tmp_path), models=str(tmp_path), training_states=str(tmp_path),
                       log=str(tmp_path), visualization=str(tmp_path))
    for phase, dataset in opt['datasets'].items():
        dataset.update(phase=phase, scale=opt['scale'])
    return opt


def build(opt):
    from basicsr.models import build_model

    return build_model(opt)


def test_4_stage_2_compares_the_traceless_options_with_stage_1(tmp_path, photo_data):
    stage1 = dict(TINY_NET, bicubic_skip=True)
    ckpt = _run_folder(tmp_path, D2CSR(**{k: v for k, v in stage1.items() if k != 'type'}), {'train_div.yml': stage1})
    opt = model_options(tmp_path, photo_data, stage='convergence', pretrain=str(ckpt), network=dict(TINY_NET))
    with pytest.raises(ValueError, match=r"bicubic_skip: True in stage 1, False here"):
        build(opt)
    model = build(model_options(tmp_path, photo_data, stage='convergence', pretrain=str(ckpt), network=stage1))
    assert model.get_bare_model(model.net_g).bicubic_skip
    # every option the weights do not record: the mean shift ('fixed' and 'none' store the same tensors) and a
    # backbone option (RCAN's res_scale: its default counts as given)
    other = dict(stage1, mean_shift='none', backbone_opt={'res_scale': 0.5})
    with pytest.raises(ValueError, match=r"mean_shift: 'fixed' in stage 1, 'none' here.*backbone_opt:res_scale: 1\.0 "
                                         r"in stage 1, 0\.5 here"):
        build(model_options(tmp_path, photo_data, stage='convergence', pretrain=str(ckpt), network=other))
    build(model_options(tmp_path, photo_data, stage='convergence', pretrain=str(ckpt),
                        network=dict(stage1, backbone_opt={'res_scale': 1.0})))


@pytest.mark.parametrize('override, message', [
    ({'train:divergence_opt:alpha': -1}, r'divergence_opt:alpha must be a finite number >= 0.*got -1'),
    ({'train:divergence_opt:depth': 1, 'train:divergence_opt:width': 4, 'train:divergence_opt:margins': [5e-5]},
     r'divergence_opt gives depth: 1, width: 4, but network_g is a tree with depth: 2, width: 2'),
    ({'train:divergence_opt:margins': [5e-5, -1]}, r'margins must be finite numbers >= 0'),
])
def test_5_nonsense_option_values_stop_the_run_at_start(tmp_path, photo_data, override, message):
    with pytest.raises(ValueError, match=message):
        build(model_options(tmp_path, photo_data, **override))


def test_6_outputs_never_overwrite_each_other_or_the_inputs(tmp_path, script):
    model = tmp_path / 'net.pth'
    save_basicsr_checkpoint(tiny_d2c(), model)
    folder = tmp_path / 'in'
    write_png(folder / 'photo.png', (6, 7, 3), 10)
    assert cv2.imwrite(str(folder / 'photo.jpg'), np.full((6, 7, 3), 200, np.uint8))
    out = tmp_path / 'out'
    with pytest.raises(SystemExit, match=r'photo.jpg and .*photo.png would both write .*photo_D2CSR.png'):
        script.main(['-i', str(folder), '-o', str(out), '--model_path', str(model), '--ext', 'png'])
    assert not out.exists()
    assert script.main(['-i', str(folder), '-o', str(out), '--model_path', str(model), '--tile', '0']) == 0
    assert sorted(os.listdir(out)) == ['photo_D2CSR.jpg', 'photo_D2CSR.png']
    before = snapshot(folder)
    with pytest.raises(SystemExit, match='is the input folder'):
        script.main(['-i', str(folder), '-o', str(folder), '--model_path', str(model)])
    assert snapshot(folder) == before


def test_7_an_image_header_claiming_a_huge_size_is_skipped_not_fatal(tmp_path, script, capsys):
    model = tmp_path / 'net.pth'
    save_basicsr_checkpoint(tiny_d2c(), model)
    folder = tmp_path / 'in'
    bomb_png(folder.mkdir() or folder / 'a_bomb.png')
    write_png(folder / 'b_fine.png', (6, 7, 3))
    with pytest.raises(UnreadableImage, match='100000x100000'):
        read_image(str(folder / 'a_bomb.png'))
    assert script.main(['-i', str(folder), '-o', str(tmp_path / 'out'), '--model_path', str(model)]) == 1
    stdout = capsys.readouterr().out
    assert '1 of 2 images written' in stdout and 'a_bomb.png' in stdout.split('skipped:')[1]
    assert (tmp_path / 'out' / 'b_fine_D2CSR.png').is_file()
    # prepare_dataset names it instead of a raw DecompressionBombError
    root = camera_pairs_tree(tmp_path / 'cam')
    bomb_png(root / 'LR' / 'IMG_0001_lr.png')
    with pytest.raises(DataError, match=r'IMG_0001_lr.png \(its header claims a huge image'):
        prepare_module.prepare('pairs', str(root), 4, str(tmp_path / 'sub'), filename_tmpl='{}_lr', log=lambda m: None)


def test_8_prepare_refuses_truncated_jpegs_and_dotted_lmdb_keys(tmp_path):
    root = camera_pairs_tree(tmp_path / 'cam')
    hr = cv2.imread(str(root / 'HR' / 'IMG_0001.png'))
    data = cv2.imencode('.jpg', hr)[1].tobytes()
    (root / 'HR' / 'IMG_0001.png').unlink()
    (root / 'HR' / 'IMG_0001.jpg').write_bytes(data[:len(data) * 2 // 3])  # header intact, data cut short
    assert cv2.imread(str(root / 'HR' / 'IMG_0001.jpg')) is not None  # OpenCV decodes it, with a grey band
    out = tmp_path / 'sub'
    with pytest.raises(DataError, match=r'IMG_0001.jpg \(a truncated JPEG'):
        prepare_module.prepare('pairs', str(root), 4, str(out), filename_tmpl='{}_lr', crop_size=0, log=lambda m: None)
    assert not out.exists()

    root = camera_pairs_tree(tmp_path / 'dots')
    for side, suffix in (('HR', ''), ('LR', '_lr')):
        os.rename(root / side / f'IMG_0001{suffix}.png', root / side / f'astro.v1{suffix}.png')
    with pytest.raises(DataError, match=r'astro.v1.*cuts LMDB keys at the first dot'):
        prepare_module.prepare('pairs', str(root), 4, str(out), filename_tmpl='{}_lr', lmdb=True, log=lambda m: None)
    assert not out.exists()


def test_8_prepare_never_deletes_files_it_did_not_write(tmp_path, prep, capsys):
    root = camera_pairs_tree(tmp_path / 'cam')
    out = tmp_path / 'sub'
    args = ['pairs', '--root', root, '--scale', 4, '--out', out, '--filename-tmpl', '{}_lr', '--crop-size', 0]
    assert prep(*args) == 0
    write_png(out / 'HR' / 'my_photo.png', (8, 8, 3))
    before = snapshot(out)
    code = prep(*args)
    assert 'my_photo.png' in code and '--overwrite' in code and snapshot(out) == before
    assert prep(*args, '--overwrite') == 0 and not (out / 'HR' / 'my_photo.png').exists()
    # an LMDB of an earlier --lmdb run would go with a run without --lmdb: asked first
    assert prep(*args, '--lmdb') == 0
    before = snapshot(out)
    code = prep(*args)
    assert 'LR.lmdb' in code and snapshot(out) == before
    # a folder the user made, with other files in it
    mine = tmp_path / 'mine'
    write_png(mine / 'notes.png', (4, 4, 3))
    code = prep('pairs', '--root', root, '--scale', 4, '--out', mine, '--filename-tmpl', '{}_lr', '--crop-size', 0)
    assert 'notes.png' in code and os.listdir(mine) == ['notes.png']
    assert sorted(os.listdir(tmp_path)) == ['cam', 'mine', 'sub']  # no staging folder or lock left beside OUT


def _killed_prepare(root, out, when):
    """Fork a prepare run that is killed (os._exit, no clean-up) right before or right after the final swap."""
    pid = os.fork()
    if pid == 0:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            real = prepare_module._exchange

            def exchange(a, b):
                if when == 'before':
                    os._exit(9)
                result = real(a, b)
                os._exit(9 if result else 8)
            prepare_module._exchange = exchange
            prepare_module.prepare('pairs', str(root), 4, str(out), filename_tmpl='{}_lr', crop_size=16, step=16,
                                   lmdb=True, log=lambda m: None)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status)


def _consistent(out):
    """HR and LR hold exactly the names of meta_info.txt."""
    names = [line.split(' (')[0] for line in (Path(out) / 'meta_info.txt').read_text().splitlines()]
    assert sorted(os.listdir(Path(out) / 'HR')) == sorted(names) == sorted(os.listdir(Path(out) / 'LR'))
    return names


def test_8_a_run_killed_at_the_final_step_leaves_out_old_or_new(tmp_path):
    root = camera_pairs_tree(tmp_path / 'cam')
    out = tmp_path / 'sub'
    prepare_module.prepare('pairs', str(root), 4, str(out), filename_tmpl='{}_lr', crop_size=32, step=32, lmdb=True,
                           log=lambda m: None)
    old = snapshot(out)
    assert _killed_prepare(root, out, 'before') == 9
    assert snapshot(out) == old
    assert _killed_prepare(root, out, 'after') == 9  # the exchange happened: OUT is the new, complete state
    assert len(_consistent(out)) == 2 * 36  # LR 24 px, crops of 4 every 4: 6 x 6 per pair
    ref = tmp_path / 'ref'
    prepare_module.prepare('pairs', str(root), 4, str(ref), filename_tmpl='{}_lr', crop_size=16, step=16, lmdb=True,
                           log=lambda m: None)
    new, expected = snapshot(out), snapshot(ref)
    assert set(new) == set(expected) and all(new[k] == expected[k] for k in expected if not k.endswith('.mdb'))
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith('.sub.prepare_tmp_')]
    assert len(leftovers) == 1 and snapshot(tmp_path / leftovers[0]) == old  # the old OUT, aside
    logged = []
    prepare_module.prepare('pairs', str(root), 4, str(out), filename_tmpl='{}_lr', crop_size=16, step=16, lmdb=True,
                           log=logged.append)
    assert any('Removed the leftovers' in m for m in logged) and sorted(os.listdir(tmp_path)) == ['cam', 'ref', 'sub']


def test_8_without_an_atomic_exchange_a_killed_swap_is_put_back(tmp_path, monkeypatch):
    root = camera_pairs_tree(tmp_path / 'cam')
    out = tmp_path / 'sub'
    prepare_module.prepare('pairs', str(root), 4, str(out), filename_tmpl='{}_lr', crop_size=0, log=lambda m: None)
    old = snapshot(out)
    monkeypatch.setattr(prepare_module, '_exchange', lambda a, b: False)
    real_rename, calls = os.rename, []

    def rename(src, dst):  # killed between moving OUT aside and moving the new one in
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_rename(src, dst)
    monkeypatch.setattr(prepare_module.os, 'rename', rename)
    with pytest.raises(KeyboardInterrupt):
        prepare_module.prepare('pairs', str(root), 4, str(out), filename_tmpl='{}_lr', crop_size=16, step=16,
                               log=lambda m: None)
    monkeypatch.setattr(prepare_module.os, 'rename', real_rename)
    assert not out.exists() and [n for n in os.listdir(tmp_path) if n.startswith('.sub.prepare_old_')]
    logged = []
    prepare_module._recover(str(out), logged.append)
    assert snapshot(out) == old and 'Put back' in logged[0]


def test_8_sigterm_is_held_back_during_the_swap():
    with prepare_module._signals_held() as caught:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    assert caught == [signal.SIGTERM]


def test_9_an_hr_more_than_a_few_pixels_larger_is_an_error(tmp_path):
    root = tmp_path / 'pairs'
    write_png(root / 'HR' / 'a.png', (96, 96, 3))
    write_png(root / 'LR' / 'a.png', (20, 20, 3))
    with pytest.raises(DataError, match=r'expected HR = 4 x LR = 80x80; an HR at most 8 pixels larger'):
        prepare_module.prepare('pairs', str(root), 4, str(tmp_path / 'out'), crop_size=0, log=lambda m: None)
    write_png(root / 'HR' / 'a.png', (83, 86, 3))  # a few pixels: cropped
    summary = prepare_module.prepare('pairs', str(root), 4, str(tmp_path / 'out'), crop_size=0, log=lambda m: None)
    assert summary['cropped_gt'] == 1


def test_10_a_full_disk_does_not_crash_training_and_says_so(tmp_path, monkeypatch, caplog):
    def full(obj, f):
        f.write(b'PK\x03\x04partial')
        raise RuntimeError('[enforce fail at inline_container.cc:664] . unexpected pos 4736 vs 4630')
    monkeypatch.setattr(checkpoint_module.torch, 'save', full)
    monkeypatch.setattr(checkpoint_module.time, 'sleep', lambda s: None)
    logger = logging.getLogger('pytest_hostile_disk')
    path = tmp_path / 'net_g_4.pth'
    with caplog.at_level(logging.WARNING, logger='pytest_hostile_disk'):
        assert checkpoint_module.save_with_retry({'params': {}}, path, logger) is False
    assert 'disk full' in caplog.text and 'free some space' in caplog.text
    assert os.listdir(tmp_path) == []  # nothing partial left
    # any other RuntimeError is a bug, not a full disk: raised
    monkeypatch.setattr(checkpoint_module.torch, 'save', lambda obj, f: (_ for _ in ()).throw(RuntimeError('bug')))
    with pytest.raises(RuntimeError, match='bug'):
        checkpoint_module.save_with_retry({'params': {}}, path, logger)


# ==================================================================================================
# Part 2: raw tracebacks -> messages naming the thing and the fix
def test_inference_arguments(tmp_path, script):
    model = tmp_path / 'net.pth'
    save_basicsr_checkpoint(tiny_d2c(), model)
    img = write_png(tmp_path / 'a.png', (6, 7, 3))
    (tmp_path / 'file').write_text('x')
    base = ['-i', str(img), '--model_path', str(model)]
    with pytest.raises(SystemExit, match='cannot create the output folder'):
        script.main(base + ['-o', str(tmp_path / 'file')])
    with pytest.raises(SystemExit, match='cannot create the output folder'):
        script.main(base + ['-o', str(tmp_path / 'file' / 'sub')])
    with pytest.raises(SystemExit, match='is a folder, not a checkpoint file'):
        script.main(['-i', str(img), '-o', str(tmp_path / 'o'), '--model_path', str(tmp_path)])
    opt = tmp_path / 'net.yml'
    opt.write_text('network_g:\n  type: D2CSR\n  num_feats: 8\n  upscale: 2\n')
    with pytest.raises(SystemExit, match=r'num_feats.*valid options: num_in_ch, num_out_ch, num_feat'):
        script.main(base + ['-o', str(tmp_path / 'o'), '-opt', str(opt)])
    opt.write_text('network_g:\n  type: D2CSR\n   num_feat: [8\n')
    with pytest.raises(SystemExit, match='is not valid YAML'):
        script.main(base + ['-o', str(tmp_path / 'o'), '-opt', str(opt)])
    with pytest.raises(SystemExit, match="--device 'tpu' is not a device; use auto, cpu, cuda"):
        script.main(base + ['-o', str(tmp_path / 'o'), '--device', 'tpu'])


def test_official_pickles_of_the_wrong_shape(tmp_path):
    def refused(payload, error, match, raw=None):
        path = tmp_path / 'x.pkl'
        path.write_bytes(raw if raw is not None else pickle.dumps(payload))
        with pytest.raises(error, match=match):
            load_official(str(path))
    refused({'state_dict_D': 3, 'state_dict_C': {}}, CheckpointFormatError, 'state_dict_D is a int, not a dict')
    refused({'state_dict_D': [1, 2], 'state_dict_C': {}}, CheckpointFormatError, 'state_dict_D is a list')
    refused({'state_dict_D': {'head.0.weight': np.array(['a', 'b'])}, 'state_dict_C': {}}, CheckpointFormatError,
            r"\['head.0.weight'\] is an array of <U1")
    depth = 200_000  # ']' pushes an empty list, 'a' appends it to the one below: 200,000 nested lists
    refused(None, UnsafeCheckpointError, 'nested deeper than 32 levels', raw=b']' * depth + b'a' * (depth - 1) + b'.')


def test_the_authors_pickle_as_pretrain_points_to_the_converter(tmp_path, photo_data):
    pkl = tmp_path / 'D2C-SR_x4.pkl'
    net = D2CSR(**dict({k: v for k, v in TINY_NET.items() if k != 'type'}, mean_shift='learnable'))
    pkl.write_bytes(pickle.dumps(d2csr_to_official(net)))
    opt = model_options(tmp_path, photo_data, pretrain=str(pkl), network=dict(TINY_NET, mean_shift='learnable'))
    with pytest.raises(ValueError, match=r'convert it first with python scripts/convert_official.py'):
        build(opt)


def test_training_options_that_would_fail_later(tmp_path, photo_data):
    def refused(match, **kwargs):
        with pytest.raises(ValueError, match=match):
            build(model_options(tmp_path, photo_data, **kwargs))
    refused(r'network_g:num_feats is not an option of D2CSR \(did you mean num_feat\?\): nothing reads it',
            network=dict(TINY_NET, num_feats=8))
    refused(r'gt_size must be a positive multiple of scale 4.*got 66', **{'datasets:train:gt_size': 66})
    refused(r'scale is 2 but network_g:upscale is 4', scale=2)
    refused(r'num_gpu is 1 but this machine has no usable GPU; set num_gpu: 0 .* --force_yml num_gpu=0', num_gpu=1)
    # weights of another shape: one line naming the first differing tensor
    other = tmp_path / 'other.pth'
    save_basicsr_checkpoint(D2CSR(**dict({k: v for k, v in TINY_NET.items() if k != 'type'}, num_feat=8)), other)
    with pytest.raises(ValueError, match=r'does not fit network_g \(\d+ tensors differ in shape \(e.g. head.weight: '
                       r'\(8, 3, 3, 3\) saved, \(16, 3, 3, 3\) now\)') as info:
        build(model_options(tmp_path, photo_data, pretrain=str(other)))
    assert len(str(info.value)) < 800


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message given without a GPU')
def test_all_problems_are_listed_at_once(photo_data, tmp_path):
    opt = model_options(tmp_path, photo_data, num_gpu=1, scale=2, **{'train:divergence_opt:alpha': float('nan')})
    with pytest.raises(ValueError, match=r'3 problem\(s\)') as info:
        validate_options(opt)
    assert 'num_gpu' in str(info.value) and 'upscale' in str(info.value) and 'alpha' in str(info.value)


def test_gt_size_larger_than_an_image_says_to_lower_gt_size(tmp_path):
    root = camera_pairs_tree(tmp_path / 'cam')  # 96 px HR
    opt = dict(name='cam', type='PairedFolderDataset', dataroot_gt=str(root / 'HR'), dataroot_lq=str(root / 'LR'),
               filename_tmpl='{}_lr', io_backend={'type': 'disk'}, phase='train', scale=4, gt_size=128)
    with pytest.raises(DataError, match=r'gt_size 128 is larger than 2 HR image\(s\).*Lower gt_size to at most 96'):
        build_dataset(opt)
    with pytest.raises(DataError, match=r'gt_size must be a positive multiple of the scale 4'):
        build_dataset(dict(opt, gt_size=50))


def test_a_truncated_resume_state_names_the_file_and_auto_resume(tmp_path):
    from d2csr.pipeline import load_resume_state

    state = tmp_path / '4.state'
    torch.save({'iter': 4, 'epoch': 0}, state)
    state.write_bytes(state.read_bytes()[:100])
    opt = dict(auto_resume=False, num_gpu=0, path=dict(resume_state=str(state), training_states=str(tmp_path),
                                                        models=str(tmp_path)), train={'stage': 'divergence'})
    with pytest.raises(ValueError, match=r'4.state cannot be read .* truncated .*--auto_resume'):
        load_resume_state(opt)


def test_paired_image_dataset_checked_before_the_network_runs(tmp_path):
    def dataset(gt, lq):
        return build_dataset(dict(name='val', type='PairedImageDataset', dataroot_gt=str(gt), dataroot_lq=str(lq),
                                  filename_tmpl='{}', io_backend={'type': 'disk'}, phase='val', scale=4))
    (tmp_path / 'HR').mkdir()
    (tmp_path / 'LR').mkdir()
    with pytest.raises(DataError, match='val: the data set is empty'):
        check_eval_dataset(dataset(tmp_path / 'HR', tmp_path / 'LR'), 4)
    write_png(tmp_path / 'HR' / 'a.png', (40, 40, 3))
    write_png(tmp_path / 'LR' / 'a.png', (12, 12, 3))
    with pytest.raises(DataError, match=r'a.png \(40x40\) / a.png \(12x12\): HR is not 4 x LR'):
        check_eval_dataset(dataset(tmp_path / 'HR', tmp_path / 'LR'), 4)
    write_png(tmp_path / 'HR' / 'a.png', (48, 48, 3))
    check_eval_dataset(dataset(tmp_path / 'HR', tmp_path / 'LR'), 4)
    # the training set: a gt_size larger than an image says to lower gt_size (BasicSR: "Please remove a.png")
    with pytest.raises(DataError, match=r'a.png \(48x48\) is smaller than gt_size 64: lower gt_size'):
        check_eval_dataset(dataset(tmp_path / 'HR', tmp_path / 'LR'), 4, gt_size=64)


def test_prepare_names_broken_links_folders_and_a_zero_scale(tmp_path, prep):
    root = camera_pairs_tree(tmp_path / 'cam')
    (root / 'LR' / 'IMG_0001_lr.png').unlink()
    os.symlink(tmp_path / 'nowhere.png', root / 'LR' / 'IMG_0001_lr.png')
    (root / 'LR' / 'IMG_0002_lr.png').unlink()
    (root / 'LR' / 'IMG_0002_lr.png').mkdir()
    code = prep('pairs', '--root', root, '--scale', 4, '--out', tmp_path / 'out', '--filename-tmpl', '{}_lr')
    assert 'IMG_0001_lr.png (a broken symbolic link)' in code and 'IMG_0002_lr.png (a folder' in code
    assert 'HR without LR' not in code
    code = prep('pairs', '--root', root, '--scale', 0, '--out', tmp_path / 'out')
    assert '--scale must be a positive integer' in code
    assert not (tmp_path / 'out').exists()


def test_train_entry_point_gt_size_larger_than_the_images(photo_data, tmp_path):
    """Through d2csr/train.py with BasicSR's PairedImageDataset: stopped before the first batch, naming gt_size."""
    from conftest import run_entry, unique_name, write_options

    opt = tiny_options(photo_data, unique_name('gt_size'), **{'datasets:train:gt_size': 400})
    proc = run_entry('train', '-opt', write_options(opt, tmp_path / 'train.yml'), check=False)
    assert proc.returncode != 0
    assert 'is smaller than gt_size 400: lower gt_size' in proc.stderr and 'Please remove' not in proc.stderr
    # an empty validation folder is named at start, not by an UnboundLocalError at the first validation
    (tmp_path / 'empty_HR').mkdir()
    (tmp_path / 'empty_LR').mkdir()
    opt = tiny_options(photo_data, unique_name('empty_val'), **{'datasets:val:dataroot_gt': str(tmp_path / 'empty_HR'),
                                                                'datasets:val:dataroot_lq': str(tmp_path / 'empty_LR')})
    proc = run_entry('train', '-opt', write_options(opt, tmp_path / 'train.yml'), check=False)
    assert proc.returncode != 0 and 'photos_val: the data set is empty' in proc.stderr
    assert not re.search(r'iter:\s+\d+,', proc.stdout + proc.stderr)  # stopped before the first iteration


# ==================================================================================================
# Issue 21, round 3 (options, resume, LMDB, file order, iteration count): every case named, with the fix, no
# traceback, nothing written. The multi-process cases are in tests/test_distributed.py.
def entry_yml(opt, path, raw=None):
    """Write ``opt`` to ``path`` as YAML; ``raw`` ``{'key: value': 'key: text'}`` replaces lines as a user writes
    them (``lr: 1e-4`` unquoted, which YAML reads as text)."""
    from conftest import write_options

    path = write_options(opt, path)
    text = path.read_text()
    for old, new in (raw or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


def test_21_every_option_problem_is_listed_at_once_before_anything_is_written(photo_data, tmp_path):
    from conftest import experiment_dir, run_entry, unique_name

    name = unique_name('typos')
    opt = tiny_options(photo_data, name)
    train, data = opt['train'], opt['datasets']
    train.update(ema_decy=0.999, use_grad_clip=True, pixel_opt={'type': 'MSELoss'},
                 optim_c={'type': 'Adam', 'lr': 2e-4}, total_iters=train.pop('total_iter'))
    train['divergence_opt']['alpah'] = train['divergence_opt'].pop('alpha')
    data['train']['gt_sze'] = data['train'].pop('gt_size')
    data['train']['batch_size_per_gpu'] = '4'
    del data['val']['dataroot_gt']
    yml = entry_yml(opt, tmp_path / 'typos.yml', raw={'lr: 0.0001': 'lr: 1e-4'})
    proc = run_entry('train', '-opt', yml, check=False)
    err = proc.stderr
    assert proc.returncode == 1 and 'Traceback' not in err, err[-3000:]
    expected = [
        'train:ema_decy is not an option of D2CModel training (did you mean ema_decay?): nothing reads it',
        'train:use_grad_clip is not an option of D2CModel training: nothing reads it, so it would be ignored',
        'train:pixel_opt: D2CModel does not read pixel_opt',
        'train:optim_c is read by stage joint only; stage divergence would ignore it',
        'train:total_iters is not an option of D2CModel training (did you mean total_iter?)',
        'train:divergence_opt:alpah is not an option of DivergenceLoss (did you mean alpha?)',
        'datasets:train:gt_sze is not an option (did you mean gt_size?)',
        "datasets:train:batch_size_per_gpu is the text '4' (in quotes), not a number; write 4 without quotes",
        'datasets:val:dataroot_gt is missing (the HR folder or HR LMDB)',
        "train:optim_g:lr is the text '1e-4', not a number: YAML reads a number in exponent form without a dot",
    ]
    for line in expected:
        assert line in err, line
    assert f'{len(expected)} problem(s) in the options, all listed' in err, err
    assert 'total_iter is missing' not in err and 'gt_size is missing' not in err  # said with the typo
    assert not experiment_dir(name).exists()


def test_21_the_original_backbone_baselines_get_the_same_check(photo_data, tmp_path):
    """SRModel runs (options/train_EDSR_x4.yml and the other baselines) through d2csr/train.py."""
    from d2csr.options_check import check_entry_options

    opt = yaml.safe_load((Path(__file__).parents[1] / 'options' / 'train_EDSR_x4.yml').read_text())
    opt['network_g'].update(num_feat=8, num_block=1)
    for phase, root in (('train', photo_data / 'train'), ('val', photo_data / 'val')):  # folder pairs of photos
        for key in ('dataroot', 'split', 'lq_at_gt_size'):
            opt['datasets'][phase].pop(key)
        opt['datasets'][phase].update(type='PairedFolderDataset', dataroot_gt=str(root / 'HR'),
                                      dataroot_lq=str(root / 'LR'))
    opt['num_gpu'] = 0
    good = entry_yml(opt, tmp_path / 'edsr.yml')
    assert check_entry_options(True, ['-opt', str(good)])['model_type'] == 'SRModel'
    opt['train']['ema_decy'] = opt['train'].pop('ema_decay')
    del opt['train']['pixel_opt']
    opt['val']['metrics']['psnr']['crop_boder'] = opt['val']['metrics']['psnr'].pop('crop_border')
    bad = entry_yml(opt, tmp_path / 'edsr_bad.yml', raw={'lr: 0.0001': 'lr: 1e-4'})
    with pytest.raises(SystemExit) as info:
        check_entry_options(True, ['-opt', str(bad)])
    message = str(info.value.code)
    for line in ('train:ema_decy is not an option of SRModel training (did you mean ema_decay?)',
                 'train: SRModel needs a loss: pixel_opt', "train:optim_g:lr is the text '1e-4'",
                 'val:metrics:psnr:crop_boder is not an option of calculate_psnr (did you mean crop_border?)'):
        assert line in message, line
    assert 'crop_border is missing' not in message  # said with the misspelt key
    # --force_yml is applied as BasicSR applies it, and checked too (its 1e-4 is text as well)
    with pytest.raises(SystemExit, match=r"train:optim_g:lr is the text '1e-4'.*\(in --force_yml: 0.0001\)"):
        check_entry_options(True, ['-opt', str(good), '--force_yml', 'train:optim_g:lr=1e-4'])
    with pytest.raises(SystemExit, match=r'--force_yml trian:lr=1: the options file has no section trian'):
        check_entry_options(True, ['-opt', str(good), '--force_yml', 'trian:lr=1'])


def test_21_test_py_refuses_no_weights_and_names_a_path_typo(photo_data, tmp_path):
    from conftest import results_dir, run_entry, unique_name
    from d2csr.options import test_options

    weights = tmp_path / 'net.pth'
    save_basicsr_checkpoint(D2CSR(**{k: v for k, v in TINY_NET.items() if k != 'type'}), weights)
    name = unique_name('test_no_weights')
    opt = test_options(name, photo_data, TINY_NET, None, save_img=False)
    proc = run_entry('test', '-opt', entry_yml(opt, tmp_path / 'none.yml'), check=False)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert 'path:pretrain_network_g is not set: d2csr/test.py would score a randomly initialised network' \
        in proc.stderr
    opt['path'] = dict(pretrain_netwrok_g=str(weights), strict_load_g=True)  # a typo: BasicSR made it a folder
    proc = run_entry('test', '-opt', entry_yml(opt, tmp_path / 'typo.yml'), check=False)
    assert proc.returncode == 1 and 'FileExistsError' not in proc.stderr and 'Traceback' not in proc.stderr
    assert 'path:pretrain_netwrok_g is not an option (did you mean pretrain_network_g?)' in proc.stderr
    assert not results_dir(name).exists()


@pytest.fixture(scope='module')
def short_epochs_run(photo_data, tmp_path_factory):
    """3 training pairs, batch 2: BasicSR counts 2 iterations an epoch, its loader gives 1 (the last partial
    batch is dropped). total_iter 4, a checkpoint every 2."""
    from conftest import experiment_dir, run_entry, unique_name

    tmp = tmp_path_factory.mktemp('short_epochs')
    name = unique_name('short_epochs')
    opt = tiny_options(photo_data, name, **{'datasets:train:dataset_enlarge_ratio': 1})
    del opt['datasets']['val'], opt['val']
    proc = run_entry('train', '-opt', entry_yml(opt, tmp / 'train.yml'))
    return dict(proc=proc, opt=opt, exp=experiment_dir(name), tmp=tmp)


def test_21_a_run_does_exactly_total_iter_iterations(short_epochs_run):
    proc, exp = short_epochs_run['proc'], short_epochs_run['exp']
    log = proc.stdout + proc.stderr
    assert "(BasicSR's statistics above count 2, rounded up: its 3 epochs would stop after 3 iterations, 1 or " \
           "25.0% short)" in log
    assert 'exactly total_iter = 4 iterations' in log
    assert [int(i) for i in re.findall(r'iter:\s+(\d+),', log)] == [1, 2, 3, 4]
    assert (exp / 'models' / 'net_g_4.pth').is_file() and (exp / 'training_states' / '4.state').is_file()


def test_21_an_empty_resume_state_and_a_truncated_network_are_named(short_epochs_run, tmp_path):
    from conftest import run_entry
    from d2csr.pipeline import load_resume_state
    from d2csr.utils.errors import ResumeError

    exp, opt = short_epochs_run['exp'], dict(short_epochs_run['opt'])
    empty = tmp_path / '2.state'
    empty.write_bytes(b'')
    opt['path'] = dict(opt['path'], resume_state=str(empty))
    before = sorted(p.name for p in exp.rglob('*'))
    proc = run_entry('train', '-opt', entry_yml(opt, tmp_path / 'resume.yml'), check=False)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr and 'IndexError' not in proc.stderr
    assert f'path:resume_state {empty} cannot be read (empty: 0 bytes)' in proc.stderr
    assert '--auto_resume' in proc.stderr
    assert sorted(p.name for p in exp.rglob('*')) == before  # nothing written
    # a state whose network file was cut short
    models = tmp_path / 'models'
    models.mkdir()
    (models / 'net_g_2.pth').write_bytes((exp / 'models' / 'net_g_2.pth').read_bytes()[:3000])
    parsed = dict(opt, auto_resume=False, path=dict(resume_state=str(exp / 'training_states' / '2.state'),
                                                    training_states=str(tmp_path), models=str(models)))
    with pytest.raises(ResumeError, match=r'its network .*net_g_2.pth is unreadable \(.*\) \(a save that was '
                                          r'interrupted.*--auto_resume, which skips incomplete pairs'):
        load_resume_state(parsed)


def test_21_a_file_size_limit_is_named_not_called_a_full_disk(tmp_path, monkeypatch, caplog):
    resource = pytest.importorskip('resource')
    monkeypatch.setattr(checkpoint_module.time, 'sleep', lambda s: None)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    logger = logging.getLogger('pytest_hostile_fsize')
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # ulimit -f: Python ignores SIGXFSZ, writes get EFBIG
    try:
        with caplog.at_level(logging.WARNING, logger='pytest_hostile_fsize'):
            saved = checkpoint_module.save_with_retry({'w': torch.zeros(100_000)}, tmp_path / 'net_g_2.pth', logger)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert saved is False and os.listdir(tmp_path) == []
    assert 'failed (file-size limit)' in caplog.text and 'disk full' not in caplog.text
    assert 'file-size limit of 100,000 bytes (ulimit -f)' in caplog.text and 'ulimit -f unlimited' in caplog.text


@pytest.fixture
def photo_lmdbs(photo_data, tmp_path):
    """BasicSR LMDBs (HR.lmdb, LR.lmdb, keys = names without .png) of the x4 training photos."""
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    names = sorted(p.name for p in (photo_data / 'train' / 'HR').iterdir())
    for side in ('HR', 'LR'):
        make_lmdb_from_imgs(str(photo_data / 'train' / side), str(tmp_path / f'{side}.lmdb'), names,
                            [n[:-4] for n in names])
    return tmp_path / 'HR.lmdb', tmp_path / 'LR.lmdb'


def lmdb_dataset(gt, lq, scale=4, phase='train'):
    return build_dataset(dict(name='lmdb_train', type='PairedImageDataset', dataroot_gt=str(gt), dataroot_lq=str(lq),
                              io_backend={'type': 'lmdb'}, phase=phase, scale=scale, gt_size=64, use_hflip=True,
                              use_rot=True))


def test_21_lmdbs_are_checked_before_training(photo_lmdbs, tmp_path, capsys):
    import shutil

    from d2csr.data.eval_check import check_lmdb_roots

    gt, lq = photo_lmdbs
    check_eval_dataset(lmdb_dataset(gt, lq), 4, gt_size=64)  # as made: fine
    with pytest.raises(DataError, match=r'HR is not 2 x LR by meta_info.txt \(these LMDBs were made for scale 4\)'):
        check_eval_dataset(lmdb_dataset(gt, lq, scale=2), 2)
    # meta_info.txt naming keys data.mdb does not hold (BasicSR: a TypeError from imfrombytes at that batch)
    for lmdb_dir in (gt, lq):
        with open(lmdb_dir / 'meta_info.txt', 'a') as f:
            f.write('ghost.png (400,400,3) 1\n')
    with pytest.raises(DataError, match=r'HR LMDB .*HR.lmdb: 1 of the 4 key\(s\) the data set reads are not in its '
                                        r'data.mdb \(ghost\).*rebuild it with python scripts/prepare_dataset.py'):
        check_eval_dataset(lmdb_dataset(gt, lq), 4)
    # a truncated data.mdb (the loader would die of a bus error) and one that is not an LMDB
    for lmdb_dir in (gt, lq):
        lines = (lmdb_dir / 'meta_info.txt').read_text().splitlines()[:-1]
        (lmdb_dir / 'meta_info.txt').write_text('\n'.join(lines) + '\n')
    cut = tmp_path / 'cut.lmdb'
    shutil.copytree(gt, cut)
    with open(cut / 'data.mdb', 'r+b') as f:
        f.truncate(8192)
    with pytest.raises(DataError, match=r'HR LMDB .*cut.lmdb/data.mdb is truncated \(8,192 of its [\d,]+ bytes'):
        check_eval_dataset(lmdb_dataset(cut, lq), 4)
    (cut / 'data.mdb').write_bytes(b'\x00' * 8192 + os.urandom(8192))
    with pytest.raises(DataError, match=r'cut.lmdb/data.mdb is not a readable LMDB \(.*\); it is corrupt'):
        check_eval_dataset(lmdb_dataset(cut, lq), 4)
    # HR and LR LMDBs of different pairs: named before BasicSR builds the data set (its AssertionError)
    (lq / 'meta_info.txt').write_text((lq / 'meta_info.txt').read_text().replace('coins.png', 'coin.png'))
    with pytest.raises(DataError, match=r'do not hold the same keys: 1 only in the HR LMDB \(coins\); 1 only in the '
                                        r'LR LMDB \(coin\)'):
        check_lmdb_roots(dict(name='x', type='PairedImageDataset', dataroot_gt=str(gt), dataroot_lq=str(lq),
                              io_backend={'type': 'lmdb'}))


def test_21_an_lmdb_check_accepts_what_d2csrs_data_set_accepts(tmp_path):
    """d2csr's PairedFolderDataset on LMDBs crops an HR a few pixels larger than scale x LR (and says so); the LMDB
    check before training must not refuse what the data set itself accepted."""
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    rng = np.random.default_rng(0)
    for side, size in (('HR', 162), ('LR', 40)):  # 162 = 4 x 40 + 2: cropped to 160 by the data set
        (tmp_path / side).mkdir()
        for name in ('a', 'b'):
            cv2.imwrite(str(tmp_path / side / f'{name}.png'), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        make_lmdb_from_imgs(str(tmp_path / side), str(tmp_path / f'{side}.lmdb'), ['a.png', 'b.png'], ['a', 'b'])
    dataset = build_dataset(dict(name='lmdb_cropped', type='PairedFolderDataset', dataroot_gt=str(tmp_path / 'HR.lmdb'),
                                 dataroot_lq=str(tmp_path / 'LR.lmdb'), io_backend={'type': 'lmdb'}, phase='train',
                                 scale=4, gt_size=64, use_hflip=False, use_rot=False))
    check_eval_dataset(dataset, 4, gt_size=64)  # before training, as the entry points run it: no DataError
    assert dataset[0]['gt'].shape[-2:] == (64, 64)


def test_21_an_lmdb_problem_stops_the_train_entry_point_before_the_first_batch(photo_data, photo_lmdbs, tmp_path):
    from conftest import run_entry, unique_name

    gt, lq = photo_lmdbs
    for lmdb_dir in (gt, lq):
        with open(lmdb_dir / 'meta_info.txt', 'a') as f:
            f.write('ghost.png (400,400,3) 1\n')
    opt = tiny_options(photo_data, unique_name('lmdb_keys'), **{'datasets:train:io_backend': {'type': 'lmdb'},
                                                                 'datasets:train:dataroot_gt': str(gt),
                                                                 'datasets:train:dataroot_lq': str(lq)})
    proc = run_entry('train', '-opt', entry_yml(opt, tmp_path / 'lmdb.yml'), check=False)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert 'error: photos_train (PairedImageDataset, LMDB, scale 4): 2 problem(s), checked before training' \
        in proc.stderr and '(ghost)' in proc.stderr
    assert not re.search(r'iter:\s+\d+,', proc.stdout + proc.stderr)


def test_21_folder_order_does_not_depend_on_the_file_system(photo_data, monkeypatch):
    """BasicSR's PairedImageDataset lists folders with os.scandir: another order on another node's copy."""
    import basicsr.data.data_util as data_util

    from d2csr.pipeline import create_train_val_dataloader

    scandir = data_util.scandir
    monkeypatch.setattr(data_util, 'scandir', lambda *a, **k: reversed(list(scandir(*a, **k))))
    opt = tiny_options(photo_data, 'order')
    opt.update(dist=False, rank=0, world_size=1, num_gpu=0)
    for phase, dataset in opt['datasets'].items():
        dataset.update(phase=phase, scale=4)
    reversed_paths = build_dataset(opt['datasets']['train']).paths
    assert reversed_paths != sorted(reversed_paths, key=lambda p: p['gt_path'])  # the scan order differs
    loader = create_train_val_dataloader(opt, logging.getLogger('pytest_order'))[0]
    assert loader.dataset.paths == sorted(reversed_paths, key=lambda p: p['gt_path'])


# ==================================================================================================
# Issues 21 and 24 (the converter and prepare_dataset's OUT): files appear whole or not at all, clear messages,
# and the authors' BGR weights from an older converter refused where a training or test run loads them
OFFICIAL_CKPT = Path(__file__).parent / 'data' / 'official_megengine_x4_f32_b2' / 'checkpoint.pkl'


def test_converter_under_a_file_size_limit_leaves_no_partial_file(tmp_path, capsys):
    """ulimit -f below the checkpoint's size: the kernel refuses the write (EFBIG; Python ignores SIGXFSZ).
    The soft limit of this process is lowered for the conversion and put back."""
    import resource

    out = tmp_path / 'D2C_official_x4.pth'
    out.write_bytes(b'the previous file')
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = 1 << 20  # 1 MiB; the converted fixture is about 4.6 MB
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(SystemExit) as info:
            load_script('scripts/convert_official.py').main([str(OFFICIAL_CKPT), str(out), '--force'])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert 'the file-size limit (ulimit -f) is smaller than the checkpoint' in str(info.value.code)
    assert out.read_bytes() == b'the previous file'  # whole or not at all: the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ['D2C_official_x4.pth']  # no temporary left
    # without the limit the same command writes it
    assert load_script('scripts/convert_official.py').main([str(OFFICIAL_CKPT), str(out), '--force']) == 0
    assert out.stat().st_size > limit and torch.load(out, weights_only=True)['d2csr']['channel_order'] == 'RGB'


@pytest.mark.parametrize('error, message', [(28, 'the disk is full'), (13, 'permission denied')])
def test_converter_write_failures_are_a_sentence_and_write_nothing(tmp_path, monkeypatch, error, message):
    """A full disk (ENOSPC) or a refused write (EACCES) while the checkpoint is written: a message, no file."""
    def failing_fsync(fd):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, 'fsync', failing_fsync)
    out = tmp_path / 'out' / 'D2C_official_x4.pth'
    with pytest.raises(SystemExit, match=f'could not write .*D2C_official_x4.pth: {message}. Nothing was written'):
        load_script('scripts/convert_official.py').main([str(OFFICIAL_CKPT), str(out)])
    assert not out.exists() and os.listdir(tmp_path / 'out') == []


def test_converter_output_and_key_problems_are_named(tmp_path):
    convert = load_script('scripts/convert_official.py').main
    # an output path that is a folder: named, with the file to give instead (also with --force)
    for extra in ([], ['--force']):
        with pytest.raises(SystemExit, match=r'is a folder; give the file to write, e.g. .*D2C_official_x4.pth'):
            convert([str(OFFICIAL_CKPT), str(tmp_path), *extra])
    # a key that is no parameter name (an integer) in the pickle
    payload = d2csr_to_official(tiny_d2c(mean_shift='learnable'))
    payload['state_dict_D'][0] = payload['state_dict_D'].pop('head.0.weight')
    pkl = tmp_path / 'int_key.pkl'
    pkl.write_bytes(pickle.dumps(payload))
    with pytest.raises(SystemExit, match=r"state_dict_D has 1 key\(s\) that are not parameter names \(e.g. 0, a int\)"):
        convert([str(pkl), str(tmp_path / 'out.pth')])
    assert not (tmp_path / 'out.pth').exists()
    # an output folder that cannot be written (a real one: root may write anywhere, so only as another user)
    if os.geteuid() != 0:
        locked = tmp_path / 'locked'
        locked.mkdir(mode=0o555)
        with pytest.raises(SystemExit, match=r'the folder .*locked is not writable; choose another output path'):
            convert([str(OFFICIAL_CKPT), str(locked / 'x.pth')])


def test_an_old_bgr_conversion_as_pretrain_is_refused_with_the_command(tmp_path, photo_data):
    from d2csr.convert import swap_red_blue

    official = load_official(str(OFFICIAL_CKPT))
    old = tmp_path / 'D2C_official_x4.pth'  # what convert_official.py wrote before the colour swap
    torch.save({'params': {k: v.contiguous() for k, v in swap_red_blue(official.state_dict()).items()}}, old)
    network = dict(official.network_options)
    with pytest.raises(CheckpointFormatError, match=r'older scripts/convert_official.py.*BGR.*python '
                       r'scripts/convert_official.py .*D2C_official_x4.pth .*D2C_official_x4_rgb.pth'):
        build(model_options(tmp_path, photo_data, stage='convergence', pretrain=str(old), network=network))


def test_prepare_writes_through_a_symlinked_out_and_keeps_its_permissions(tmp_path, prep):
    import stat

    root = camera_pairs_tree(tmp_path / 'cam')
    real = tmp_path / 'storage' / 'prepared'
    real.mkdir(parents=True)
    os.chmod(real, 0o750)
    link = tmp_path / 'out'
    os.symlink(real, link)
    args = ('pairs', '--root', root, '--scale', 4, '--filename-tmpl', '{}_lr', '--crop-size', 0)
    for _ in range(2):  # a first run, and a run replacing its output
        assert prep(*args, '--out', link) == 0
        assert link.is_symlink() and os.readlink(link) == str(real)
        assert sorted(os.listdir(real / 'HR')) == ['IMG_0001.png', 'IMG_0002.png']
        assert stat.S_IMODE(os.stat(real).st_mode) == 0o750
        assert sorted(os.listdir(real.parent)) == ['prepared']  # no staging or old folder left beside it
    # a new OUT gets a new folder's permissions (the umask's), not the staging folder's 0700
    umask = os.umask(0o022)
    try:
        assert prep(*args, '--out', tmp_path / 'fresh') == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / 'fresh').st_mode) == 0o755


# ==================================================================================================
# Round 3, inference (issue 21): a truncated JPEG, a phone's EXIF orientation, outputs whole or not at all, a corrupt
# options file beside a checkpoint, a wrong --param_key. (Memory refusals and out-of-memory: test_large_images.py.)
def test_r3_inference_skips_a_truncated_jpeg(tmp_path, script, capsys):
    model = tmp_path / 'net.pth'
    save_basicsr_checkpoint(tiny_d2c(), model)
    folder = tmp_path / 'in'
    write_png(folder / 'good.png', (6, 7, 3))
    photo = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8), (5, 5), 0)
    ok, buf = cv2.imencode('.jpg', photo, [cv2.IMWRITE_JPEG_QUALITY, 95])
    (folder / 'photo.jpg').write_bytes(buf.tobytes()[:len(buf) // 2])  # header intact, half the data
    assert cv2.imread(str(folder / 'photo.jpg')) is not None  # OpenCV alone would fill the rest with grey
    with pytest.raises(UnreadableImage, match='truncated JPEG'):
        read_image(str(folder / 'photo.jpg'))
    assert script.main(['-i', str(folder), '-o', str(tmp_path / 'out'), '--model_path', str(model)]) == 1
    stdout = capsys.readouterr().out
    assert '1 of 2 images written' in stdout and 'photo.jpg: a truncated JPEG' in stdout.split('skipped:')[1]
    assert sorted(os.listdir(tmp_path / 'out')) == ['good_D2CSR.png']


def test_r3_exif_orientation_is_applied_on_reading_and_said(tmp_path, script, capsys):
    from PIL import Image as PILImage, ImageOps

    base = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    for orientation in range(1, 9):  # every orientation, against Pillow's own exif_transpose (lossless PNGs)
        path = tmp_path / f'o{orientation}.png'
        img = PILImage.fromarray(base)
        exif = img.getexif()
        exif[0x0112] = orientation
        img.save(path, exif=exif)
        with PILImage.open(path) as opened:
            expected = np.asarray(ImageOps.exif_transpose(opened))
        got = read_image(str(path))
        assert np.array_equal(np.rint(got.rgb * 255).astype(np.uint8), expected), orientation
        assert (f'EXIF orientation {orientation} applied' in got.note) == (orientation != 1)
    # a phone's photo: a JPEG stored landscape with orientation 6 (shown portrait) comes out portrait
    model = tmp_path / 'net.pth'
    save_basicsr_checkpoint(tiny_d2c(), model)
    phone = tmp_path / 'phone'
    phone.mkdir()
    img = PILImage.fromarray(np.repeat(np.linspace(0, 255, 24, dtype=np.uint8)[None, :, None], 16, 0).repeat(3, 2))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(phone / 'IMG_0001.jpg', exif=exif, quality=95)
    assert script.main(['-i', str(phone), '-o', str(tmp_path / 'out'), '--model_path', str(model)]) == 0
    assert cv2.imread(str(tmp_path / 'out' / 'IMG_0001_D2CSR.jpg')).shape == (48, 32, 3)  # 24 x 16 upright, x2
    assert 'IMG_0001.jpg: EXIF orientation 6 applied (rotated 90 degrees clockwise' in capsys.readouterr().out


def test_r3_sr_images_appear_whole_or_not_at_all(tmp_path, script, monkeypatch, capsys):
    import errno

    import d2csr.utils.atomic as atomic

    model = tmp_path / 'net.pth'
    save_basicsr_checkpoint(tiny_d2c(), model)
    image = write_png(tmp_path / 'in' / 'a.png', (6, 7, 3), 10)
    out = tmp_path / 'out'
    assert script.main(['-i', str(image), '-o', str(out), '--model_path', str(model)]) == 0
    before = snapshot(out)
    write_png(image, (6, 7, 3), 200)  # a new input: a new result, which the full disk will not let through

    def full_disk(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(atomic.os, 'fsync', full_disk)
    assert script.main(['-i', str(image), '-o', str(out), '--model_path', str(model)]) == 1
    reason = capsys.readouterr().out.split('skipped:')[1]
    assert 'a_D2CSR.png' in reason and 'No space left on device' in reason
    assert snapshot(out) == before  # the previous result, whole; no partial file, no temporary left


def test_r3_a_corrupt_options_file_beside_the_checkpoint_is_named(tmp_path, script):
    network = dict(type='D2CSR', num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2)
    ckpt = _run_folder(tmp_path, tiny_d2c(), {'train_D2C.yml': network})
    saved = ckpt.parent.parent / 'train_D2C.yml'
    saved.write_text('name: run\nnetwork_g:\n  type: D2CSR\n   num_feat: [8\n')
    with pytest.raises(ValueError, match=r'train_D2C.yml \(.*not valid YAML.*Repair it, or pass .* with -opt'):
        load_network(str(ckpt))
    img = write_png(tmp_path / 'a.png', (6, 7, 3))
    with pytest.raises(SystemExit, match='train_D2C.yml'):
        script.main(['-i', str(img), '-o', str(tmp_path / 'o'), '--model_path', str(ckpt)])
    saved.write_text('name: run\nnote: no network here\n')  # a readable YAML without network_g: not a candidate
    assert load_network(str(ckpt))[2].startswith('inferred from the weights')


def test_r3_a_wrong_param_key_lists_the_entries_present(tmp_path, script):
    net = tiny_d2c()
    img = write_png(tmp_path / 'a.png', (6, 7, 3))

    def run(model, key):
        with pytest.raises(SystemExit) as exit_:
            script.main(['-i', str(img), '-o', str(tmp_path / 'o'), '--model_path', str(model), '--param_key', key])
        return str(exit_.value.code)

    torch.save({'params': net.state_dict(), 'params_ema': net.state_dict(), 'iter': 4}, tmp_path / 'ckpt.pth')
    message = run(tmp_path / 'ckpt.pth', 'ema')
    assert "has no 'ema' entry (it has ['params', 'params_ema']; other entries: ['iter'])" in message
    torch.save(net.state_dict(), tmp_path / 'bare.pth')
    message = run(tmp_path / 'bare.pth', 'params')
    assert 'is a bare state dict' in message and 'leave --param_key out' in message and 'head.weight' not in message
    (tmp_path / 'official.pkl').write_bytes(pickle.dumps(d2csr_to_official(tiny_d2c(mean_shift='learnable'))))
    assert "the authors' MegEngine pickle (entries state_dict_D, state_dict_C)" in run(tmp_path / 'official.pkl', 'x')
    # beside a training run's options: the entries, not a misleading "the options do not fit"
    ckpt = _run_folder(tmp_path / 'exp', net, {'train.yml': dict(type='D2CSR', num_feat=8, num_group=1, num_block=1,
                                                                  squeeze_factor=4, upscale=2)})
    message = run(ckpt, 'params_ema')
    assert "has no 'params_ema' entry (it has ['params']" in message and 'does not fit' not in message
