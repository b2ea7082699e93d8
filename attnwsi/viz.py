"""Drawing what a trained model looked at: attention maps over their image (the paper's Figure 5), and the
confusion matrix. Only drawing: what to draw comes in as arrays (an `attnwsi.models.explain.Explanation`).

`overlay` draws a map over the image: the map covers the image's tile grid and is upsampled by nearest
neighbour, so every tile is one flat block of colour and the overlay peaks exactly where the map peaks. Each
tile's colour is blended in with an opacity proportional to its attention, so low attention leaves the tissue
visible and high attention stands out; the colour map is perceptually uniform (inferno: dark to bright), so
equal steps of attention look like equal steps. Maps are shown normalized to a maximum of 1, as in Figure 5;
the "mean map" is the mean of the m softmax maps (the average attention weight of each tile), normalized
the same way. `heatmap_picture` is what a pathologist looks at: the image and its overlay side by side, the
tile grid, a colour bar and, where annotations exist, the lesion outlines.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

Region = tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels
COLORMAP = "inferno"  # perceptually uniform: equal steps of attention look equal
ALPHA = 0.8  # opacity of the colour where attention is highest; lower attention is more transparent


# ------------------------------------------------------------------------------------ how to draw it


def tiles_to_image(tiles: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Tiles [T, 3, h, w] (row-major over the grid) back into the image they cover, [H' h, W' w, 3] uint8."""
    rows, cols = grid
    _, _, height, width = tiles.shape
    image = tiles.reshape(rows, cols, 3, height, width).permute(0, 3, 1, 4, 2)
    return image.reshape(rows * height, cols * width, 3).cpu().numpy()


def shrink(image: np.ndarray, max_px: int) -> np.ndarray:
    """The image with its longer side at most `max_px` pixels, aspect ratio kept."""
    height, width = image.shape[:2]
    scale = min(1.0, max_px / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def normalize_map(attention: np.ndarray) -> np.ndarray:
    """The map divided by its maximum (Figure 5's display convention)."""
    return attention / attention.max()


def upsample(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map [H', W'] at (height, width) pixels by nearest neighbour: each pixel takes the tile its centre is in."""
    height, width = size
    rows = ((np.arange(height) + 0.5) * attention.shape[0] / height).astype(int)
    cols = ((np.arange(width) + 0.5) * attention.shape[1] / width).astype(int)
    return attention[rows[:, None], cols[None, :]]


def overlay(image: np.ndarray, attention: np.ndarray, region: Region | None = None, colormap: str = COLORMAP,
            alpha: float = ALPHA) -> np.ndarray:
    """The image [h, w, 3] uint8 with the map (values in 0..1) blended over `region` (default: all of it),
    each tile with opacity `alpha` x its attention.

    `region` is the part of the image that the tile grid covers; outside it the image is left as it is.
    """
    x0, y0, x1, y1 = region or (0, 0, image.shape[1], image.shape[0])
    values = upsample(attention, (y1 - y0, x1 - x0))
    colours = matplotlib.colormaps[colormap](values)[..., :3] * 255.0
    opacity = alpha * np.clip(values, 0.0, 1.0)[..., None]
    blended = image.astype(np.float32)
    blended[y0:y1, x0:x1] = (1 - opacity) * blended[y0:y1, x0:x1] + opacity * colours
    return blended.round().astype(np.uint8)


def heatmap_picture(image: np.ndarray, attention: np.ndarray, region: Region, title: str,
                    outlines: list[np.ndarray] = (), colormap: str = COLORMAP, alpha: float = ALPHA,
                    caption: str = "attention", bar_label: str = "attention (max = 1)") -> np.ndarray:
    """The image and its overlay side by side at the image's own resolution, the tile grid drawn on the
    overlay, a colour bar, and `outlines` ([N, 2] x/y in image pixels, e.g. annotated lesions) on both."""
    height, width = image.shape[:2]
    figure = Figure(figsize=(2 * width / 100 + 1.2, height / 100 + 0.6), dpi=100, layout="constrained")
    axes = figure.subplots(1, 2)
    overlaid = overlay(image, attention, region, colormap, alpha)
    for axis, picture, name in ((axes[0], image, "image"), (axes[1], overlaid, caption)):
        axis.imshow(picture, interpolation="nearest")
        for outline in outlines:
            axis.plot(*np.vstack([outline, outline[:1]]).T, color="#00e5ff", linewidth=1.2)
        axis.set_xlim(0, width)
        axis.set_ylim(height, 0)
        axis.set_title(name, fontsize=10)
        axis.set_axis_off()
    x0, y0, x1, y1 = region
    rows, cols = attention.shape
    grid = dict(color="white", linewidth=0.4, alpha=0.35)
    for k in range(rows + 1):
        axes[1].plot([x0, x1], [y0 + k * (y1 - y0) / rows] * 2, **grid)
    for k in range(cols + 1):
        axes[1].plot([x0 + k * (x1 - x0) / cols] * 2, [y0, y1], **grid)
    colour_bar(figure, axes[1], colormap, bar_label)
    figure.suptitle(title, fontsize=10)
    return figure_to_array(figure)


def colour_bar(figure: Figure, axis, colormap: str, label: str = "attention (max = 1)") -> None:
    """A colour bar for maps from 0 to 1 (e.g. normalized to a maximum of 1), beside `axis`."""
    mappable = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, 1), colormap)
    figure.colorbar(mappable, ax=axis, fraction=0.04, pad=0.02, label=label)


def figure_to_array(figure: Figure) -> np.ndarray:
    """A matplotlib figure rendered to an RGB uint8 array."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def attention_panel(panels: list[tuple[str, np.ndarray]], title: str, panel_inches: float = 3.0,
                    colormap: str = COLORMAP) -> np.ndarray:
    """Images side by side, each under its caption, with a title and a colour bar: one picture per sub-image."""
    height, width = panels[0][1].shape[:2]
    figure = Figure(figsize=(panel_inches * len(panels) + 1.0, panel_inches * height / width + 0.8), dpi=100,
                    layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (caption, picture) in zip(axes, panels):
        axis.imshow(picture, interpolation="nearest")
        axis.set_title(caption, fontsize=9)
        axis.set_axis_off()
    colour_bar(figure, axes[-1], colormap)
    figure.suptitle(title, fontsize=10)
    return figure_to_array(figure)


def explanation_panels(image: np.ndarray, explanation, top_filters: int, colormap: str = COLORMAP,
                       alpha: float = ALPHA) -> list[tuple[str, np.ndarray]]:
    """(caption, picture) for the image, its mean map and its most relevant filters' maps, each at max 1.

    `explanation` is an `attnwsi.models.explain.Explanation` (its maps, relevance and top filters).
    """
    panels = [("image", image),
              ("mean attention", overlay(image, normalize_map(explanation.mean_map), colormap=colormap, alpha=alpha))]
    for k in explanation.top_filters(top_filters):
        picture = overlay(image, normalize_map(explanation.attention_maps[k]), colormap=colormap, alpha=alpha)
        panels.append((f"filter {k} (relevance {explanation.relevance[k]:+.2f})", picture))
    return panels


def confusion_matrix_image(matrix: np.ndarray, classes: list[str], title: str = "") -> np.ndarray:
    """The confusion matrix (rows: true class, columns: predicted) with its counts, as an RGB picture."""
    matrix = np.asarray(matrix)
    figure = Figure(figsize=(1.2 * len(classes) + 2.5, 1.2 * len(classes) + 2.0), dpi=100, layout="constrained")
    axis = figure.subplots()
    axis.imshow(matrix, cmap="Blues", vmin=0)
    for (true, predicted), count in np.ndenumerate(matrix):
        colour = "white" if count > matrix.max() / 2 else "black"
        axis.text(predicted, true, str(count), ha="center", va="center", color=colour)
    axis.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    return figure_to_array(figure)
