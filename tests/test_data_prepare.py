"""scripts/prepare_dataset.py on miniature RealSR / DRealSR / D2CRealSR / camera-pair trees: consistent
sub-images, LMDBs that BasicSR's own PairedImageDataset reads, identical re-runs, interrupted and killed runs
that leave --out as it was, and its errors. In-process (the script's main()), except a forked killed run."""
import importlib.util
import os
import shutil
import time
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
import torch

from basicsr.data import build_dataset
from conftest import ROOT
import d2csr.data.prepare as prepare_module
from data_trees import camera_pairs_tree, d2crealsr_tree, drealsr_tree, read_rgb, realsr_tree, write_pair_list


@pytest.fixture(scope='module')
def cli():
    spec = importlib.util.spec_from_file_location('prepare_dataset_cli', ROOT / 'scripts' / 'prepare_dataset.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp('prepare')
    return dict(realsr=realsr_tree(root / 'RealSR_V3'), old=realsr_tree(root / 'RealSR_old', lq_at_gt_size=True),
                drealsr=drealsr_tree(root / 'DRealSR'), d2c=d2crealsr_tree(root / 'D2CRealSR'),
                cam=camera_pairs_tree(root / 'cam'))


@pytest.fixture
def run(cli, capsys):
    """``run(*argv)`` -> ``(exit code, stdout, stderr)`` of the script's main()."""
    def _run(*argv):
        code = 0
        try:
            cli.main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        err = captured.err
        if isinstance(code, str):  # sys.exit('error: ...') prints the message and exits 1
            err, code = err + code, 1
        return code, captured.out, err
    return _run


def snapshot(out):
    """Every file under ``out`` (relative path -> bytes)."""
    out = Path(out)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob('*')) if p.is_file()}


def lmdb_items(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = {k.decode(): bytes(v) for k, v in txn.cursor()}
    env.close()
    return items


def build(**opt):
    return build_dataset(dict(dict(name='prepared', type='PairedImageDataset', scale=4, phase='val',
                                   io_backend={'type': 'disk'}), **opt))


def prepare_realsr(run, trees, out, *extra):
    code, stdout, stderr = run('realsr', '--root', trees['realsr'], '--scale', 4, '--out', out, '--crop-size', 48,
                               '--step', 24, *extra)
    assert code == 0, stderr
    return stdout


def test_sub_images_are_consistent_pairs_with_progress_and_summary(run, trees, tmp_path):
    out = tmp_path / 'RealSR_x4_sub'
    stdout = prepare_realsr(run, trees, out)
    names = sorted(p.name for p in (out / 'HR').iterdir())
    assert names == sorted(p.name for p in (out / 'LR').iterdir())
    # LR 24x24, crop 12 step 6: rows/cols 0, 6, 12 -> 9 sub-images per pair, 3 pairs
    assert len(names) == 27 and names[:2] == ['Canon_001_s001.png', 'Canon_001_s002.png']
    v3 = trees['realsr'] / 'Canon' / 'Train' / '4'
    hr, lr = read_rgb(v3 / 'Canon_001_HR.png'), read_rgb(v3 / 'Canon_001_LR4.png')
    # s005 is the middle one: LR rows/cols 6..18, HR rows/cols 24..72
    assert np.array_equal(read_rgb(out / 'LR' / 'Canon_001_s005.png'), lr[6:18, 6:18])
    assert np.array_equal(read_rgb(out / 'HR' / 'Canon_001_s005.png'), hr[24:72, 24:72])
    # Canon_002's HR is 99x99 for a 24x24 LR: cropped to 96x96, so the last sub-image ends at 96, not 99
    hr2 = read_rgb(v3 / 'Canon_002_HR.png')
    assert hr2.shape[:2] == (99, 99)
    assert np.array_equal(read_rgb(out / 'HR' / 'Canon_002_s009.png'), hr2[48:96, 48:96])
    meta = (out / 'meta_info.txt').read_text().splitlines()
    assert len(meta) == 27 and meta[0] == 'Canon_001_s001.png (48,48,3)'

    assert '[1/3] Canon_001: 9 sub-image pair(s)' in stdout and '[3/3] Nikon_001: 9 sub-image pair(s)' in stdout
    assert 'Done: 3 pairs -> 27 sub-image pairs (HR 48px step 24, LR 12px step 6)' in stdout
    assert 'HR cropped to 4 x LR: 1 pair(s)' in stdout
    total = sum(len(v) for v in snapshot(out).values())
    assert f'{total:,} bytes in all' in stdout
    # BasicSR's own PairedImageDataset reads the folders unchanged
    ds = build(dataroot_gt=str(out / 'HR'), dataroot_lq=str(out / 'LR'))
    assert len(ds) == 27 and ds[4]['gt'].shape == (3, 48, 48) and ds[4]['lq'].shape == (3, 12, 12)


def test_lmdb_holds_the_same_images_and_basicsr_reads_it(run, trees, tmp_path):
    out = tmp_path / 'sub'
    prepare_realsr(run, trees, out, '--lmdb')
    for side in ('HR', 'LR'):
        meta = (out / f'{side}.lmdb' / 'meta_info.txt').read_text().splitlines()
        assert len(meta) == 27
        assert meta[0] == ('Canon_001_s001.png (48,48,3) 1' if side == 'HR' else 'Canon_001_s001.png (12,12,3) 1')
        items = lmdb_items(out / f'{side}.lmdb')
        assert sorted(items) == sorted(p.stem for p in (out / side).iterdir())
        img = cv2.imdecode(np.frombuffer(items['Nikon_001_s007'], np.uint8), cv2.IMREAD_COLOR)
        assert np.array_equal(img, cv2.imread(str(out / side / 'Nikon_001_s007.png')))
    from_lmdb = build(dataroot_gt=str(out / 'HR.lmdb'), dataroot_lq=str(out / 'LR.lmdb'), io_backend={'type': 'lmdb'})
    from_disk = build(dataroot_gt=str(out / 'HR'), dataroot_lq=str(out / 'LR'))
    assert len(from_lmdb) == 27 and from_lmdb[26]['lq_path'] == 'Nikon_001_s009'
    disk = next(from_disk[i] for i in range(27) if from_disk.paths[i]['lq_path'].endswith('Nikon_001_s009.png'))
    assert torch.equal(from_lmdb[26]['gt'], disk['gt']) and torch.equal(from_lmdb[26]['lq'], disk['lq'])
    for env in from_lmdb.file_client.client._client.values():  # an LMDB opens once per process
        env.close()
    # and so does d2csr's PairedFolderDataset
    ours = build(type='PairedFolderDataset', dataroot_gt=str(out / 'HR.lmdb'), dataroot_lq=str(out / 'LR.lmdb'),
                 io_backend={'type': 'lmdb'})
    assert ours.paths[26]['gt_path'] == 'Nikon_001_s009' and torch.equal(ours[26]['gt'], disk['gt'])


def test_rerun_gives_the_same_result_and_leaves_nothing_behind(run, trees, tmp_path):
    out = tmp_path / 'sub'
    prepare_realsr(run, trees, out, '--lmdb')
    first, first_lmdb = snapshot(out), lmdb_items(out / 'HR.lmdb')
    prepare_realsr(run, trees, out, '--lmdb')
    second = snapshot(out)
    images = [k for k in first if not k.endswith('.mdb')]
    assert images and all(first[k] == second[k] for k in images) and set(first) == set(second)
    assert lmdb_items(out / 'HR.lmdb') == first_lmdb
    assert sorted(os.listdir(out)) == ['HR', 'HR.lmdb', 'LR', 'LR.lmdb', 'meta_info.txt']
    # without --lmdb the LMDBs of the previous run would go: refused, naming them, until --overwrite
    code, _, stderr = run('realsr', '--root', trees['realsr'], '--scale', 4, '--out', out, '--crop-size', 48,
                          '--step', 24)
    assert code == 1 and 'HR.lmdb' in stderr and 'LR.lmdb' in stderr and '--overwrite' in stderr
    assert snapshot(out) == second
    prepare_realsr(run, trees, out, '--overwrite')
    assert sorted(os.listdir(out)) == ['HR', 'LR', 'meta_info.txt']
    assert all(snapshot(out)[k] == first[k] for k in snapshot(out))


class Interrupt:
    """Stands in for prepare's PNG writer and stops the run at the n-th image, the way ``how`` says."""

    def __init__(self, n, how):
        self.n, self.how, self.calls = n, how, 0
        self.write = prepare_module._write_png

    def __call__(self, path, img, level):
        self.calls += 1
        if self.calls == self.n:
            if self.how == 'ctrl-c':
                raise KeyboardInterrupt
            os._exit(9)  # killed: no clean-up code runs
        self.write(path, img, level)


def test_interrupted_run_leaves_out_unchanged(run, trees, tmp_path, monkeypatch):
    out = tmp_path / 'sub'
    prepare_realsr(run, trees, out, '--lmdb')
    before = snapshot(out)
    monkeypatch.setattr(prepare_module, '_write_png', Interrupt(40, 'ctrl-c'))
    code, stdout, stderr = run('realsr', '--root', trees['realsr'], '--scale', 4, '--out', out, '--crop-size', 24,
                               '--step', 24, '--lmdb')
    assert code == 1 and f'interrupted: nothing in {out} was changed' in stderr
    assert '[1/3] Canon_001' in stdout  # it was well under way
    assert snapshot(out) == before and not [p for p in os.listdir(out) if p.startswith('.')]
    assert sorted(os.listdir(tmp_path)) == ['sub']  # no staging folder or lock left beside it


def test_killed_run_leaves_out_unchanged_and_rerun_cleans_up(run, cli, trees, tmp_path):
    out = tmp_path / 'sub'
    prepare_realsr(run, trees, out, '--lmdb')
    before = snapshot(out)
    pid = os.fork()
    if pid == 0:  # the child: killed in the middle of writing sub-images
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            cv2.setNumThreads(0)
            prepare_module._write_png = Interrupt(40, 'kill')
            cli.main(['realsr', '--root', str(trees['realsr']), '--scale', '4', '--out', str(out), '--crop-size',
                      '24', '--step', '24', '--lmdb'])
        finally:
            os._exit(3)  # never return into pytest
    deadline = time.time() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail('the forked prepare run did not finish')
        time.sleep(0.05)
    assert os.WEXITSTATUS(status) == 9
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith('.sub.prepare_tmp_')]
    assert len(leftovers) == 1 and len(os.listdir(tmp_path / leftovers[0] / 'HR')) > 0  # half-written, but aside
    assert snapshot(out) == before
    code, stdout, _ = run('realsr', '--root', trees['realsr'], '--scale', 4, '--out', out, '--crop-size', 48,
                          '--step', 24, '--lmdb')
    assert code == 0 and f'Removed the leftovers of an interrupted run: {leftovers[0]}' in stdout
    after = snapshot(out)
    assert set(after) == set(before) and all(after[k] == before[k] for k in before if not k.endswith('.mdb'))


def test_bad_input_is_refused_and_out_is_untouched(run, trees, tmp_path):
    out = tmp_path / 'sub'
    prepare_realsr(run, trees, out)
    before = snapshot(out)
    # a file whose header reads but whose data does not decode, and a file that is no image at all
    root = tmp_path / 'RealSR_V3'
    shutil.copytree(trees['realsr'], root)
    folder = root / 'Nikon' / 'Train' / '4'
    data = (folder / 'Nikon_001_LR4.png').read_bytes()
    (folder / 'Nikon_001_LR4.png').write_bytes(data[:len(data) // 2])
    code, _, stderr = run('realsr', '--root', root, '--scale', 4, '--out', out, '--crop-size', 48)
    assert code == 1 and 'cannot be decoded' in stderr and 'Nikon_001_LR4.png' in stderr and 'unchanged' in stderr
    assert snapshot(out) == before
    (root / 'Canon' / 'Train' / '4' / 'Canon_001_HR.png').write_text('not an image')
    code, _, stderr = run('realsr', '--root', root, '--scale', 4, '--out', out, '--crop-size', 48)
    assert code == 1 and 'unreadable or not an image (1)' in stderr and 'Canon_001_HR.png' in stderr
    assert snapshot(out) == before

    code, _, stderr = run('realsr', '--root', trees['old'], '--scale', 4, '--out', out, '--crop-size', 48)
    assert code == 1 and '--lq-at-gt-size bicubic' in stderr and 'Canon_001_LR4.png (96x96)' in stderr
    code, _, stderr = run('realsr', '--root', trees['realsr'], '--scale', 4, '--out', out, '--crop-size', 50)
    assert code == 1 and 'must be positive multiples of --scale (4)' in stderr
    code, _, stderr = run('realsr', '--root', trees['realsr'], '--scale', 8, '--out', out)
    assert code == 1 and 'RealSR has scales 2, 3, 4, not 8' in stderr
    code, _, stderr = run('d2crealsr', '--root', trees['realsr'], '--scale', 8, '--out', out)
    assert code == 1 and 'has no train_HR/ and train_LR/' in stderr
    empty = tmp_path / 'empty'
    (empty / 'HR').mkdir(parents=True)
    (empty / 'LR').mkdir()
    code, _, stderr = run('pairs', '--root', empty, '--scale', 4, '--out', out)
    assert code == 1 and 'contains no images' in stderr
    code, _, stderr = run('realsr5', '--root', trees['realsr'], '--scale', 4, '--out', out)
    assert code == 2 and "invalid choice: 'realsr5'" in stderr
    cam = tmp_path / 'cam'
    shutil.copytree(trees['cam'], cam)
    code, _, stderr = run('pairs', '--root', cam, '--scale', 4, '--out', cam, '--filename-tmpl', '{}_lr')
    assert code == 1 and 'would replace the input folder' in stderr
    assert snapshot(out) == before and snapshot(cam) == snapshot(trees['cam'])


def test_other_layouts_camera_pairs_and_lists(run, trees, tmp_path):
    code, stdout, _ = run('realsr', '--root', trees['old'], '--scale', 4, '--out', tmp_path / 'old', '--crop-size', 48,
                          '--lq-at-gt-size', 'bicubic')
    assert code == 0 and 'LR at HR size, downsampled by 4 (bicubic): 3 pair(s)' in stdout
    assert read_rgb(tmp_path / 'old' / 'LR' / 'Canon_001_s001.png').shape == (12, 12, 3)

    code, stdout, _ = run('drealsr', '--root', trees['drealsr'], '--scale', 4, '--split', 'test', '--out',
                          tmp_path / 'drealsr')
    assert code == 0 and 'Done: 2 pairs -> 2 whole pairs' in stdout  # test sets: whole images by default
    assert sorted(os.listdir(tmp_path / 'drealsr' / 'LR')) == ['DSC_1450.png', 'DSC_1451.png']
    assert read_rgb(tmp_path / 'drealsr' / 'HR' / 'DSC_1451.png').shape == (96, 96, 3)

    code, _, stderr = run('d2crealsr', '--root', trees['d2c'], '--scale', 8, '--out', tmp_path / 'd2c')
    # the default training patch (gt_size 96 x 8) is larger than these 16 px LR images
    assert code == 1 and 'smaller than the 96px training patch' in stderr and 'lower --gt-size' in stderr
    code, stdout, _ = run('d2crealsr', '--root', trees['d2c'], '--scale', 8, '--out', tmp_path / 'd2c',
                          '--crop-size', 64, '--step', 32)
    assert code == 0 and 'Done: 2 pairs -> 18 sub-image pairs (HR 64px step 32, LR 8px step 4)' in stdout

    code, stdout, _ = run('pairs', '--root', trees['cam'], '--scale', 4, '--out', tmp_path / 'cam',
                          '--lq-regex', r'(.+)_lr', '--gt-regex', '(.+)', '--crop-size', 0)
    assert code == 0 and sorted(os.listdir(tmp_path / 'cam' / 'HR')) == ['IMG_0001.png', 'IMG_0002.png']
    v3 = trees['realsr'] / 'Canon' / 'Train' / '4'
    listed = write_pair_list(tmp_path / 'train.txt', [(v3 / f'Canon_00{i}_LR4.png', v3 / f'Canon_00{i}_HR.png')
                                                      for i in (1, 2)], sep=' ')
    code, stdout, _ = run('pairs', '--list', listed, '--scale', 4, '--out', tmp_path / 'list', '--crop-size', 48,
                          '--step', 24)
    assert code == 0 and 'Done: 2 pairs -> 18 sub-image pairs' in stdout
    # the same sub-images, under the same names, as from the RealSR layout
    prepare_realsr(run, trees, tmp_path / 'realsr')
    from_layout = {k: v for k, v in snapshot(tmp_path / 'realsr' / 'HR').items() if k.startswith('Canon')}
    assert snapshot(tmp_path / 'list' / 'HR') == from_layout


def test_a_split_into_a_folder_named_for_the_other_is_refused(run, trees, tmp_path):
    """prepare_dataset.py realsr ... --out datasets/RealSR_x4/test wrote sub-images of the train split (the
    default) into a folder a test reads: refused, naming --split test, and nothing is written."""
    out = tmp_path / 'RealSR_x4' / 'test'
    code, _, stderr = run('realsr', '--root', trees['realsr'], '--scale', 4, '--out', out)
    assert code == 1 and 'named for testing' in stderr and 'pass --split test' in stderr
    assert not out.exists()
    code, stdout, _ = run('realsr', '--root', trees['realsr'], '--scale', 4, '--split', 'test', '--out', out)
    assert code == 0 and 'Done: 2 pairs -> 2 whole pairs' in stdout
    assert sorted(os.listdir(out / 'HR')) == ['Canon_001.png', 'Nikon_001.png']
    # your own pairs cut into sub-images for a validation folder; the test split into a training folder
    code, _, stderr = run('pairs', '--root', trees['cam'], '--scale', 4, '--filename-tmpl', '{}_lr', '--out',
                          tmp_path / 'cam_val', '--crop-size', 48, '--step', 24)
    assert code == 1 and 'named for testing' in stderr and '--crop-size 0' in stderr
    code, _, stderr = run('realsr', '--root', trees['realsr'], '--scale', 4, '--split', 'test', '--out',
                          tmp_path / 'RealSR_x4' / 'train_sub')
    assert code == 1 and 'named for training' in stderr
    assert not (tmp_path / 'cam_val').exists() and not (tmp_path / 'RealSR_x4' / 'train_sub').exists()
    # a data set with another number of pairs than published is reported
    code, stdout, _ = run('realsr', '--root', trees['realsr'], '--scale', 4, '--split', 'test', '--out', out)
    assert 'warning: RealSR (V3) x4 test: 2 pairs found, its authors publish 100' in stdout


def reachable_patch_starts(h, w, crop, step, scale=4, patch=96):
    """Simulated without d2csr's coverage arithmetic: every sub-image of an LR image whose pixels hold their own
    coordinates, every patch BasicSR's paired_random_crop can cut inside it (top-left 0 .. crop - patch), mapped
    back to the image through the pixel it starts at."""
    coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing='ij'), -1).astype(np.int32)
    gt = np.zeros((h * scale, w * scale, 1), np.uint8)
    reached = set()
    for _, sub in prepare_module.sub_image_pairs(gt, coords, scale, crop, step, min_size=patch):
        corners = sub[:sub.shape[0] - patch + 1, :sub.shape[1] - patch + 1].reshape(-1, 2)
        reached.update(map(tuple, corners.tolist()))
    return reached


@pytest.mark.parametrize('h, w', [(300, 417), (150, 250), (1000, 120)])
def test_default_sub_images_keep_every_patch_position_of_whole_image_cropping(h, w):
    """The authors draw a 96 px LR patch at randint(0, W - 96 - 1) in the whole image: every one of those
    positions stays reachable with the default sub-images (a 1000 x 120 image too: its short side is taken
    whole); BasicSR's DIV2K setting (120 / 60 LR px) reaches a fifth to a half of them (22.5% at 300 x 417)."""
    scale, patch = 4, 96
    authors = {(y, x) for y in range(h - patch) for x in range(w - patch)}
    crop, step = prepare_module.default_crop(scale, 'train')
    assert (crop, step) == (2 * patch * scale, (patch + 1) * scale)
    assert authors <= reachable_patch_starts(h, w, crop, step)
    old = len(authors & reachable_patch_starts(h, w, 120 * scale, 60 * scale)) / len(authors)
    (rh, th), (rw, tw) = (prepare_module.patch_coverage(n, 120, 60, patch) for n in (h, w))
    assert old == pytest.approx(rh * rw / (th * tw))  # the arithmetic the run prints agrees
    assert 0.2 < old < 0.25 if (h, w) == (300, 417) else old < 0.5


def test_the_run_prints_the_patch_coverage_and_warns_when_positions_are_lost(tmp_path):
    tree = realsr_tree(tmp_path / 'RealSR_V3', train=(('Canon', 'astronaut'), ), test=(), side=192)
    logs = []
    prepare_module.prepare('realsr', str(tree), 4, str(tmp_path / 'sub'), gt_size=32, log=logs.append)
    assert any('patch coverage: a 8px LR patch (gt_size 32)' in line and 'can start at 100.0% of the positions' in line
               for line in logs)
    logs.clear()
    prepare_module.prepare('realsr', str(tree), 4, str(tmp_path / 'sub'), gt_size=32, crop_size=64, step=64,
                           log=logs.append)
    assert any(line.startswith('warning: patch coverage') and '--step 36 ' in line for line in logs)
