import jax.numpy as jnp
import numpy as np
import pytest

from enf_lib.coordinates import (coordinate_grid, coords_to_pixels, images_to_signals,
                                 pixels_to_coords, signals_to_images)


def test_square_grid_covers_pixel_centres_symmetrically():
    grid = coordinate_grid(4, 4).reshape(4, 4, 2)
    np.testing.assert_allclose(grid[:, 0, 0], [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(grid[0, :, 1], [-0.75, -0.25, 0.25, 0.75])


def test_non_square_grid_keeps_aspect_ratio():
    grid = coordinate_grid(2, 4).reshape(2, 4, 2)
    # The long side spans [-1, 1]; rows and columns share one pixel spacing of 0.5.
    np.testing.assert_allclose(grid[:, 0, 0], [-0.25, 0.25])
    np.testing.assert_allclose(grid[0, :, 1], [-0.75, -0.25, 0.25, 0.75])


@pytest.mark.parametrize("shape", [(32, 32), (3, 7), (8, 5)])
def test_pixels_and_coords_round_trip(shape):
    grid = coordinate_grid(*shape)
    pixels = coords_to_pixels(grid, *shape)
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    np.testing.assert_allclose(pixels, np.stack([rows, cols], -1).reshape(-1, 2), atol=1e-5)
    np.testing.assert_allclose(pixels_to_coords(pixels, *shape), grid, atol=1e-6)


def test_signals_follow_the_grid_order():
    images = jnp.arange(2 * 3 * 5 * 1, dtype=jnp.float32).reshape(2, 3, 5, 1)
    signals = images_to_signals(images)
    assert signals.shape == (2, 15, 1)
    assert float(signals[0, 5, 0]) == float(images[0, 1, 0, 0])  # row 1, column 0
    np.testing.assert_array_equal(signals_to_images(signals, 3, 5), images)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="positive"):
        coordinate_grid(0, 4)
