"""Respacing: which base timesteps a respacing spec keeps, and specs that are errors."""

import pytest

from guided_diffusion.respace import space_timesteps


@pytest.mark.parametrize("spec,count,first_steps", [
    ("250", 250, [0, 4, 8]),
    ("ddim25", 25, [0, 40, 80]),
    ("10,15,20", 45, [0, 37, 74]),
    ([1000], 1000, [0, 1, 2]),
])
def test_respacing(spec, count, first_steps):
    steps = sorted(space_timesteps(1000, spec))
    assert len(steps) == count and steps[:3] == first_steps and steps[-1] <= 999


@pytest.mark.parametrize("spec", ["ddim7x", "ddim3000", "5000"])
def test_bad_respacing_is_an_error(spec):
    with pytest.raises(ValueError):
        space_timesteps(1000, spec)
