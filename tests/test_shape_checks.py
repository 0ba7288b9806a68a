"""The suite runs with jaxtyping's shape checks on (tests/conftest.py): a wrong shape fails loudly."""

import pytest
import torch


def test_a_wrong_shape_in_a_checked_signature_is_an_error():
    from threed.geometry.gaussians import quaternion_to_matrix

    assert quaternion_to_matrix(torch.randn(5, 4)).shape == (5, 3, 3)
    with pytest.raises(Exception, match="quaternions"):
        quaternion_to_matrix(torch.randn(5, 3))
