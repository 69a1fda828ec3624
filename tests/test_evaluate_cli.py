"""`sparse3d_test` end to end, through its command line, as a user and `make demo` run it.

- a processed root: every output is written (predictions as .binvox/.ply/.obj, metrics.json, the per-object
  CSV with its columns, report.html and its 3D view), and the numbers in the files agree with each other;
- a folder of photos as a user brings them, written from synthetic renders at a non-square size
  (200x150 JPEGs, one of them a PNG, PNG masks, CO3D pose files): it works with and without the pose files
  for a model trained without poses, and a pose model refuses photos without poses;
- `--draws N` scores every object from N draws of views, `--train_dir` names the root whose train/val splits
  give the baselines; bad values of either are one-line errors;
- bad inputs (a CO3D root that was never preprocessed, more views than frames, an unknown split, a checkpoint
  of another architecture, a corrupt one, --use_pose against the checkpoint) end with one line `error: ...`
  and a non-zero exit status, and write nothing.
"""
import csv, json

import numpy as np
import pytest
import torch

from conftest import CLI_BIN as BIN, run_cli
CSV_COLUMNS = ['id', 'method', 'num_views', 'draw', 'views', 'threshold', 'iou', 'fscore', 'fscore_2', 'chamfer',
               'fscore_mesh', 'precision', 'recall', 'pred_occupancy', 'target_occupancy', 'empty_pred', 'empty_target']


def sparse3d_test(*args, ok=True, timeout=600): return run_cli(BIN/'sparse3d_test', *args, ok=ok, timeout=timeout)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "A CO3D-format root of 8 synthetic chairs (6 frames of 64 px), processed (4 train, 2 val, 2 test), two tiny models"
    from sparse3d.synthetic import render_dataset
    from sparse3d.preprocess import PreprocessSettings, preprocess_category, split_and_pack
    from sparse3d.config import load_config
    from sparse3d.train import fit
    d = tmp_path_factory.mktemp('evalcli')
    render_dataset(d/'co3d', n_sequences=8, n_frames=6, image_size=64, seed=1, workers=1, progress=False)
    preprocess_category(d/'co3d', d/'proc', 'chair', PreprocessSettings(image_size=64, cube_len=32), workers=1,
                        progress=False)
    split_and_pack(d/'proc', 'chair', None, seed=0, val_frac=0.25, test_frac=0.25, progress=False)
    torch.set_num_threads(2)
    small = dict(image_size=64, batch_size=4, num_views=2, z_size=16, n_epochs=1, workers=0, device='cpu', save_freq=10,
                 vis_freq=10)
    fit(load_config(None, **small), d/'proc', d/'pose', progress=False)
    fit(load_config(None, **small, use_pose=False), d/'proc', d/'nopose', progress=False)
    return d


@pytest.fixture(scope='module')
def photos(world):
    "Four 200x150 photos of a synthetic chair (IMG_0003 as a PNG), masks and poses; and the same without poses/"
    from sparse3d.testing import write_photo_folder
    from PIL import Image
    posed = write_photo_folder(world/'my_chair', n_views=4, image_size=(150, 200), seed=3)
    Image.open(posed/'IMG_0003.jpg').save(posed/'IMG_0003.png')
    (posed/'IMG_0003.jpg').unlink()
    bare = world/'my_chair_nopose'
    import shutil
    shutil.copytree(posed, bare, ignore=shutil.ignore_patterns('poses'))
    return posed, bare


def ckpt(world, name='pose'): return world/name/'checkpoints'/'best.pt'


def test_processed_root_writes_everything(world, tmp_path):
    out = tmp_path/'eval'
    p = sparse3d_test('--model_path', ckpt(world), '--test_dir', world/'proc', '--output_dir', out, '--split', 'test',
                      '--views', '1,2,4', '--device', 'cpu')
    lines = p.stdout.splitlines()
    assert lines[-1] == f"report: {out/'report.html'}"
    assert '2 chair objects of' in p.stdout and 'test split' in p.stdout
    table = [line for line in lines if line.split('|')[0].strip().isdigit()]
    assert [line.split('|')[0].strip() for line in table] == ['1', '2', '4'], p.stdout
    # model, hull, retrieval, mean per metric: IoU, F@1%, F@2%, Chamfer
    assert all(len(line.split('|')) == 5 and len(line.split('|')[1].split()) == 4 for line in table), p.stdout

    assert sorted(f.name for f in out.iterdir()) == ['metrics.json', 'metrics_per_object.csv', 'prediction_3d.html',
                                                     'predictions', 'report.html']
    rows = list(csv.DictReader(open(out/'metrics_per_object.csv', encoding='utf-8')))
    assert list(rows[0]) == CSV_COLUMNS
    assert len(rows) == 2 * 3 * 4 and {r['draw'] for r in rows} == {'0'}
    ids = sorted({r['id'] for r in rows})
    assert ids == sorted(json.loads((world/'proc'/'chair'/'splits.json').read_text())['test'])
    for r in rows:
        assert 0 <= float(r['iou']) <= 1 and 0 <= float(r['fscore']) <= float(r['fscore_2']) <= 1, r
        assert float(r['chamfer']) >= 0 and 0 <= float(r['fscore_mesh']) <= 1, r
        assert len(r['views'].split()) == int(r['num_views'])
    same_views = {(r['id'], r['num_views']): set() for r in rows}
    for r in rows: same_views[r['id'], r['num_views']].add(r['views'])
    assert all(len(v) == 1 for v in same_views.values())                    # the baselines saw the model's views

    m = json.loads((out/'metrics.json').read_text())
    ck = torch.load(ckpt(world), map_location='cpu', weights_only=True)
    assert (m['mode'], m['threshold'], m['threshold_source']) == ('processed', ck['threshold'],
                                                                  'validation-best, stored in the checkpoint')
    assert m['views'] == [1, 2, 4] and m['data']['n_objects'] == 2 and m['data']['split'] == 'test'
    assert sorted(m['means']) == ['mean_shape', 'model', 'retrieval', 'visual_hull'], sorted(m['means'])
    assert sorted(m['baseline_settings']['visual_hull']) == ['1', '2', '4'], m['baseline_settings']
    assert sorted(m['means']['model']) == ['1', '2', '4'], sorted(m['means']['model'])
    for method in m['means']:
        for v in ('1', '2', '4'):
            ious = [float(r['iou']) for r in rows if r['method'] == method and r['num_views'] == v]
            assert m['means'][method][v]['iou'] == pytest.approx(np.mean(ious), abs=1e-5)
            assert m['means'][method][v]['n_objects'] == 2
    assert m['model']['config']['use_pose'] is True and m['model']['epoch'] == 1

    from sparse3d.binvox import read_binvox
    import open3d as o3d
    for v in (1, 2, 4):
        for i in ids:
            g = read_binvox(out/'predictions'/f'{v}_views'/f'{i}.binvox')
            assert g.dim == 32 and g.translate == (-0.5, -0.5, -0.5) and g.scale == 1.0
            row = next(r for r in rows if r['id'] == i and r['method'] == 'model' and r['num_views'] == str(v))
            assert g.occupancy.mean() == pytest.approx(float(row['pred_occupancy']), abs=1e-6)
            if row['empty_pred'] == 'False':
                for ext in ('ply', 'obj'):
                    mesh = o3d.io.read_triangle_mesh(str(out/'predictions'/f'{v}_views'/f'{i}.{ext}'))
                    # in the grid's cube; on probabilities the surface may reach half a cell into the padding
                    assert len(mesh.triangles) > 0 and np.abs(np.asarray(mesh.vertices)).max() <= 0.5 + 0.5 / 32 + 1e-6
    page = (out/'report.html').read_text(encoding='utf-8')
    assert '<table class="results">' in page and 'src="prediction_3d.html"' in page and '<script' not in page


def test_threshold_flag_and_almost_empty_warning(world, tmp_path):
    p = sparse3d_test('--model_path', ckpt(world), '--test_dir', world/'proc', '--output_dir', tmp_path,
                      '--split', 'val',
                      '--threshold', '0.99', '--device', 'cpu', '--max_objects', '1')
    warn = [line for line in p.stderr.splitlines() if line.startswith('warning: ')]
    assert len(warn) == 1 and '1 of 1 predictions from 2 views are almost empty at threshold 0.99' in warn[0], p.stderr
    assert '(--threshold ' in warn[0]                                       # the threshold that recovers the shape
    m = json.loads((tmp_path/'metrics.json').read_text())
    assert (m['threshold'], m['threshold_source'], m['data']['n_objects']) == (0.99, 'given with --threshold', 1)


def test_photos_with_and_without_poses_for_a_model_without_poses(world, photos, tmp_path):
    posed, bare = photos
    for folder, note in ((posed, 'given but not used'), (bare, 'none')):
        out = tmp_path/folder.name
        p = sparse3d_test('--model_path', ckpt(world, 'nopose'), '--test_dir', folder, '--output_dir', out,
                          '--device', 'cpu')
        assert f'4 photos in {folder}; poses: {note}' in p.stdout, p.stdout
        assert p.stdout.splitlines()[-1] == f"report: {out/'report.html'}"
        assert sorted(f.name for f in out.iterdir()) == ['metrics.json', 'prediction_3d.html', 'predictions',
                                                         'predictions.csv', 'report.html']
        rows = list(csv.DictReader(open(out/'predictions.csv', encoding='utf-8')))
        assert [(r['num_views'], r['views']) for r in rows] == [('4', 'IMG_0001 IMG_0002 IMG_0003 IMG_0004')]
        assert (out/rows[0]['binvox']).exists()
        m = json.loads((out/'metrics.json').read_text())
        assert m['mode'] == 'photos' and [i['size'] for i in m['inputs']] == [[150, 200]] * 4
        assert all(i['crop_box'][2] >= 50 for i in m['inputs'])               # a square around each chair
        if folder == posed: assert 'poses are not used' in p.stderr
    p = sparse3d_test('--model_path', ckpt(world, 'nopose'), '--test_dir', bare, '--output_dir', tmp_path/'two',
                      '--views', '1,2',
                      '--device', 'cpu')
    assert [r['num_views'] for r in csv.DictReader(open(tmp_path/'two'/'predictions.csv'))] == ['1', '2']


def test_photos_pose_model(world, photos, tmp_path):
    posed, bare = photos
    p = sparse3d_test('--model_path', ckpt(world), '--test_dir', posed, '--output_dir', tmp_path/'ok',
                      '--num_views', '3', '--device', 'cpu')
    m = json.loads((tmp_path/'ok'/'metrics.json').read_text())
    assert m['data']['poses'] == 'used' and m['views'] == [3] and len(m['inputs']) == 3
    assert m['inputs'][0]['camera']['image_size'] == [64, 64]                # the crop's camera
    p = sparse3d_test('--model_path', ckpt(world), '--test_dir', bare, '--output_dir', tmp_path/'no', '--device', 'cpu',
                      ok=False)
    assert p.returncode == 2 and p.stderr.strip().startswith('sparse3d_test: error: '), p.stderr
    assert "trained with camera poses, but 'IMG_0001'" in p.stderr, p.stderr
    assert not (tmp_path/'no').exists()


@pytest.fixture(scope='module')
def bad_checkpoints(world, tmp_path_factory):
    d = tmp_path_factory.mktemp('badck')
    good = ckpt(world)
    (d/'cut.pt').write_bytes(good.read_bytes()[:3000])
    ck = torch.load(good, map_location='cpu', weights_only=True)
    torch.save({**ck, 'pose_dim': 12}, d/'other.pt')               # a model whose pose encoder takes 12 numbers, not 9
    return d


@pytest.mark.parametrize('case', ['co3d_root', 'too_many_views', 'unknown_split', 'other_architecture', 'corrupt',
                                  'use_pose',
                                  pytest.param('bad_views', marks=pytest.mark.slow),
                                  pytest.param('category', marks=pytest.mark.slow)])
def test_bad_inputs_are_one_line_errors(world, bad_checkpoints, tmp_path, case):
    args = dict(model_path=ckpt(world), test_dir=world/'proc', output_dir=tmp_path/'out', device='cpu')
    args, expect = {
        'co3d_root': ({**args, 'test_dir': world/'co3d'}, 'a CO3D root that is not preprocessed'),
        'too_many_views': ({**args, 'num_views': 7}, 'num_views=7, but sequence'),
        'unknown_split': ({**args, 'split': 'dev'}, "unknown split 'dev'; use one of train, val, test"),
        'other_architecture': ({**args, 'model_path': bad_checkpoints/'other.pt'},
                               'made for another architecture: pose_dim=12 in the checkpoint, 9 here'),
        'corrupt': ({**args, 'model_path': bad_checkpoints/'cut.pt'}, 'cut.pt: corrupt or truncated checkpoint'),
        'use_pose': ({**args, 'use_pose': 'false'},
                     'trained with camera poses (use_pose: true) and cannot run without them'),
        'bad_views': ({**args, 'views': '1,x'}, '--views must be view counts separated by commas'),
        'category': ({**args, 'category': 'car'}, "no category 'car' in this processed root (it has: 'chair')"),
    }[case]
    p = sparse3d_test(*[a for k, v in args.items() for a in (f'--{k}', v)], ok=False)
    assert p.returncode == 2, (p.returncode, p.stderr)   # bad input: exit status 2
    assert p.stderr.startswith('sparse3d_test: error: '), p.stderr
    assert p.stderr.count('\n') == 1 and 'Traceback' not in p.stderr, p.stderr
    assert expect in p.stderr, p.stderr
    assert p.stdout == '' and not (tmp_path/'out').exists()


def test_draws_and_train_dir(world, tmp_path):
    out = tmp_path/'draws'
    p = sparse3d_test('--model_path', ckpt(world), '--test_dir', world/'proc', '--output_dir', out, '--split', 'test',
                      '--views', '2', '--draws', '2', '--train_dir', world/'proc', '--device', 'cpu')
    assert '2 draws of views each' in p.stdout, p.stdout
    rows = list(csv.DictReader(open(out/'metrics_per_object.csv', encoding='utf-8')))
    assert sorted({(r['draw'], r['method']) for r in rows}) == sorted(
        (d, m) for d in '01' for m in ('mean_shape', 'model', 'retrieval', 'visual_hull')), rows
    views = {d: {r['id']: r['views'] for r in rows if r['draw'] == d} for d in '01'}
    assert views['0'] != views['1'], views                              # the second draw sees other views
    m = json.loads((out/'metrics.json').read_text())
    assert m['data']['draws'] == 2 and m['data']['train_dir'] == str(world/'proc')
    assert m['means']['model']['2']['n_objects'] == 2 * 2


@pytest.mark.parametrize(('flags', 'expect'), [
    (('--draws', '0'), '--draws must be a whole number >= 1'),
    (('--train_dir', 'nowhere'), 'nowhere: --train_dir must be a processed root'),
    (('--train_dir', 'co3d'), "--train_dir must be a processed root")])
def test_bad_draws_and_train_dir(world, tmp_path, flags, expect):
    flags = tuple(str(world/f) if f == 'co3d' else f for f in flags)
    p = sparse3d_test('--model_path', ckpt(world), '--test_dir', world/'proc', '--output_dir', tmp_path/'out',
                      '--device', 'cpu', *flags, ok=False)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.startswith('sparse3d_test: error: ') and p.stderr.count('\n') == 1, p.stderr
    assert expect in p.stderr, p.stderr
    assert not (tmp_path/'out').exists()


def test_required_flags():
    p = sparse3d_test('--test_dir', 'x', ok=False)
    assert p.returncode == 2 and 'the following arguments are required: --model_path, --output_dir' in p.stderr
