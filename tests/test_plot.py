"""gdlib.plot helpers that notebooks rely on (headless)."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from gdlib import plot  # noqa: E402


def test_denoising_strip_shows_evenly_spaced_steps_ending_at_the_last():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    xs = [rng.uniform(-3, 3, (3, 8, 8)) for _ in range(20)]
    x0s = [np.tanh(x) for x in xs]
    ts = list(range(950, -50, -50))
    fig = plot.denoising_strip(xs, x0s, ts, n_cols=5)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:5] == ["t=950", "t=700", "t=450", "t=250", "t=0"]
    shown = fig.axes[0].images[0].get_array()
    assert shown.shape == (8, 8, 3) and shown.dtype == np.uint8     # states are clipped to [-1, 1] before display
    plt.close(fig)
    with pytest.raises(ValueError, match="as many"):
        plot.denoising_strip(xs, x0s[:3], ts)


def test_image_grid_leaves_empty_cells_blank():
    import matplotlib.pyplot as plt

    imgs = np.zeros((6, 3, 4, 4), np.float32)
    fig = plot.image_grid(imgs, nrow=3, empty=[1, 2])
    drawn = [len(ax.images) for ax in fig.axes]
    assert drawn == [1, 0, 0, 1, 1, 1]
    plt.close(fig)
