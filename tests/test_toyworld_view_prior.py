"""The shipped toy-world view prior (``image_model=toyworld``), loaded as image-to-3D loads it, and what
image-to-3D makes of one toy photo with it."""

from pathlib import Path

import pytest
import torch

from threed.cameras import Cameras
from threed.guidance.zero123 import PixelViewPrior, load_view_prior, relative_pose
from threed.reference.image import frame_object
from threed.toyworld.train_card import colour_of, foreground, reference_view

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "assets" / "priors" / "toyworld-zero123"
# caption -> colour of its sides and back (the held-out purple torus included). Not "a blue cube with a yellow
# front": seen straight on it is a yellow square, and nothing in that photo says its sides are blue.
REFERENCES = {"a red cube": "red", "a yellow cylinder": "yellow", "a green sphere": "green", "a purple torus": "purple"}


@pytest.fixture(scope="module")
def prior():
    return load_view_prior("toyworld")


def test_shipped_view_prior_is_small_and_has_zero123s_layout(prior):
    assert isinstance(prior, PixelViewPrior) and prior.resolution == 32 and prior.concat_channels == 3
    assert prior.image_encoder is not None and prior.image_dim == 64 and prior.prediction_type == "v_prediction"
    size = sum(f.stat().st_size for f in FOLDER.rglob("*") if f.is_file())
    assert size < 25 * 2 ** 20


def test_novel_view_samples_show_the_references_other_sides(prior):
    """DDIM samples (fixed seed, CFG 3) at Δazimuth 90/180/270 of a front photo show the object's colour round
    its sides and back, on the white background the prior was trained on. The shipped prior gets 10 of the 12
    (chance is about 2; the first version, which ignored its reference, drew colours set by the noise)."""
    gen = torch.Generator().manual_seed(0)
    az = torch.tensor([90.0, 180.0, 270.0])
    cams = Cameras.orbit(0.0, az, 2.75, 40.0, 32)
    pose = relative_pose(cams.elevation, cams.azimuth, cams.distance, 0.0, 0.0, 2.75, "zero123")
    got = {}
    for caption in REFERENCES:
        rgb, mask = reference_view(caption, 32)
        ref, _, _ = frame_object(rgb, mask, 0.5, 32)
        samples = prior.sample_views(ref, pose, 3.0, 25, gen)
        got[caption] = [colour_of(s, foreground(s)) for s in samples]
        corners = torch.cat([samples[:, :3, :3], samples[:, -3:, -3:]]).reshape(-1, 3)
        assert corners.mean() > 0.85, (caption, corners.mean())
    right = sum(c == REFERENCES[k] for k, cs in got.items() for c in cs)
    assert right >= 9, got


def test_one_photo_reconstruction_matches_the_other_sides(tmp_path):
    """quickstart-image on the red-cube photo (200 of its 600 steps, seed 0): the photo at the reference camera,
    and at Δazimuth 90/180/270 the cube's silhouette in red. With the reference losses alone the side views'
    mask IoU is 0.863 (0.903 with the prior, 0.897 on seed 1; at 300 steps 0.85 and 0.914, measured); the view
    prior's SDS is what lifts it over the bar."""
    from threed.toyworld.score_views import reconstruct_and_score

    report = reconstruct_and_score("quickstart-image", "a red cube", ROOT / "assets" / "examples" / "red-cube.png",
                                   ["stages.0.steps=200", "stages.0.val_every=0"], tmp_path)
    assert report["reference_psnr"] >= 25.0, report
    assert report["novel_colour_ok"] == 1.0, report
    assert report["novel_iou"] >= 0.89, report
