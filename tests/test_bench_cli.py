"""`sparse3d_bench` end to end, as a user runs it: the console script in a fresh process.

The slow test runs `--quick` into a temporary folder, with an (untrained) checkpoint and a tiny processed
root so the quality section is filled in too, and checks BENCHMARKS.md has every section; it checks
no timing value. The fast tests check that bad arguments fail cleanly before any benchmark runs: exit
status 2, one `sparse3d_bench: error: ...` line naming the problem, no traceback, nothing written.
"""
import json, subprocess, sys
from dataclasses import asdict
from pathlib import Path


BENCH = Path(sys.executable).with_name('sparse3d_bench')
SECTIONS = ('# sparse3d benchmarks', '## Machine', '## Headline', '## Targets', '## Training', '## Inference',
            '## Data: rendering, preprocessing, loading', '## Quality', '## Time to quality', '## Profile',
            '## On paper: the full CO3D chair category')


def bench(*args, timeout=120):
    return subprocess.run([str(BENCH), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def one_error_line(r):
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert 'Traceback' not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith('sparse3d_bench: error: '), r.stderr
    return lines[0]


def fake_checkpoint(path, **cfg_kw):
    "An untrained model saved as sparse3d_train would: what the quality benchmark needs to run, not to score"
    from sparse3d.config import load_config
    from sparse3d.data import POSE_DIM
    from sparse3d.model import VAEGAN
    from sparse3d.train import CHECKPOINT_FORMAT, save_checkpoint
    cfg = load_config(None, **{'image_size': 64, 'cube_len': 32, 'z_size': 16, **cfg_kw})
    save_checkpoint(path, dict(format=CHECKPOINT_FORMAT, model=VAEGAN(cfg, POSE_DIM).state_dict(), config=asdict(cfg),
                               epoch=2,
                               step=4, history=[], pose_dim=POSE_DIM, threshold=0.5, best_iou=0.2))
    return Path(path)


def test_console_script_exists():
    assert BENCH.exists(), f'{BENCH} missing: run `pip install -e .` (make setup)'


def test_bad_runs_spec(tmp_path):
    out = tmp_path/'B.md'
    line = one_error_line(bench('--output', out, '--runs', 'just-a-label'))
    assert "--runs: 'just-a-label' is not label=checkpoint" in line
    assert not out.exists()


def test_missing_checkpoint(tmp_path):
    line = one_error_line(bench('--output', tmp_path/'B.md', '--runs', f"pose, mean={tmp_path/'nope.pt'}",
                                '--test_dir', tmp_path))
    assert f"{tmp_path/'nope.pt'}: checkpoint of 'pose, mean' not found" in line


def test_runs_need_test_dir(tmp_path):
    ck = fake_checkpoint(tmp_path/'run'/'checkpoints'/'best.pt')
    assert '--runs needs --test_dir' in one_error_line(bench('--output', tmp_path/'B.md', '--runs', f'a={ck}'))
    assert 'no packed test split here' in one_error_line(bench('--output', tmp_path/'B.md', '--runs', f'a={ck}',
                                                               '--test_dir', tmp_path))


def test_bad_test_sets(tmp_path):
    ck = fake_checkpoint(tmp_path/'run'/'checkpoints'/'best.pt')
    line = one_error_line(bench('--output', tmp_path/'B.md', '--runs', f'a={ck}', '--test_dir', tmp_path,
                                '--test_sets', 'no-label-here'))
    assert "--test_sets: 'no-label-here' is not label=root:split" in line


def test_output_is_a_folder(tmp_path):
    assert '--output is a folder' in one_error_line(bench('--output', tmp_path, '--quick'))


def test_quick_end_to_end(tmp_path):
    "The CI smoke run of `make bench`: every benchmark at tiny sizes, one thread (about 1-2 minutes)"
    from sparse3d.preprocess import PreprocessSettings, preprocess_category, split_and_pack
    from sparse3d.synthetic import render_dataset
    render_dataset(tmp_path/'co3d', n_sequences=5, n_frames=8, image_size=64, seed=3, workers=1, progress=False)
    preprocess_category(tmp_path/'co3d', tmp_path/'proc', 'chair', PreprocessSettings(image_size=64, cube_len=32),
                        workers=1, progress=False)
    split_and_pack(tmp_path/'proc', 'chair', tmp_path/'co3d', progress=False)
    ck = fake_checkpoint(tmp_path/'run'/'checkpoints'/'best.pt')
    (tmp_path/'run'/'metrics.jsonl').write_text('{"epoch": 1, "seconds": 60, "val_iou_best": 0.1}\n'
                                               '{"epoch": 2, "seconds": 60, "val_iou_best": 0.2}\n')
    out, js = tmp_path/'out'/'BENCHMARKS.md', tmp_path/'out'/'bench.json'
    r = bench('--quick', '--output', out, '--json_path', js, '--threads', 1, '--runs', f'untrained={ck}',
              '--test_dir', tmp_path/'proc',
              '--work_dir', tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f'{out}: training '), r.stdout
    text = out.read_text()
    pos = [text.index(h) for h in SECTIONS]
    assert pos == sorted(pos), 'sections out of order'
    assert '--quick' in text and 'a quick run' in text
    assert '| target | goal | measured | status |' in text
    assert '| untrained |' in text and '| *visual hull (tuned)* |' in text and '| *retrieval* |' in text
    assert '| *mean shape* |' in text and '### test\n' in text                  # the default test set
    assert 'No trained runs were given' not in text
    assert '| untrained | 2 | 2.0 |' in text                         # time to quality from run/metrics.jsonl
    res = json.loads(js.read_text())
    assert res['quick'] and res['threads'] == 1
    assert res['train']['flops_per_step'] > 0 and res['train']['skipped_steps'] == 0
    assert [row['n_sequences'] for row in res['pipeline']['rows']] == [4, 8]
    q = res['quality']                                               # the quick plan: one draw of views
    assert q['test_sets']['test']['draws'] == 1 and q['test_sets']['test']['split'] == 'test'
    assert set(q['scores']['test']['untrained']) == {'model', 'visual_hull', 'retrieval', 'mean_shape'}
    # written atomically, no leftovers
    assert sorted(p.name for p in out.parent.iterdir()) == ['BENCHMARKS.md', 'bench.json']
    assert not list(tmp_path.glob('sparse3d_bench_*')), 'temporary work folder left behind'
