"""Our .binvox files open in independent readers with the same voxels, and theirs open here.

The two references: trimesh's binvox exchange, and the PyPI `binvox` package. Grids are asymmetric
on purpose, so that a swapped axis cannot pass.
"""
import io

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import trimesh
from binvox import Binvox

from sparse3d.binvox import read_binvox, write_binvox


def asymmetric_grid(dim=32, seed=0):
    "A random grid plus features that differ along every axis"
    occ = np.random.default_rng(seed).random((dim,) * 3) < 0.08
    occ[:, :, 0] = True            # z = 0 slab
    occ[1, :, :] = False
    occ[2, 3, :] = True            # a line along z
    return occ


@pytest.fixture
def occ(): return asymmetric_grid()


def test_ours_opens_in_trimesh(tmp_path, occ):
    p = write_binvox(tmp_path/'ours.binvox', occ, translate=(0.25, -1.0, 2.0), scale=2.0)
    vg = trimesh.load(p)
    np.testing.assert_array_equal(vg.matrix, occ)
    # trimesh maps cell centres with the file's translate and scale: cell (0,0,0) centre is translate + scale/dim/2
    np.testing.assert_allclose(vg.transform[:3, 3], (0.25, -1.0, 2.0), atol=1e-6)
    np.testing.assert_allclose(np.diag(vg.transform)[:3], 2.0 / (32 - 1), rtol=0.1)


def test_ours_opens_in_binvox_package(tmp_path, occ):
    p = write_binvox(tmp_path/'ours.binvox', occ, translate=(0.25, -1.0, 2.0), scale=2.0)
    b = Binvox.read(str(p), 'dense')
    np.testing.assert_array_equal(b.data, occ)
    assert list(b.dims) == [32, 32, 32]
    np.testing.assert_allclose(b.translate, (0.25, -1.0, 2.0))
    assert b.scale == pytest.approx(2.0)


def test_theirs_open_here_trimesh(tmp_path, occ):
    vg = trimesh.voxel.VoxelGrid(trimesh.voxel.encoding.DenseEncoding(occ))
    (tmp_path/'t.binvox').write_bytes(trimesh.exchange.binvox.export_binvox(vg))
    np.testing.assert_array_equal(read_binvox(tmp_path/'t.binvox').occupancy, occ)


def test_theirs_open_here_binvox_package(tmp_path, occ):
    Binvox(occ, [32, 32, 32], [0.5, 0.5, -0.5], 3.0, 'xyz', 'dense').write(str(tmp_path/'b.binvox'))
    g = read_binvox(tmp_path/'b.binvox')
    np.testing.assert_array_equal(g.occupancy, occ)
    assert (g.translate, g.scale) == ((0.5, 0.5, -0.5), 3.0)


@settings(max_examples=40, deadline=None)
@given(arrays(np.bool_, st.sampled_from([(2, 2, 2), (5, 5, 5), (16, 16, 16)])))
def test_round_trip_matches_trimesh_property(tmp_path_factory, occ):
    p = tmp_path_factory.mktemp('h')/'x.binvox'
    write_binvox(p, occ)
    np.testing.assert_array_equal(read_binvox(p).occupancy, occ)
    decoded = trimesh.exchange.binvox.load_binvox(io.BytesIO(p.read_bytes()))
    np.testing.assert_array_equal(decoded.matrix, occ)
