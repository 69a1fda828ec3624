"""Photo folders as users bring them, through `sparse3d_test` (issue 15, item 5).

- the seed folder (`nbs/data/seed_chair`: the reference project's own test folder, four CO3D frames with outline
  masks and pose files without intrinsics) runs end to end with a pose model: the masks are filled, the focal length
  is estimated, the run says so in its summary, warnings and metrics.json, and carving is on;
- photos with an EXIF focal length (35 mm equivalent) and R/T-only pose files: the cameras come from EXIF;
- soft masks: `--mask_threshold` decides what is the object; an empty mask at the threshold is a one-line error;
- a folder whose only posed photo has no intrinsics: no cameras, the model runs without carving and says so.

The checkpoints are untrained (random weights, as sparse3d_train would save them): these tests are about the data
side, not the shape a trained model predicts.
"""
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from conftest import CLI_BIN as BIN, run_cli

SEED = Path(__file__).resolve().parents[1]/'nbs'/'data'/'seed_chair'


def sparse3d_test(*args, ok=True): return run_cli(BIN/'sparse3d_test', *args, '--device', 'cpu', ok=ok)


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    "An untrained pose model with the refiner (64 px, 32^3), saved as sparse3d_train would"
    from sparse3d.config import load_config
    from sparse3d.data import POSE_DIM
    from sparse3d.model import VAEGAN
    from sparse3d.train import CHECKPOINT_FORMAT, save_checkpoint
    cfg = load_config(None, image_size=64, cube_len=32, z_size=16, use_pose=True, refine=True)
    path = tmp_path_factory.mktemp('photock')/'best.pt'
    save_checkpoint(path, dict(format=CHECKPOINT_FORMAT, model=VAEGAN(cfg, POSE_DIM).state_dict(), config=asdict(cfg),
                               epoch=1, step=2, history=[], pose_dim=POSE_DIM, threshold=0.5, best_iou=0.1))
    return path


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    "Four 200x150 photos of a synthetic chair with masks and full pose files"
    from sparse3d.testing import write_photo_folder
    return write_photo_folder(tmp_path_factory.mktemp('photos')/'my_chair', n_views=4, image_size=(150, 200), seed=5)


def edited(folder, tmp_path, edit):
    "A copy of `folder` changed by `edit(copy)`"
    d = tmp_path/'in'
    shutil.copytree(folder, d)
    edit(d)
    return d


def bare_poses(d):
    for q in (d/'poses').glob('*_pose.json'):
        v = json.loads(q.read_text()); q.write_text(json.dumps(dict(R=v['R'], T=v['T'])))


def test_seed_folder_end_to_end(ckpt, tmp_path):
    out = tmp_path/'seed'
    p = sparse3d_test('--model_path', ckpt, '--test_dir', SEED, '--output_dir', out)
    names = 'frame000001, frame000027, frame000048, frame000069'
    assert f'cameras: estimated from the masks ({names})' in p.stdout, p.stdout
    assert 'no carving' not in p.stdout, p.stdout
    assert p.stderr.count('outline-like mask') == 4 and 'estimated from the masks and poses as' in p.stderr, p.stderr
    m = json.loads((out/'metrics.json').read_text())
    assert m['data']['cameras'] == {f'frame0000{k}': 'estimated from the masks' for k in ('01', '27', '48', '69')}
    assert m['data']['carving'] is True
    assert [i['camera_source'] for i in m['inputs']] == ['estimated from the masks'] * 4
    assert all(i['camera'] is not None and i['camera']['image_size'] == [64, 64] for i in m['inputs'])
    assert sum('outline-like' in w for w in m['warnings']) == 4, m['warnings']
    assert (out/m['predictions'][0]['binvox']).exists() and (out/'report.html').exists()


def test_exif_focal_length(ckpt, folder, tmp_path):
    from PIL import Image
    def exif(d):
        bare_poses(d)
        for q in d.glob('*.jpg'):
            im = Image.open(q); ex = Image.Exif(); ex.get_ifd(0x8769)[0xA405] = 35      # FocalLengthIn35mmFilm
            im.save(q, exif=ex, quality=95)
    out = tmp_path/'exif'
    p = sparse3d_test('--model_path', ckpt, '--test_dir', edited(folder, tmp_path, exif), '--output_dir', out)
    assert 'cameras: EXIF (IMG_0001, IMG_0002, IMG_0003, IMG_0004)' in p.stdout, p.stdout
    m = json.loads((out/'metrics.json').read_text())
    f = 35 * np.hypot(150, 200) / np.hypot(36, 24)                         # pixels, in the 200x150 photo
    i = m['inputs'][0]
    assert np.isclose(i['camera']['K'][0][0], f * 64 / i['crop_box'][2]), (i, f)


def test_pose_file_intrinsics_win(ckpt, folder, tmp_path):
    out = tmp_path/'posed'
    p = sparse3d_test('--model_path', ckpt, '--test_dir', folder, '--output_dir', out)
    assert 'cameras: pose file (IMG_0001, IMG_0002, IMG_0003, IMG_0004)' in p.stdout, p.stdout
    assert 'outline-like' not in p.stderr and 'estimated' not in p.stderr, p.stderr


def test_soft_masks_and_mask_threshold(ckpt, folder, tmp_path):
    from sparse3d.co3d import load_mask, save_mask
    def soften(d):
        for q in (d/'masks').glob('*.png'): save_mask(q, 0.4 * (load_mask(q) > 0.5))
    d = edited(folder, tmp_path, soften)
    p = sparse3d_test('--model_path', ckpt, '--test_dir', d, '--output_dir', tmp_path/'no', ok=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(lines) == 1 and lines[0].startswith('sparse3d_test: error: '), p.stderr
    assert 'IMG_0001.png: (almost) empty mask' in lines[0] and '--mask_threshold' in lines[0], p.stderr
    assert not (tmp_path/'no').exists()
    p = sparse3d_test('--model_path', ckpt, '--test_dir', d, '--output_dir', tmp_path/'ok', '--mask_threshold', '0.3')
    assert 'cameras: pose file' in p.stdout, p.stdout
    p = sparse3d_test('--model_path', ckpt, '--test_dir', d, '--output_dir', tmp_path/'bad', '--mask_threshold', '1.5',
                      ok=False)
    assert p.returncode == 2, p.stderr
    assert '--mask_threshold must be a number between 0 and 1 (exclusive), got 1.5' in p.stderr, p.stderr


def test_no_usable_camera_runs_without_carving(ckpt, folder, tmp_path):
    def lonely(d):
        bare_poses(d)
        for k in (2, 3, 4): (d/'poses'/f'IMG_000{k}_pose.json').unlink()
    d = edited(folder, tmp_path, lonely)
    # a pose model needs every pose: the error says so
    p = sparse3d_test('--model_path', ckpt, '--test_dir', d, '--output_dir', tmp_path/'a', '--views', '1,4', ok=False)
    assert "trained with camera poses, but 'IMG_0002'" in p.stderr, p.stderr
    # the one posed photo alone: its focal length cannot be estimated from one view, so no carving
    out = tmp_path/'one'
    p = sparse3d_test('--model_path', ckpt, '--test_dir', d, '--output_dir', out, '--num_views', '1')
    assert 'cameras: none (IMG_0001); no carving by the silhouettes' in p.stdout, p.stdout
    assert 'the model runs without carving' in p.stderr, p.stderr
    m = json.loads((out/'metrics.json').read_text())
    assert (m['data']['carving'], m['inputs'][0]['camera_source'], m['inputs'][0]['camera']) == (False, 'none', None)
