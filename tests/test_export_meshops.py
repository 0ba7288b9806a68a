"""Mesh finishing: decimation hits the face budget and keeps the shape; the unit box and its transform."""

import numpy as np
import pytest
import torch
import trimesh

from threed.errors import ThreedError
from threed.export.isosurface import clean_mesh, extract_mesh
from threed.export.meshops import decimate, normalize_to_unit_box, unit_box_transform


def ellipsoid_density(p):
    """A hard ellipsoid off the origin: semi-axes 0.6, 0.3, 0.4 around (0.1, -0.2, 0.05)."""
    q = (p - torch.tensor([0.1, -0.2, 0.05])) / torch.tensor([0.6, 0.3, 0.4])
    return (q.norm(dim=-1, keepdim=True) < 1.0).float() * 50.0


@pytest.fixture(scope="module")
def mc_mesh():
    mesh, _ = extract_mesh(ellipsoid_density, radius=1.0, resolution=96)
    return clean_mesh(mesh)


@pytest.mark.parametrize("target", [300, 1000, 4000])
def test_decimation_hits_the_face_count_and_keeps_the_shape(mc_mesh, target):
    assert len(mc_mesh.faces) > 2 * target  # the test only means something if it decimates
    out = decimate(mc_mesh, target)
    # The simplifier stops at the target; dropping degenerate faces afterwards may remove a handful.
    assert 0.98 * target <= len(out.faces) <= target
    assert out.is_watertight and out.is_winding_consistent
    assert out.volume > 0  # outward
    # Shape kept: volume within 2 % and every decimated vertex close to the original surface.
    assert out.volume == pytest.approx(mc_mesh.volume, rel=0.02)
    # Every kept vertex stays near the true surface: |q| = 1 on the ellipsoid. 0.06 in q ~ 0.02 world
    # units (a grid cell at 96^3 is 0.021), where marching cubes itself is within ~half a cell.
    q = (out.vertices - [0.1, -0.2, 0.05]) / [0.6, 0.3, 0.4]
    assert np.abs(np.linalg.norm(q, axis=1) - 1.0).max() < 0.06


def test_decimation_is_a_no_op_below_the_budget(mc_mesh):
    out = decimate(mc_mesh, len(mc_mesh.faces) + 10)
    assert len(out.faces) == len(mc_mesh.faces)
    np.testing.assert_array_equal(out.vertices, mc_mesh.vertices)
    with pytest.raises(ThreedError, match="at least 4"):
        decimate(mc_mesh, 2)


def test_unit_box_centres_scales_and_keeps_visuals(mc_mesh):
    mesh = mc_mesh.copy()
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile([10, 200, 30, 255], (len(mesh.vertices), 1)))
    out, transform = normalize_to_unit_box(mesh)
    lo, hi = out.bounds
    np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-9)
    assert (hi - lo).max() == pytest.approx(1.0)
    # Longest world side is x (1.2): y and z keep their proportions, no rotation.
    np.testing.assert_allclose(hi - lo, (mc_mesh.bounds[1] - mc_mesh.bounds[0]) * transform.scale)
    assert np.argmax(hi - lo) == 0
    assert out.volume > 0 and out.is_winding_consistent
    np.testing.assert_allclose(transform.to_world(out.vertices), mesh.vertices, atol=1e-9)
    homogeneous = np.c_[mesh.vertices, np.ones(len(mesh.vertices))] @ transform.matrix.T
    np.testing.assert_allclose(homogeneous[:, :3], out.vertices, atol=1e-12)
    assert (out.visual.vertex_colors == [10, 200, 30, 255]).all()
    np.testing.assert_allclose(out.vertex_normals, mesh.vertex_normals, atol=1e-12)  # kept, not recomputed
    np.testing.assert_allclose(transform.centre, [0.1, -0.2, 0.05], atol=0.02)  # the ellipsoid's centre
    assert unit_box_transform(out).scale == pytest.approx(1.0)
