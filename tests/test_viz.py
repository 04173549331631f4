"""viz: image recognition, grids and the figures the loggers and the CLI draw."""

import numpy as np
import pytest
import torch

from lightning_influence.engines import TopInfluences
from lightning_influence.viz import (
    as_image,
    examples_grid,
    explanation_figure,
    image_grid,
    spectrum_figure,
    spectrum_image,
)


def test_images_are_recognised_and_normalised():
    assert as_image(torch.randn(1, 8, 8)).shape == (3, 8, 8)
    assert as_image(torch.randn(8, 8)).shape == (3, 8, 8)
    assert as_image(torch.randn(8, 8, 3)).shape == (3, 8, 8)  # HWC
    image = as_image(torch.randint(0, 255, (3, 5, 5), dtype=torch.uint8))
    assert float(image.min()) >= 0 and float(image.max()) <= 1
    assert as_image(torch.randn(6)) is None  # a feature vector
    assert as_image(torch.randint(0, 9, (1, 8, 8))) is None  # integer tokens, not pixels
    assert as_image("text") is None
    grid = image_grid([torch.rand(3, 4, 4)] * 5, pad=1)
    assert grid.shape == (3, 2 * 5 + 1, 3 * 5 + 1)


def test_figures_draw_and_refuse_non_images():
    pytest.importorskip("matplotlib")
    figure = spectrum_figure(torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64))
    assert len(figure.axes) == 1
    images = [(torch.rand(1, 8, 8), i % 3) for i in range(6)]
    top = TopInfluences(
        torch.tensor([[1, 2]]),
        torch.tensor([[0.5, 0.1]]),
        torch.tensor([[3, 4]]),
        torch.tensor([[-0.2, -0.4]]),
    )
    figure = explanation_figure(images, images, [0], top)
    assert len(figure.axes) == 5  # the example, 2 proponents, 2 opponents
    vectors = [(torch.rand(6), 0)] * 6
    with pytest.raises(ValueError, match="draws image inputs"):
        explanation_figure(vectors, vectors, [0], top)


def test_the_examples_grid_shows_every_image_exactly_scaled_under_its_caption():
    pytest.importorskip("PIL")
    red, green = torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)
    red[0], green[1] = 1.0, 1.0
    green[1, 0, 0] = 0.5  # one darker pixel: the scaling is nearest neighbour, whole blocks
    rows = [
        {"image": red, "index": 3, "label": 1, "score": 2.5, "status": "kept"},
        {"image": green, "index": 7, "label": 0, "score": 1.5, "status": "dropped"},
    ]
    pixels = examples_grid(rows, title="most suspect")
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    scale = 160 // 8
    for color in ([255, 0, 0], [0, 255, 0]):
        ys, xs = np.nonzero((pixels == color).all(axis=2))
        assert ys.max() - ys.min() + 1 == 8 * scale and xs.max() - xs.min() + 1 == 8 * scale
    # the darker pixel is one scale x scale block at the green tile's top-left corner
    ys, xs = np.nonzero((pixels == [0, 128, 0]).all(axis=2))
    assert len(ys) == scale * scale
    # captions are drawn above the tiles: dark text pixels in the band above the first tile
    ys, _ = np.nonzero((pixels == [255, 0, 0]).all(axis=2))
    assert (pixels[: ys.min()] < 100).all(axis=2).any()


def _clusters(mask: np.ndarray) -> list[tuple[float, float]]:
    """(x, y) centres of the blobs of ``mask``, left to right (blobs apart in x)."""
    ys, xs = np.nonzero(mask)
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    cuts = np.nonzero(np.diff(xs) > 2)[0] + 1
    return [
        (float(x.mean()), float(y.mean()))
        for x, y in zip(np.split(xs, cuts), np.split(ys, cuts), strict=True)
    ]


def test_the_spectrum_image_plots_each_magnitude_by_rank_negatives_in_red():
    pytest.importorskip("PIL")
    pixels = spectrum_image(torch.tensor([8.0, -4.0, 1.0, 0.5], dtype=torch.float64))
    assert pixels.dtype == np.uint8 and pixels.shape == (350, 500, 3)
    blue = _clusters((pixels == [31, 119, 180]).all(axis=2))
    red = _clusters((pixels == [214, 39, 40]).all(axis=2))
    assert len(blue) == 3 and len(red) == 1
    (x1, y1), (x3, y3), (x4, y4) = blue
    (x2, y2) = red[0]
    assert x1 < x2 < x3 < x4  # by rank, equally spaced
    assert abs((x2 - x1) - (x4 - x3)) < 1.5
    assert y1 < y2 < y3 < y4  # larger |lambda| higher up
    # a log scale: 8 -> 4 -> 1 -> 0.5 are 1, 2 and 1 halvings apart
    assert abs((y3 - y2) - 2 * (y2 - y1)) < 1.5 and abs((y4 - y3) - (y2 - y1)) < 1.5
    # nothing to plot, or a zero (a linear scale): still an image
    assert spectrum_image(torch.zeros(0, dtype=torch.float64)).shape == (350, 500, 3)
    assert spectrum_image(torch.tensor([1.0, 0.0], dtype=torch.float64)).shape == (350, 500, 3)
