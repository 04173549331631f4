"""viz: image recognition, grids and the figures the loggers and the CLI draw."""

import pytest
import torch

from lightning_influence.engines import TopInfluences
from lightning_influence.viz import as_image, explanation_figure, image_grid, spectrum_figure


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
