"""The generated tet grid, marching tetrahedra against analytic SDFs, and the DMTet geometry."""

import math

import pytest
import torch

from threed.cameras import Cameras
from threed.geometry.dmtet import DMTet, DMTetConfig, marching_tets, tet_grid
from type_checks import refused
from threed.geometry.encoding import HashGridConfig
from threed.render.background import Background
from threed.render.raster import MeshRenderer, MeshRendererConfig

SMALL_GRID = HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=4, max_resolution=32)


def tet_volumes(vertices, tets):
    p = vertices[tets]
    return torch.linalg.det(p[:, 1:] - p[:, :1]) / 6.0


def test_tet_grid_is_conforming_and_positively_oriented():
    vertices, tets = tet_grid(3, radius=1.0)
    assert vertices.shape == (64, 3) and tets.shape == (6 * 27, 4)
    vol = tet_volumes(vertices, tets)
    assert (vol > 0).all()
    torch.testing.assert_close(vol.sum(), torch.tensor(8.0))
    # Conforming: every triangle is shared by two tets, except those on the cube's surface
    # (2 per cell face: 6 sides x 9 cell faces x 2).
    tris = torch.cat([tets[:, [1, 2, 3]], tets[:, [0, 2, 3]], tets[:, [0, 1, 3]], tets[:, [0, 1, 2]]])
    _, counts = torch.unique(tris.sort(1).values, dim=0, return_counts=True)
    assert counts.max() == 2 and (counts == 1).sum() == 6 * 9 * 2


@pytest.mark.parametrize("resolution", [24, 32])
def test_marching_tets_of_a_sphere_is_watertight_with_the_right_area(resolution):
    vertices, tets = tet_grid(resolution, radius=1.0)
    r = 0.61  # off the grid planes, so no vertex lies exactly on the surface
    mesh = marching_tets(vertices, tets, vertices.norm(dim=-1) - r)
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.is_winding_consistent
    assert abs(float(mesh.area()) / (4 * math.pi * r * r) - 1) < 0.02
    assert tm.volume > 0  # outward normals
    radial = (mesh.vertices.norm(dim=-1) - r).abs()
    assert radial.max() < 0.5 * 2.0 / resolution  # vertices on grid edges crossing the sphere, within a cell


def test_marching_tets_is_closed_for_every_case():
    """Random signs (all 14 non-empty cases) away from the boundary still give a closed, oriented surface."""
    g = torch.Generator().manual_seed(0)
    vertices, tets = tet_grid(6, radius=1.0)
    sdf = torch.rand(vertices.shape[0], generator=g) - 0.5
    sdf[(vertices.abs() > 0.99).any(-1)] = 1.0  # keep the level set inside the box
    occ = (sdf[tets] < 0).long() @ torch.tensor([1, 2, 4, 8])
    assert len(torch.unique(occ)) == 16
    tm = marching_tets(vertices, tets, sdf).to_trimesh()
    assert len(tm.faces) > 100
    assert tm.is_watertight and tm.is_winding_consistent and tm.volume > 0


def test_marching_tets_is_differentiable_and_handles_empty_level_sets():
    vertices, tets = tet_grid(8, radius=1.0)
    sdf = (vertices.norm(dim=-1) - 0.5).requires_grad_(True)
    positions = vertices.clone().requires_grad_(True)
    mesh = marching_tets(positions, tets, sdf)
    mesh.area().backward()
    # Growing the SDF shrinks the sphere: d area / d sdf is negative near the surface.
    assert sdf.grad.sum() < 0 and positions.grad.abs().sum() > 0
    empty = marching_tets(vertices, tets, torch.ones(vertices.shape[0]))
    assert empty.vertices.shape == (0, 3) and empty.faces.shape == (0, 3)
    with refused("one value per vertex"):
        marching_tets(vertices, tets, torch.ones(3))


def test_dmtet_starts_from_a_sphere_or_ellipsoid():
    dmtet = DMTet(DMTetConfig(grid_size=24, encoding=SMALL_GRID))
    tm = dmtet.mesh().to_trimesh()
    assert tm.is_watertight
    assert abs(tm.area / (4 * math.pi * 0.25) - 1) < 0.02
    ell = DMTet(DMTetConfig(grid_size=24, init="ellipsoid", init_radii=(0.6, 0.3, 0.4), encoding=SMALL_GRID))
    extent = ell.mesh().vertices.abs().amax(0)
    torch.testing.assert_close(extent, torch.tensor([0.6, 0.3, 0.4]), atol=2.0 / 24, rtol=0)


def test_field_sdf_is_fitted_to_the_starting_shape():
    torch.manual_seed(0)
    dmtet = DMTet(DMTetConfig(grid_size=16, sdf="field", encoding=SMALL_GRID, hidden_dim=16))
    error = dmtet.init_shape(lambda x: x.norm(dim=-1) - 0.5, steps=200)
    assert error < 0.05
    radial = dmtet.mesh().vertices.norm(dim=-1)
    assert (radial - 0.5).abs().mean() < 0.05


def test_dmtet_from_a_density_isosurface():
    """NeRF -> DMTet hand-off: the mesh follows where the density crosses the level, between grid vertices."""
    r = 0.43
    dmtet = DMTet(DMTetConfig(grid_size=20, encoding=SMALL_GRID))
    dmtet.init_from_density(lambda x: 100.0 * torch.exp(-(x.norm(dim=-1) / r) ** 2 * math.log(10.0)), level=10.0)
    mesh = dmtet.mesh()
    assert mesh.to_trimesh().is_watertight
    # density = level exactly at |x| = r; the axis-wise linear crossing puts vertices within ~a tenth of a cell.
    assert (mesh.vertices.norm(dim=-1) - r).abs().mean() < 0.1 * dmtet.cell
    with pytest.raises(ValueError, match="never crosses"):
        dmtet.init_from_density(lambda x: torch.zeros(x.shape[0]), level=1.0)


def test_rendered_dmtet_trains_sdf_deformation_and_albedo():
    torch.manual_seed(0)
    dmtet = DMTet(DMTetConfig(grid_size=12, encoding=SMALL_GRID))
    renderer = MeshRenderer(MeshRendererConfig(), dmtet, Background())
    cams = Cameras.orbit([10.0, 30.0], [0.0, 140.0], 2.5, 40.0, 24)
    out = renderer(cams, "lambertian")
    assert out.rgb.shape == (2, 24, 24, 3) and 0 < float(out.opacity.detach().mean()) < 1
    (out.rgb.mean() + out.opacity.mean()).backward()
    assert dmtet.sdf_param.grad.abs().sum() > 0
    assert dmtet.deform_param.grad.abs().sum() > 0
    assert all(p.grad is not None for p in dmtet.albedo_mlp.parameters())


def test_bad_config_is_reported():
    with pytest.raises(ValueError, match="deform_scale"):
        DMTetConfig(deform_scale=0.7)
    with pytest.raises(ValueError, match="init_radii"):
        DMTetConfig(init_radii=(0.5, 1.2, 0.5))
    with pytest.raises(ValueError, match="resolution"):
        tet_grid(0)
