"""Bad inputs, tried many ways (property-based, with hypothesis): every reader of an input file gets random bytes,
truncations and bit flips of a valid file, and structured garbage (wrong types, missing keys, huge numbers, NaN,
negative sizes, paths that escape). What must hold for every case:

- it ends in a `Sparse3DError` whose one-line message names the file, or in a value that is right (never silent
  garbage: a truncated file never loads as less data; what loads is finite and has the promised shape);
- never a raw exception from deep inside a library, never a hang (pytest-timeout), never a crash.

Every fuzz test exists twice: a fast one with a few dozen examples for `make test`, and a `_deep` one (marked slow)
with ten times as many for `make test-all`. The hypothesis profile of tests/conftest.py decides how examples are
drawn: derandomized by default (the same cases every run, a failure prints the example and its reproduction blob),
random and ten times as many with `make faults-explore`. No example database is written, so the tree stays clean.
A case a run once found is kept as an explicit `@example` (see `examples=` below).

Every message must also be one printable line: the input it quotes goes through `sparse3d.config.quoted`, so a
newline or an escape sequence in a file can neither forge a second line of a log nor drive the terminal."""
import ast, gzip, json, math, os, shutil, struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import examples_scale
from hypothesis import example, given, settings, strategies as st

from sparse3d.binvox import VoxelGrid, binvox_bytes, read_binvox
from sparse3d.co3d import (Co3dCategory, frame_from_dict, load_depth, load_depth_mask, load_frame_annotations,
                           load_image, load_json, load_mask, load_pointcloud, load_sequence_annotations, load_set_list,
                           load_subsets, sequence_from_dict)
from sparse3d.config import ConfigError, Sparse3DError, check_value, load_config, quoted


def fuzz(name, strategy, check, what, fast, deep, expect='Sparse3DError naming the file, or a correct value',
         examples=()):
    """Two tests of `check(ctx, x)` for `x` drawn from `strategy`: `test_<name>` (`fast` examples) and
    `test_<name>_deep` (slow); both try the regressions `examples` first. The hypothesis profile (tests/conftest.py)
    decides the rest"""
    def make(n, deep_run):
        @settings(max_examples=n * examples_scale())
        @given(x=strategy)
        def test(fault, tmp_path, fuzz_samples, x):
            fault.describe('Inputs', what, expect)
            fault.case()
            check(SimpleNamespace(tmp=tmp_path, s=fuzz_samples), x)
        for x in examples: test = example(x=x)(test)
        test.__name__ = test.__qualname__ = f"test_{name}{'_deep' if deep_run else ''}"
        return pytest.mark.slow(pytest.mark.timeout(1200)(test)) if deep_run else pytest.mark.timeout(180)(test)
    return make(fast, False), make(deep, True)


def one_line(msg, limit=1500):
    "Assert `msg` is a clear one-line message: every character printable (no newline, no escape sequence), not huge"
    assert msg.isprintable() and len(msg) < limit, f"not a clear one-line message: {msg!r}"


def clean(fn, path, ok=None):
    "`fn(path)` gives a value that passes `ok`, or raises a one-line `Sparse3DError` naming `path`; anything else fails"
    try:
        r = fn(path)
    except Sparse3DError as e:
        msg = str(e)
        assert str(path) in msg, f"the error does not name the file: {msg}"
        one_line(msg)
        return None
    if ok is not None: ok(r)
    return r


def write(tmp, name, data):
    p = tmp/name
    p.write_bytes(data)
    return p


# --- ways to damage a valid file ---------------------------------------------------------------------------------

def truncated(data, frac): return data[:min(int(frac * len(data)), len(data) - 1)]

def flipped(data, flips):
    b = bytearray(data)
    for pos, bit in flips: b[int(pos * (len(b) - 1))] ^= 1 << bit
    return bytes(b)

fracs = st.floats(0, 1, allow_nan=False)
flips = st.lists(st.tuples(fracs, st.integers(0, 7)), min_size=1, max_size=8)
garbage = st.binary(max_size=4096)


# --- samples: valid files of every kind, from the tiny synthetic root ------------------------------------------------

class Samples(dict):
    "Valid input files by kind (a short repr: hypothesis prints the arguments of a failing example)"
    def __repr__(self): return f"<valid samples: {', '.join(self)}>"


@pytest.fixture(scope='module')
def fuzz_samples(faults_data):
    root, proc = faults_data['co3d'], faults_data['proc']
    cat = Co3dCategory(root, 'chair')
    seq = cat[sorted(cat.sequences)[0]]
    f = seq.frames[0]
    frames = json.loads(gzip.decompress((root/'chair'/'frame_annotations.jgz').read_bytes()))
    seqs = json.loads(gzip.decompress((root/'chair'/'sequence_annotations.jgz').read_bytes()))
    ply = (root/seq.annotation.point_cloud_path).read_bytes()
    xyz = load_pointcloud(root/seq.annotation.point_cloud_path)[0][:40]
    ascii_ply = (f"ply\nformat ascii 1.0\nelement vertex {len(xyz)}\n"
                 "property float x\nproperty float y\nproperty float z\nend_header\n"
                 + ''.join(f"{a:.6g} {b:.6g} {c:.6g}\n" for a, b, c in xyz)).encode()
    binvox = next((proc/'chair').glob('*_dataset_instance/seq.binvox')).read_bytes()
    b = lambda rel: (root/rel).read_bytes()
    return Samples(jpg=b(f.image_path), mask=b(f.mask_path), depth=b(f.depth_path), depth_mask=b(f.depth_mask_path),
                ply=ply, ascii_ply=ascii_ply, binvox=binvox, frame=frames[0], sequence=seqs[0], frames=frames,
                frame_jgz=b('chair/frame_annotations.jgz'), seq_jgz=b('chair/sequence_annotations.jgz'),
                set_list=b('chair/set_lists/set_lists_fewview_dev.json'),
                subsets=b('category_to_subset_name_list.json'))


# === binvox ======================================================================================================

def binvox_ok(g):
    assert isinstance(g, VoxelGrid) and g.occupancy.dtype == bool and g.occupancy.shape == (g.dim,) * 3
    assert np.all(np.isfinite(g.translate)) and math.isfinite(g.scale) and g.scale > 0
    again = read_binvox_bytes(binvox_bytes(g))                  # what loads is a real grid: it survives a round trip
    assert np.array_equal(again.occupancy, g.occupancy)

def read_binvox_bytes(data):
    import tempfile
    with tempfile.TemporaryDirectory() as d: return read_binvox(write(Path(d), 'x.binvox', data))

def check_binvox_bytes(ctx, x):
    clean(read_binvox, write(ctx.tmp, 'v.binvox', x), binvox_ok)

test_binvox_random_bytes, test_binvox_random_bytes_deep = fuzz(
    'binvox_random_bytes',
    garbage | garbage.map(lambda b: b'#binvox 1\n' + b) | garbage.map(lambda b: b'#binvox 1\ndim 2 2 2\ndata\n' + b),
    check_binvox_bytes, '.binvox: random bytes (bare, after a binvox magic line, after a header)', 100, 1000)

numbers = st.one_of(st.integers(-3, 40), st.integers(), st.floats(),
                    st.sampled_from(['nan', 'inf', '-1', '1e999', 'x', '']))
header = st.builds(
    lambda v, dims, tr, sc, data, extra: (f"#binvox {v}\n"
                                          + (f"dim {' '.join(map(str, dims))}\n" if dims is not None else '')
                                          + (f"translate {' '.join(map(str, tr))}\n" if tr is not None else '')
                                          + (f"scale {sc}\n" if sc is not None else '') + extra + "data\n").encode()
                                         + data,
    st.sampled_from(['1', '2', '', '1 1']), st.none() | st.lists(numbers, max_size=4),
    st.none() | st.lists(numbers, max_size=4), st.none() | numbers,
    st.binary(max_size=64) | st.lists(st.tuples(st.integers(0, 2), st.integers(0, 255)), max_size=40).map(
        lambda runs: bytes(b for r in runs for b in r)), st.sampled_from(['', 'foo bar\n', 'dim\n', '\n\n']))

test_binvox_bad_headers, test_binvox_bad_headers_deep = fuzz(
    'binvox_bad_headers', header, check_binvox_bytes,
    '.binvox: structured headers (bad version, dims missing/non-cubic/huge/negative/NaN, bad translate/scale, '
    'random runs)', 100, 1000)

grids = st.integers(1, 10).flatmap(lambda d: st.lists(st.booleans(), min_size=d ** 3, max_size=d ** 3).map(
    lambda v: VoxelGrid(np.array(v, bool).reshape(d, d, d), (-0.5, -0.5, -0.5), 1.0)))

def check_binvox_truncated(ctx, x):
    grid, frac = x
    data = binvox_bytes(grid)
    with pytest.raises(Sparse3DError, match='v.binvox'): read_binvox(write(ctx.tmp, 'v.binvox', truncated(data, frac)))

test_binvox_truncated, test_binvox_truncated_deep = fuzz(
    'binvox_truncated', st.tuples(grids, fracs), check_binvox_truncated,
    '.binvox: valid grids cut short at a random byte',
    60, 600, expect='always a Sparse3DError naming the file (a cut file never loads as a smaller grid)')

def check_binvox_flipped(ctx, x):
    clean(read_binvox, write(ctx.tmp, 'v.binvox', flipped(ctx.s['binvox'], x)), binvox_ok)

test_binvox_bit_flips, test_binvox_bit_flips_deep = fuzz(
    'binvox_bit_flips', flips, check_binvox_flipped, '.binvox: 1-8 bit flips in a processed voxel file', 100, 1000)


# === annotations: JSON values, records, files =====================================================================

SPECIAL = [0, -1, -0.0, 1, 10 ** 400, -10 ** 400, 2 ** 63, 1e308, -1e308, float('nan'), float('inf'), float('-inf'),
           True, None,
           '', '..', '../../../etc/passwd', '/etc/passwd', 'chair/../../outside', 'a\x00b', [], {}, [0, 0], [1, 1, 1],
           [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[2, 0, 0], [0, 0.5, 0], [0, 0, 1]], [[-1, 0, 0], [0, 1, 0], [0, 0, 1]],
           [[1, 0], [0, 1]], [float('nan')] * 3, [1e308, 1e308, 1e308], [-5, 10], [10, -5], [0, 10], [200000, 10],
           [1.5, 2]]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                    st.sampled_from(SPECIAL))
json_values = st.recursive(scalars,
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                           max_leaves=12)


def key_paths(d, prefix=()):
    "Every path of keys (and list indices) into the JSON value `d`"
    out = []
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else []
    for k, v in items:
        out.append(prefix + (k,))
        out += key_paths(v, prefix + (k,))
    return out


def mutate(record, edits):
    "A deep copy of `record` with `edits` `[(path index, op, value)]` applied: delete the key, or replace its value"
    rec = json.loads(json.dumps(record))
    for i, op, value in edits:
        paths = key_paths(rec)
        if not paths: break
        path = paths[i % len(paths)]
        parent = rec
        for k in path[:-1]: parent = parent[k]
        if op == 'delete' and isinstance(parent, dict): del parent[path[-1]]
        else: parent[path[-1]] = json.loads(json.dumps(value))     # a copy: never share (or mutate) a drawn value
    return rec


edits = st.lists(st.tuples(st.integers(0, 10 ** 6), st.sampled_from(['delete', 'replace', 'replace']), json_values),
                 min_size=1, max_size=3)


def rotation_ok(R): return R.shape == (3, 3) and np.all(np.isfinite(R)) and np.allclose(R @ R.T, np.eye(3), atol=1e-2)


def frame_ok(f):
    assert isinstance(f.sequence_name, str) and isinstance(f.frame_number, int) and not isinstance(f.frame_number, bool)
    assert len(f.image_size) == 2 and all(type(s) is int and 0 < s < 100_000 for s in f.image_size), f.image_size
    for p in (f.image_path, f.mask_path, f.depth_path, f.depth_mask_path): assert p is None or isinstance(p, str)
    assert math.isfinite(f.depth_scale_adjustment) and f.depth_scale_adjustment > 0, f.depth_scale_adjustment
    for v in (f.mask_mass, f.frame_timestamp): assert v is None or (isinstance(v, (int, float)) and math.isfinite(v))
    cam = f.camera
    assert np.all(np.isfinite(cam.K)) and np.all(np.isfinite(cam.t)) and rotation_ok(cam.R), cam
    assert cam.K[0, 0] > 0 and cam.K[1, 1] > 0


def check_frame_record(ctx, x):
    rec = mutate(ctx.s['frame'], x)
    try: f = frame_from_dict(rec, 'frame_annotations.jgz [record 7]')
    except Sparse3DError as e:
        msg = str(e)
        assert 'frame_annotations.jgz [record 7]' in msg, msg
        one_line(msg)
        return
    frame_ok(f)

test_frame_annotation_records, test_frame_annotation_records_deep = fuzz(
    'frame_annotation_records', edits, check_frame_record,
    'frame annotation record: 1-3 keys deleted or replaced by random JSON (wrong types, huge ints, NaN/inf, negative '
    'or float sizes, non-rotations, escaping paths)', 300, 3000,
    expect='DataError naming the file and record, or a checked, finite frame')


def sequence_ok(s):
    assert isinstance(s.sequence_name, str) and isinstance(s.category, str)
    assert s.point_cloud_path is None or isinstance(s.point_cloud_path, str)
    for v in (s.point_cloud_quality_score, s.viewpoint_quality_score): assert v is None or math.isfinite(v)
    for v in (s.video_length, s.point_cloud_n_points): assert v is None or (type(v) is int)


def check_sequence_record(ctx, x):
    rec = mutate(ctx.s['sequence'], x)
    try: s = sequence_from_dict(rec, 'sequence_annotations.jgz [record 3]')
    except Sparse3DError as e:
        msg = str(e)
        assert 'sequence_annotations.jgz [record 3]' in msg, msg
        one_line(msg)
        return
    sequence_ok(s)

test_sequence_annotation_records, test_sequence_annotation_records_deep = fuzz(
    'sequence_annotation_records', edits, check_sequence_record,
    'sequence annotation record: 1-3 keys deleted or replaced by random JSON', 150, 1500,
    expect='DataError naming the file and record, or a checked sequence')


def gz(b): return gzip.compress(b, mtime=0)

jgz_bytes = st.one_of(
    garbage, garbage.map(gz), json_values.map(lambda v: gz(json.dumps(v).encode())),
    st.lists(json_values, max_size=3).map(lambda v: gz(json.dumps(v).encode())),
    st.tuples(st.just('frames'), fracs), st.tuples(st.just('frames'), flips), st.tuples(st.just('records'), edits))

def check_frame_file(ctx, x):
    if isinstance(x, tuple):
        kind, arg = x
        if kind == 'records':
            recs = list(ctx.s['frames']); recs[len(recs) // 2] = mutate(recs[len(recs) // 2], arg)
            x = gz(json.dumps(recs).encode())
        else: x = truncated(ctx.s['frame_jgz'], arg) if isinstance(arg, float) else flipped(ctx.s['frame_jgz'], arg)
    p = write(ctx.tmp, 'frame_annotations.jgz', x)
    truncation = isinstance(x, bytes) and len(x) < len(ctx.s['frame_jgz']) and ctx.s['frame_jgz'].startswith(x)
    r = clean(load_frame_annotations, p, lambda fs: [frame_ok(f) for f in fs])
    assert not (truncation and r is not None), 'a truncated annotation file loaded'
    q = write(ctx.tmp, 'sequence_annotations.jgz', x)
    clean(load_sequence_annotations, q, lambda ss: [sequence_ok(s) for s in ss])

test_annotation_files, test_annotation_files_deep = fuzz(
    'annotation_files', jgz_bytes, check_frame_file,
    'frame/sequence_annotations.jgz: random bytes, gzip of garbage, gzip of random JSON, truncated and bit-flipped '
    'valid files, one broken record among valid ones', 100, 1000,
    examples=[('records', [(1378, 'delete', 5.617791046444737e+306)])])   # a focal length whose pixel K overflowed


def check_set_list(ctx, x):
    d = ctx.tmp/'root'/'chair'/'set_lists'; d.mkdir(parents=True, exist_ok=True)
    p = d/'set_lists_x.json'
    p.write_bytes(x if isinstance(x, bytes) else json.dumps(x).encode())
    def ok(v):
        assert isinstance(v, dict)
        for entries in v.values():
            for s, f, i in entries: assert isinstance(s, str) and type(f) is int and isinstance(i, str)
    clean(lambda _: load_set_list(ctx.tmp/'root', 'chair', 'x'), p, ok)
    q = ctx.tmp/'root'/'category_to_subset_name_list.json'
    q.write_bytes(p.read_bytes())
    def subsets_ok(v):
        assert isinstance(v, dict)
        for names in v.values():
            assert isinstance(names, list), names
            assert all(isinstance(n, str) and n and '/' not in n and '\\' not in n and n not in ('.', '..')
                       for n in names), names
    clean(lambda _: load_subsets(ctx.tmp/'root'), q, subsets_ok)

set_lists = st.one_of(garbage, json_values, st.dictionaries(st.sampled_from(['train', 'val', 'test', 'x']),
                      st.lists(st.lists(scalars, max_size=4) | scalars, max_size=4), max_size=3),
                      st.dictionaries(st.text(max_size=5),
                                      st.lists(scalars | st.sampled_from(['../../x', '/abs', '..', 'a/b']), max_size=3),
                                      max_size=3))

test_set_lists_and_subsets, test_set_lists_and_subsets_deep = fuzz(
    'set_lists_and_subsets', set_lists, check_set_list,
    'set_lists_*.json and category_to_subset_name_list.json: random bytes, random JSON, entries of wrong types, '
    'NaN/huge frame numbers, subset names that are paths', 100, 1000,
    examples=[{'': '\n'}])         # once quoted raw into the message, which broke it across lines


# === images, masks, depth maps ===================================================================================

READERS = dict(jpg=(load_image, 'image.jpg'), mask=(load_mask, 'mask.png'), depth=(load_depth, 'depth.png'),
               depth_mask=(load_depth_mask, 'depth_mask.png'))

def image_ok(kind):
    def ok(a):
        assert isinstance(a, np.ndarray) and a.ndim == (3 if kind == 'jpg' else 2) and a.shape[0] > 0 and a.shape[1] > 0
        if kind == 'depth_mask': assert a.dtype == bool; return
        assert a.dtype == np.float32 and np.all(np.isfinite(a))
        if kind == 'depth': assert a.min() >= 0
        else: assert a.min() >= 0 and a.max() <= 1
        if kind == 'jpg': assert a.shape[2] == 3
    return ok

images = st.tuples(st.sampled_from(list(READERS)), st.one_of(
    st.tuples(st.just('random'), garbage), st.tuples(st.just('magic'), garbage), st.tuples(st.just('cut'), fracs),
    st.tuples(st.just('flip'), flips), st.tuples(st.just('swap'), st.sampled_from(list(READERS)))))

def check_image(ctx, x):
    kind, (how, arg) = x
    fn, name = READERS[kind]
    valid = ctx.s[kind]
    data = {'random': lambda: arg, 'magic': lambda: valid[:16] + arg, 'cut': lambda: truncated(valid, arg),
            'flip': lambda: flipped(valid, arg), 'swap': lambda: ctx.s[arg]}[how]()
    r = clean(fn, write(ctx.tmp, name, data), image_ok(kind))
    if how == 'cut' and r is not None:                          # a cut file may load only if nothing was lost
        whole = fn(write(ctx.tmp, 'whole_' + name, valid))
        assert np.array_equal(r, whole), f'truncated {name} loaded as different pixels'

test_images_masks_depths, test_images_masks_depths_deep = fuzz(
    'images_masks_depths', images, check_image,
    'JPEG images, PNG masks, 16-bit depth PNGs, depth masks: random bytes, random bytes after a valid header, '
    'truncations, bit flips, a file of another kind', 150, 1500)


def test_decompression_bomb_refused(tmp_path, fault):
    fault.describe('Inputs', 'PNG mask that decodes to 400 megapixels (14 kB on disk)',
                   'DataError naming the file, nothing allocated')
    fault.case()
    import zlib
    W = H = 20000
    def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d) & 0xffffffff)
    raw = zlib.compress(b'\0' * (W + 1) * 64, 9)   # the IDAT need not be complete: the size alone is refused
    p = write(tmp_path, 'bomb.png', b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', W, H, 8, 0, 0, 0, 0))
              + chunk(b'IDAT', raw) + chunk(b'IEND', b''))
    with pytest.raises(Sparse3DError, match='bomb.png'): load_mask(p)


# === point clouds ================================================================================================

def ply_ok(declared):
    def ok(r):
        xyz, normals, rgb = r
        assert xyz.dtype == np.float32 and xyz.ndim == 2 and xyz.shape[1] == 3 and np.all(np.isfinite(xyz))
        if declared is not None: assert len(xyz) == declared, (len(xyz), declared)
        for a in (normals, rgb): assert a is None or a.shape == xyz.shape
    return ok

def declared_vertices(data):
    head = data[:4096]
    for line in head.split(b'\n'):
        p = line.split()
        if p[:2] == [b'element', b'vertex'] and len(p) == 3 and p[2].isdigit(): return int(p[2])
    return None

def header_edit(data, k, new):
    end = data.find(b'end_header\n')
    lines = data[:end].split(b'\n')
    lines[k % len(lines)] = new
    return b'\n'.join(lines) + data[end:]

header_lines = st.sampled_from([b'format binary_big_endian 1.0', b'format ascii 1.0',
                                b'format binary_little_endian 2.0', b'element vertex 0', b'element vertex 1',
                                b'element vertex 999999999999',
                                b'element vertex -5', b'element vertex 12x', b'property double x',
                                b'property list uchar int x', b'property float64 nx', b'property uchar red',
                                b'element face 3', b'comment', b'', b'property float', b'obj_info x'])

plys = st.one_of(
    st.tuples(st.just('random'), garbage), st.tuples(st.just('magic'), garbage), st.tuples(st.just('cut'), fracs),
    st.tuples(st.just('flip'), flips), st.tuples(st.just('header'), st.integers(0, 30), header_lines),
    st.tuples(st.just('count'), st.integers(-3, 3)), st.tuples(st.just('extra'), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just('ascii_cut'), fracs),
    st.tuples(st.just('ascii_token'), st.integers(0, 10 ** 6),
              st.sampled_from([b'nan', b'inf', b'x', b'1e999', b'', b'1 2', b'--1'])))

def check_ply(ctx, x):
    how, *arg = x
    valid, asc = ctx.s['ply'], ctx.s['ascii_ply']
    n = declared_vertices(valid)
    strict = how in ('cut', 'ascii_cut', 'extra', 'count') and not (how == 'count' and arg[0] == 0)
    if how == 'random': data = arg[0]
    elif how == 'magic': data = (b'ply\nformat binary_little_endian 1.0\nelement vertex 3\n'
                                 b'property float x\nproperty float y\nproperty float z\nend_header\n' + arg[0])
    elif how == 'cut': data = truncated(valid, arg[0])
    elif how == 'flip': data = flipped(valid, arg[0])
    elif how == 'header': data = header_edit(valid, arg[0], arg[1])
    elif how == 'count':
        data = valid.replace(f'element vertex {n}\n'.encode(), f'element vertex {max(n + arg[0], 0)}\n'.encode(), 1)
    elif how == 'extra': data = valid + arg[0]
    elif how == 'ascii_cut': data = truncated(asc, arg[0]) if arg[0] < 1 else asc
    else:
        body = asc[asc.find(b'end_header\n') + 11:].split(b' ')
        body[arg[0] % len(body)] = arg[1]
        data = asc[:asc.find(b'end_header\n') + 11] + b' '.join(body)
    r = clean(load_pointcloud, write(ctx.tmp, 'pointcloud.ply', data), ply_ok(declared_vertices(data)))
    if how == 'ascii_cut' and r is not None:
        whole = load_pointcloud(write(ctx.tmp, 'a.ply', asc))[0]
        assert data == asc or len(r[0]) == declared_vertices(asc) and np.allclose(r[0], whole)
    elif strict: assert r is None, f'{how}: a damaged point cloud loaded ({len(r[0])} points)'

test_point_clouds, test_point_clouds_deep = fuzz(
    'point_clouds', plys, check_ply,
    'pointcloud.ply: random bytes, garbage after a valid header, truncations (binary and ASCII), bit flips, header '
    'lines replaced, vertex count off by a few, trailing bytes, bad ASCII tokens', 150, 1500,
    expect='DataError naming the file, or exactly the declared number of finite points (a cut file never loads as '
           'fewer points)')


# === special files: no hang, no read outside what was asked for =======================================================

def _fifo(p): os.mkfifo(p)
def _dir(p): p.mkdir()
def _devzero(p): p.symlink_to('/dev/zero')
def _loop(p): p.symlink_to(p.name)

SPECIAL_FILES = dict(fifo=_fifo, folder=_dir, dev_zero=_devzero, symlink_loop=_loop)
FILE_READERS = dict(binvox=read_binvox, json=load_json, image=load_image, mask=load_mask, depth=load_depth,
                    ply=load_pointcloud)


@pytest.mark.timeout(20)
@pytest.mark.parametrize('reader', list(FILE_READERS))
@pytest.mark.parametrize('special', list(SPECIAL_FILES))
def test_special_files_refused_without_hanging(tmp_path, fault, reader, special):
    fault.describe('Inputs', 'a FIFO, a folder, a symlink to /dev/zero or a symlink loop where a binvox, JSON, image, '
                   'mask, depth or PLY file is expected',
                   'DataError naming the file at once (a FIFO must not hang the run)')
    fault.case()
    p = tmp_path/('input.jgz' if reader == 'json' else f'input.{reader}')
    SPECIAL_FILES[special](p)
    with pytest.raises(Sparse3DError, match='input'): FILE_READERS[reader](p)


# === config files =================================================================================================

yaml_texts = st.one_of(
    st.text(max_size=200), garbage.map(lambda b: b.decode('latin-1')),
    st.dictionaries(st.sampled_from(['n_epochs', 'batch_size', 'image_size', 'cube_len', 'obj', 'g_lr', 'use_pose',
                                     'device', 'threshold', 'pos_weight', 'seed', 'bacth_size', 'x']),
                    json_values, max_size=4).map(
        lambda d: '\n'.join(f'{k}: {json.dumps(v, allow_nan=True)}' for k, v in d.items())))

def check_config(ctx, x):
    p = ctx.tmp/'cfg.yaml'
    p.write_bytes(x.encode('utf-8', 'surrogatepass') if isinstance(x, str) else x)
    try: cfg = load_config(p)
    except ConfigError as e:
        msg = str(e)
        assert str(p) in msg, msg[:300]
        one_line(msg, 3000)
        return
    for k, v in vars(cfg).items(): assert not (isinstance(v, float) and not math.isfinite(v)), (k, v)

test_config_files, test_config_files_deep = fuzz(
    'config_files', yaml_texts, check_config,
    'YAML config: random text and bytes, known keys with random JSON values (wrong types, NaN, lists, huge)', 100, 1000,
    expect='ConfigError naming the file, or a validated Config')


# === a whole category with broken files: the bad sequences are skipped and reported ===================================

def test_preprocess_reports_broken_sequences(faults_data, tmp_path, fault):
    fault.describe('Inputs', 'a category where 3 of 6 sequences have a truncated point cloud, truncated images, or a '
                   'garbage mask', 'those sequences or frames are skipped and reported with the file named; the others '
                   'are processed')
    from sparse3d.preprocess import PreprocessSettings, preprocess_category
    root = tmp_path/'co3d'
    shutil.copytree(faults_data['co3d'], root)
    cat = Co3dCategory(root, 'chair')
    names = sorted(cat.sequences)
    s0, s1, s2 = (cat[n] for n in names[:3])
    ply = root/s0.annotation.point_cloud_path
    ply.write_bytes(ply.read_bytes()[:-100])                                         # s0: cut point cloud -> failed
    for f in s1.frames: (root/f.image_path).write_bytes((root/f.image_path).read_bytes()[:300])   # s1: all cut: failed
    (root/s2.frames[0].mask_path).write_bytes(b'\x89PNG garbage')                    # s2: one mask: that frame dropped
    rep = preprocess_category(root, tmp_path/'proc', 'chair', PreprocessSettings(image_size=32), workers=1,
                              progress=False)
    fault.case(3)
    assert set(rep['failed']) == {s0.name, s1.name}, rep['failed']
    assert 'pointcloud.ply' in rep['failed'][s0.name]['error'] and 'truncated' in rep['failed'][s0.name]['error']
    s1_error = rep['failed'][s1.name]['error']
    assert 'no usable frame' in s1_error and 'corrupt or truncated image' in s1_error, s1_error
    dropped = rep['done'][s2.name]['dropped']
    assert len(dropped) == 1 and str(root/s2.frames[0].mask_path) in dropped[0]['reason']
    assert len(rep['done']) == 4 and 'traceback' not in json.dumps(rep)


# === messages: what a message quotes from its input is escaped, cut, and on one line =============================

class StrWithLies(str):
    "A str subclass whose repr and str forge lines: `quoted` must show its characters, not what it says about them"
    def __repr__(self): return 'forged\nline'
    def __str__(self): return 'forged\x1b[2J'

class ReprOf:
    "An object whose `repr` is any text (a newline, an escape sequence, megabytes), or raises"
    def __init__(self, text): self.text = text
    def __repr__(self):
        if self.text == 'raise': raise RuntimeError('no repr')
        return self.text

HOSTILE_CHARS = ('\n', '\r', '\t', '\x00', '\x07', '\x1b', '\x1b[2J', '\x1b]0;title\x07', '\x7f', '\x85', '\u2028',
                 '\u2029', '\u202e', '\u200b', '\ufeff', '\udc80', '\ud800')
hostile = st.lists(st.sampled_from(HOSTILE_CHARS) | st.text(max_size=4), min_size=1, max_size=8).map(''.join)
long_text = st.tuples(hostile, st.integers(1, 20000)).map(lambda t: t[0] * t[1])
odd_values = st.recursive(
    st.one_of(hostile, long_text, st.text(), st.binary(max_size=300),
              st.binary().map(lambda b: b.decode('utf-8', 'surrogateescape')), hostile.map(StrWithLies),
              st.binary(max_size=64).map(bytearray), st.integers(), st.integers(0, 20000).map(lambda n: -7 ** n),
              st.floats(), st.none(), st.booleans(), hostile.map(Path), (hostile | st.just('raise')).map(ReprOf)),
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=4) | hostile, c, max_size=4) | st.tuples(c, c),
    max_leaves=20)


def check_quoted(ctx, x):
    value, limit = x
    q = quoted(value, limit)
    assert isinstance(q, str) and q.isprintable(), f"quoted gave {q!r}"
    short = type(value) in (str, bytes) and len(value) <= limit
    bound = 10 * limit + 2 if short else 4 * limit + 40 + 30      # short: whole, each item escaped in 10 at most
    assert len(q) <= bound, (len(q), limit)                       # else cut, then "... (N characters)" is added
    if short: assert ast.literal_eval(q) == value, (value, q)     # short plain strings and bytes: Python's literal
    if isinstance(value, Path) and str(value).isprintable():
        assert q == str(value), q
    if isinstance(value, StrWithLies): assert 'forged' not in q, q

test_quoted_any_value, test_quoted_any_value_deep = fuzz(
    'quoted_any_value', st.tuples(odd_values, st.integers(1, 200)), check_quoted,
    'sparse3d.config.quoted on anything a message may quote: control characters, escape sequences, line separators, '
    'bidi marks, lone surrogates, megabyte strings, non-UTF-8 bytes, huge integers, str subclasses and objects that '
    'lie in their repr or raise, nested containers', 300, 3000,
    expect='one printable line, never longer than its limit allows, exactly the repr for short strings and bytes',
    examples=[('\u2028' * 20, 20)])     # a short string whose escapes made its repr longer than the cap: it was cut


def sites(ctx, text):
    "Calls of raise sites across the package, each fed `text` where it reads a name, a value, a key or a path"
    from sparse3d.bench import parse_runs
    from sparse3d.binvox import read_binvox
    from sparse3d.co3d import Co3dCategory, resolve_in_root
    from sparse3d.data import packed_dir
    from sparse3d.synthetic import check_synth_args
    from sparse3d.evaluate import input_kind, parse_views
    from sparse3d.metrics import batch_iou, surface_metrics
    root = ctx.tmp/'root'
    processed = ctx.tmp/'processed'
    (processed/'chair'/'packed').mkdir(parents=True, exist_ok=True)
    grid = np.zeros((1, 4, 4, 4), np.float32)
    (root/'chair').mkdir(parents=True, exist_ok=True)
    header, data = text.encode('utf-8', 'surrogatepass').replace(b'\ndata\n', b''), b'\ndata\n\x00\x08'
    frame = dict(ctx.s['frame'], image=dict(ctx.s['frame']['image'], size=text))
    def json_file(name, obj):
        (root/name).write_text(json.dumps(obj)); return root/name
    subsets, frames, seqs = 'category_to_subset_name_list.json', 'frame_annotations.jgz [record 1]', \
        'sequence_annotations.jgz [record 1]'
    return {
        'subset value': lambda: load_subsets(json_file(subsets, {'chair': text}).parent),
        'subset name': lambda: load_subsets(json_file(subsets, {text: [text, '..']}).parent),
        'set list split': lambda: load_set_list(json_file('chair/set_lists.json', {text: text}).parents[1], 'chair'),
        'frame record': lambda: frame_from_dict(dict(ctx.s['frame'], sequence_name=[text]), frames),
        'frame image size': lambda: frame_from_dict(frame, frames),
        'sequence record': lambda: sequence_from_dict(dict(ctx.s['sequence'], category={text: text}), seqs),
        'annotation path': lambda: resolve_in_root(root, text + '/../../x', 'image path'),
        'category': lambda: Co3dCategory(root, text),
        'config key': lambda: check_value(text, 1, 'run.yaml'),
        'config value': lambda: check_value('device', text, 'run.yaml'),
        'config number': lambda: check_value('batch_size', text, 'run.yaml'),
        'binvox version': lambda: read_binvox(write(ctx.tmp, 'v.binvox', b'#binvox ' + header + b'\ndim 2 2 2' + data)),
        'binvox dims': lambda: read_binvox(write(ctx.tmp, 'v.binvox', b'#binvox 1\ndim 2 ' + header + data)),
        'missing file': lambda: read_binvox(ctx.tmp/(text.replace('/', '_').replace('\x00', '_') + '.binvox')),
        'split name': lambda: packed_dir(root, text),
        'bench runs': lambda: parse_runs(f'{text}=missing.pt;'),
        'synth category': lambda: check_synth_args(ctx.tmp/'out', 1, 1, 64, 0, 1, text),
        'eval views': lambda: parse_views(text),
        'eval threshold': lambda: batch_iou(grid, grid, text),
        'eval tau': lambda: surface_metrics(grid[0], grid[0], tau=text),
        'eval test_dir': lambda: input_kind(ctx.tmp/'no such folder'/text),
        'eval category': lambda: input_kind(processed, text),
    }


SITES = ['subset value', 'subset name', 'set list split', 'frame record', 'frame image size', 'sequence record',
         'annotation path', 'category', 'config key', 'config value', 'config number', 'binvox version', 'binvox dims',
         'missing file', 'split name', 'bench runs', 'synth category', 'eval views', 'eval threshold', 'eval tau',
         'eval test_dir', 'eval category']


def check_site(ctx, x):
    site, text = x
    calls = sites(ctx, text)
    assert sorted(calls) == sorted(SITES), sorted(calls)
    try: calls[site]()
    except Sparse3DError as e:
        msg = str(e)
        one_line(msg)
        for c in set(text):
            assert c.isprintable() or c not in msg, f"{site}: raw {c!r} from the input in the message: {msg!r}"

test_raise_sites_quote_input, test_raise_sites_quote_input_deep = fuzz(
    'raise_sites_quote_input', st.tuples(st.sampled_from(SITES), hostile | long_text),
    check_site,
    'names, values, keys and paths holding newlines, escape sequences, line separators, bidi marks, lone surrogates or '
    '20,000 characters, fed to the raise sites of subsets, set lists, frame and sequence annotations, annotation '
    'paths, categories, config keys and values, binvox headers, split names, --runs labels, synth arguments, and '
    'evaluation\'s --views, thresholds, F-score tau, --test_dir paths and categories',
    200, 2000,
    expect='a one-line printable Sparse3DError (the input escaped and cut), or a correct value',
    examples=[('missing file', '\ud800'), ('annotation path', '\ud800')])   # once a raw UnicodeEncodeError from os.stat
