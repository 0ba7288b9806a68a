"""Mesh tensors: adjacency and the normal-consistency regulariser of mesh refinement stages."""

import torch
import trimesh

from threed.geometry.mesh import Mesh


def test_edge_face_pairs_of_a_closed_mesh_cover_every_edge_once():
    mesh = Mesh.from_trimesh(trimesh.creation.icosphere(subdivisions=2))
    pairs = mesh.edge_face_pairs()
    assert len(pairs) == 3 * len(mesh.faces) // 2  # closed manifold: every edge has two faces
    assert (pairs[:, 0] != pairs[:, 1]).all()


def test_normal_consistency_is_zero_for_a_plane_and_falls_as_a_sphere_is_refined():
    plane = Mesh.from_trimesh(trimesh.creation.box(extents=(1, 1, 1e-3)))
    top = plane.face_normals()[:, 2] > 0.99
    flat = Mesh(plane.vertices, plane.faces[top])
    assert float(flat.normal_consistency()) < 1e-6
    coarse, fine = (float(Mesh.from_trimesh(trimesh.creation.icosphere(subdivisions=s)).normal_consistency())
                    for s in (1, 3))
    assert fine < coarse / 10  # 1 - cos(angle) ~ angle^2 / 2 and the dihedral angle halves per subdivision
    # a cube's only non-flat pairs are across its 12 edges: 1 - cos 90 = 1 for those 12 of its 18 pairs
    cube = Mesh.from_trimesh(trimesh.creation.box())
    assert abs(float(cube.normal_consistency()) - 12 / 18) < 1e-6


def test_normal_consistency_gradient_smooths_a_spike():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32)
    vertices[0] *= 1.5  # pull one vertex out
    vertices.requires_grad_(True)
    Mesh(vertices, torch.tensor(sphere.faces)).normal_consistency().backward()
    radial = (vertices.grad[0] * vertices.detach()[0]).sum()
    assert radial > 0  # descending the gradient moves the spike back in


def test_normal_consistency_ignores_degenerate_faces():
    """Marching tets can emit zero-area faces; their normals are undefined and must not poison the gradient."""
    sphere = trimesh.creation.icosphere(subdivisions=1)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32)
    faces = torch.tensor(sphere.faces)
    a, b, _ = faces[0].tolist()
    vertices[b] = vertices[a]  # collapse an edge: two faces lose all area
    vertices.requires_grad_(True)
    loss = Mesh(vertices, faces).normal_consistency()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(vertices.grad).all()
