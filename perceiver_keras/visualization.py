"""Figures of what the latents attend to, like the Perceiver paper's.

The encoder cross-attention of one example, `[heads, latents, M]`, drawn as
a grid of panels: one row per head, one column per latent. Over an image
(tokens on a 2-D grid) each panel shows the latent's attention map laid over
the image; over a 1-D input (tokens in a sequence) each panel is a strip,
with the input signal drawn over it when one is given.

matplotlib is imported only when a figure is made, and only through its
object API with the Agg canvas: no pyplot, no global backend change.
"""

import math

import numpy as np

# Each panel is this many pixels square (at DPI dots per inch).
PANEL_PIXELS = 200
DPI = 100
MAX_DEFAULT_LATENTS = 4


def _indices(selected, count, name, default):
    """`selected` (None, an int or ints) as a checked list of indices."""
    if selected is None:
        return list(default)
    indices = [selected] if np.ndim(selected) == 0 else list(selected)
    bad = [i for i in indices if not 0 <= int(i) < count]
    if bad or not indices:
        raise ValueError(
            f"`{name}` must be None or indices in [0, {count}). "
            f"Received: {name}={selected!r}."
        )
    return [int(i) for i in indices]


def default_latents(num_latents, count=MAX_DEFAULT_LATENTS):
    """Up to `count` latents spread evenly over the latent array."""
    return sorted(set(
        np.linspace(0, num_latents - 1, min(count, num_latents))
        .round().astype(int).tolist()
    ))


def _display_image(image):
    """An image rescaled to [0, 1] for display (inputs are often
    normalised), in grey so that the coloured attention map stands out."""
    image = np.asarray(image, dtype="float64")
    if image.ndim == 3:
        image = image.mean(axis=-1)
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else image * 0.0


def attention_figure(weights, grid_shape=None, image=None, latents=None,
                     heads=None, panel_pixels=PANEL_PIXELS):
    """A matplotlib `Figure` of one example's cross-attention.

    Args:
        weights: `[heads, latents, M]` (or `[latents, M]`: one head).
        grid_shape: the token grid, e.g. `(h, w)` for an image's tokens
            (`h * w == M`); None or one axis: a 1-D input.
        image: optional `[H, W]` / `[H, W, C]` image under 2-D maps (in
            grey; any size: the map is stretched over it), or a `[M]` / `[M, C]`
            signal drawn over 1-D maps.
        latents, heads: indices to draw (None: up to four latents spread
            over the array; every head).
        panel_pixels: width and height of each panel in pixels.

    Returns:
        The figure: `len(heads)` rows and `len(latents)` columns of panels,
        `(len(latents) * panel_pixels, len(heads) * panel_pixels)` pixels.
        Each panel's image holds the weights exactly as given (a 2-D map is
        `weights[h, n].reshape(grid_shape)`, a strip `weights[h, n][None]`).
    """
    from matplotlib.figure import Figure

    weights = np.asarray(weights)
    if weights.ndim == 2:
        weights = weights[None]
    if weights.ndim != 3:
        raise ValueError(
            "`weights` must be [heads, latents, M] or [latents, M]. "
            f"Received: shape {weights.shape}."
        )
    num_heads, num_latents, num_tokens = weights.shape
    grid = None if grid_shape is None else tuple(int(d) for d in grid_shape)
    if grid is not None and math.prod(grid) != num_tokens:
        raise ValueError(
            f"`grid_shape` must have {num_tokens} positions (the last axis "
            f"of `weights`). Received: grid_shape={grid_shape}."
        )
    two_d = grid is not None and len(grid) == 2
    latents = _indices(latents, num_latents, "latents",
                       default_latents(num_latents))
    heads = _indices(heads, num_heads, "heads", range(num_heads))

    inches = panel_pixels / DPI
    figure = Figure(figsize=(len(latents) * inches, len(heads) * inches),
                    dpi=DPI)
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.9,
                           wspace=0.05, hspace=0.2)
    axes = figure.subplots(len(heads), len(latents), squeeze=False)
    shown = None if image is None else _display_image(image)
    for row, head in enumerate(heads):
        for column, latent in enumerate(latents):
            ax = axes[row, column]
            ax.set_axis_off()
            ax.set_title(f"head {head}, latent {latent}", fontsize=7)
            values = weights[head, latent]
            if two_d:
                extent = None
                if shown is not None:
                    height, width = shown.shape[:2]
                    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
                    ax.imshow(shown, cmap="gray")
                ax.imshow(values.reshape(grid), cmap="inferno",
                          alpha=0.6 if shown is not None else 1.0,
                          extent=extent, interpolation="nearest")
            else:
                ax.imshow(values[None], cmap="inferno", aspect="auto",
                          interpolation="nearest",
                          extent=(-0.5, num_tokens - 0.5, 0.0, 1.0))
                if shown is not None:
                    signal = shown.reshape(num_tokens, -1)
                    for channel in signal.T:
                        ax.plot(np.arange(num_tokens), channel, color="white",
                                linewidth=0.8)
    return figure


def save_figure_png(figure, path):
    """Writes a figure from `attention_figure` as a PNG at its own size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _backbone_inputs(task, inputs):
    """What the backbone of `task` reads for `inputs`, and the backbone."""
    import keras

    backbone = getattr(task, "backbone", task)
    if not hasattr(backbone, "attention_maps"):
        raise ValueError(
            "`task` must be a task or backbone that can return attention "
            "maps (a PerceiverBackbone or a task built on one). Received: "
            f"{type(task).__name__}."
        )
    preprocessor = getattr(task, "preprocessor", None)
    if preprocessor is not None and backbone is not task:
        inputs = keras.utils.unpack_x_y_sample_weight(preprocessor(inputs))[0]
    if isinstance(inputs, dict):
        keys = backbone.input.keys()
        inputs = {k: v for k, v in inputs.items() if k in keys}
    return backbone, inputs


def _grid_and_picture(backbone, x, num_tokens):
    """The token grid of the backbone's adapter and what to draw under the
    maps (the input image or 1-D signal), for the first example `x`."""
    adapter = getattr(backbone, "input_adapter", None)  # none: resampler
    grid = getattr(adapter, "token_grid", None)
    grid = None if grid is None or None in grid else tuple(grid)
    if grid is None or math.prod(grid) != num_tokens or len(grid) > 2:
        grid = (num_tokens,)
    x = np.asarray(x)
    if len(grid) == 2 and x.ndim == 3 and x.shape[-1] in (1, 3):
        return grid, x
    if len(grid) == 1 and x.shape[0] == num_tokens and x.ndim <= 2:
        return grid, x if np.issubdtype(x.dtype, np.floating) else None
    return grid, None


def save_attention_png(task, inputs, path, latents=None, heads=None):
    """Draws the encoder cross-attention of the first example of `inputs`.

    Args:
        task: a task (its preprocessor, if any, runs on `inputs`) or a
            backbone with `attention_maps`.
        inputs: what the task (or backbone) takes, batched.
        path: where to write the PNG.
        latents, heads: indices to draw (see `attention_figure`).

    Returns:
        The `[heads, latents, M]` weights drawn (all heads and latents of the
        first example; the figure shows the selected ones). The PNG has
        `(len(latents) * 200, len(heads) * 200)` pixels.
    """
    backbone, backbone_inputs = _backbone_inputs(task, inputs)
    weights = backbone.attention_maps(
        backbone_inputs, layers="cross_attention_0"
    )["cross_attention_0"][0]
    x = backbone_inputs["inputs"] if isinstance(backbone_inputs, dict) else (
        backbone_inputs
    )
    import keras

    grid, picture = _grid_and_picture(
        backbone, keras.ops.convert_to_numpy(x)[0], weights.shape[-1]
    )
    figure = attention_figure(weights, grid, picture, latents, heads)
    save_figure_png(figure, path)
    return weights
