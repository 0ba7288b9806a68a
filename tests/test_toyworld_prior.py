"""The shipped toy-world prior, loaded through the public API exactly as generation loads it."""

import pytest
import torch

from threed.errors import ThreedError
from threed.guidance.prior import load_prior
from threed.toyworld.scenes import COLOURS
from threed.toyworld.train_card import colour_of, foreground

PROMPTS = ["a red cube", "a blue sphere", "a yellow torus", "a green pyramid", "a purple cylinder", "an orange cone"]


@pytest.fixture(scope="module")
def prior():
    return load_prior("toyworld")


def test_shipped_prior_is_small_and_standard(prior):
    assert prior.resolution == 32 and not prior.latent
    n_params = sum(p.numel() for p in prior.unet.parameters()) + sum(p.numel() for p in prior.text_encoder.parameters())
    assert n_params < 6_000_000  # <= 25 MB in fp32 with room to spare


def test_samples_have_the_prompted_colour(prior):
    """DDIM samples (fixed seed, CFG 3) are mostly the prompt's colour; 'an orange cone' was held out of training."""
    gen = torch.Generator().manual_seed(0)
    prompts = [f"{p}, front view" for p in PROMPTS for _ in range(4)]
    images = prior.sample(prompts, steps=25, guidance_scale=3.0, generator=gen)
    assert images.shape == (len(prompts), 32, 32, 3)
    got = [colour_of(img, foreground(img)) for img in images]
    want = [p.split()[1] for p in prompts]
    assert set(want) <= set(COLOURS)
    correct = sum(g == w for g, w in zip(got, want))
    # Every prompt's colour appears in at least one of its four samples, and in 2/3 of all samples
    # (the shipped prior scores 19 of 24 here; the judge's grey-vs-white confusion costs a few).
    assert all(w in got[4 * i:4 * i + 4] for i, w in enumerate(want[::4])), list(zip(want, got))
    assert correct >= 16, list(zip(want, got))


def test_unknown_word_names_the_vocabulary(prior):
    with pytest.raises(ThreedError) as err:
        prior.encode_text(["a red hamburger"])
    msg = str(err.value)
    assert "hamburger" in msg and "cube" in msg and "sphere" in msg
