"""Optical flow as a colour image: the standard (Middlebury) colour wheel.

Baker et al., "A Database and Evaluation Methodology for Optical Flow"
(IJCV 2011): hue is the direction of motion, saturation its speed relative
to the fastest pixel (white: still). The wheel has 55 hues, interpolated
through red, yellow, green, cyan, blue and magenta with 15, 6, 4, 11, 13
and 6 steps, as in the benchmark's own colour-coding code. NumPy only.
"""

import numpy as np

# (steps from this colour to the next, RGB of this colour)
SEGMENTS = (
    (15, (255, 0, 0)),    # red -> yellow
    (6, (255, 255, 0)),   # yellow -> green
    (4, (0, 255, 0)),     # green -> cyan
    (11, (0, 255, 255)),  # cyan -> blue
    (13, (0, 0, 255)),    # blue -> magenta
    (6, (255, 0, 255)),   # magenta -> red
)


def colour_wheel():
    """`[55, 3]` RGB in [0, 255], evenly spaced in angle (whole numbers,
    rounded towards the start colour as in the reference code)."""
    rows = []
    for i, (steps, start) in enumerate(SEGMENTS):
        end = np.array(SEGMENTS[(i + 1) % len(SEGMENTS)][1], float)
        start = np.array(start, float)
        for t in range(steps):
            change = np.floor(np.abs(end - start) * t / steps)
            rows.append(start + np.sign(end - start) * change)
    return np.stack(rows)


def flow_to_rgb(flow, max_speed=None):
    """`[H, W, 2]` flow (x right, y down) -> `[H, W, 3]` uint8 image.

    `max_speed` is the speed shown fully saturated (default: the largest in
    `flow`); faster pixels are darkened as in the reference code.
    """
    flow = np.asarray(flow, np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(
            f"`flow` must have shape [height, width, 2]. Received: "
            f"{flow.shape}.")
    u, v = flow[..., 0], flow[..., 1]
    speed = np.hypot(u, v)
    if max_speed is None:
        max_speed = float(speed.max(initial=0.0))
    radius = speed / max_speed if max_speed > 0 else np.zeros_like(speed)
    wheel = colour_wheel() / 255.0
    n = len(wheel)
    # The direction's angle in [-pi, pi] as a position on the wheel
    # (atan2(-v, -u), as the reference code).
    position = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (n - 1)
    lower = np.floor(position).astype(int)
    upper = (lower + 1) % n
    weight = (position - lower)[..., None]
    colour = (1 - weight) * wheel[lower] + weight * wheel[upper]
    inside = (radius <= 1)[..., None]
    saturated = 1 - radius[..., None] * (1 - colour)
    colour = np.where(inside, saturated, colour * 0.75)
    return np.clip(np.floor(255 * colour), 0, 255).astype(np.uint8)
