"""The embedded default dataset: captioned coloured shapes, generated on the fly.

Every sample is a pure function of ``(seed, index)``: no download, no files,
identical on every machine. A scene is two objects (colour, shape) in a
spatial relation; its caption reads "a red circle left of a blue square".
Hard negatives swap exactly one colour, shape or the relation, so telling a
true caption from its negative needs the image, not the caption's prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from repalign.data.base import Sample

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# relation -> (axis, sign): the first object lies on the `sign` side of the second along `axis`.
RELATIONS: dict[str, tuple[int, int]] = {
    "left of": (0, -1),
    "right of": (0, 1),
    "above": (1, -1),
    "below": (1, 1),
}
VOCABULARY: tuple[str, ...] = ("a", "of", "left", "right", "above", "below", *COLOURS, *SHAPES)


@dataclass(frozen=True)
class Scene:
    """Two objects and how the first stands relative to the second."""

    colour_a: str
    shape_a: str
    relation: str
    colour_b: str
    shape_b: str

    @property
    def caption(self) -> str:
        return f"a {self.colour_a} {self.shape_a} {self.relation} a {self.colour_b} {self.shape_b}"


def random_scene(rng: np.random.Generator) -> Scene:
    colours = list(COLOURS)
    while True:
        ca, cb = rng.choice(colours, size=2)
        sa, sb = rng.choice(SHAPES, size=2)
        if (ca, sa) != (cb, sb):  # two identical objects make the relation ambiguous
            return Scene(str(ca), str(sa), str(rng.choice(list(RELATIONS))), str(cb), str(sb))


def hard_negative(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same scene with exactly one colour, shape or the relation changed.

    The result is never true of the scene's image: a relation is swapped for
    one on the other axis or its opposite, and two equal objects are avoided.
    """
    while True:
        field_name = str(rng.choice(["colour_a", "shape_a", "relation", "colour_b", "shape_b"]))
        pool = {
            "colour_a": list(COLOURS),
            "colour_b": list(COLOURS),
            "relation": list(RELATIONS),
        }.get(field_name, list(SHAPES))
        options = [v for v in pool if v != getattr(scene, field_name)]
        negative = replace(scene, **{field_name: str(rng.choice(options))})
        if (negative.colour_a, negative.shape_a) != (negative.colour_b, negative.shape_b):
            return negative


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], radius: float, colour
) -> None:
    x, y = centre
    box = (x - radius, y - radius, x + radius, y + radius)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon(
            [(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=colour
        )


def render_scene(scene: Scene, rng: np.random.Generator, image_size: int = 64) -> Image.Image:
    """Draw ``scene`` with jittered positions and sizes on a noisy grey background."""
    s = image_size
    radius = s * rng.uniform(0.10, 0.15)
    axis, sign = RELATIONS[scene.relation]
    # Object B near one side of the relation axis, A on the other; the other axis stays
    # within a small band so the relation on that axis is never also true.
    along_b = s * rng.uniform(0.62, 0.78) if sign < 0 else s * rng.uniform(0.22, 0.38)
    along_a = s - along_b + s * rng.uniform(-0.04, 0.04)
    across = s * rng.uniform(0.4, 0.6)
    across_a = across + s * rng.uniform(-0.05, 0.05)
    pos_a = (along_a, across_a) if axis == 0 else (across_a, along_a)
    pos_b = (along_b, across) if axis == 0 else (across, along_b)
    background = rng.normal(110, 12, size=(s, s, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background, mode="RGB")
    draw = ImageDraw.Draw(image)
    _draw_shape(draw, scene.shape_b, pos_b, radius, COLOURS[scene.colour_b])
    _draw_shape(draw, scene.shape_a, pos_a, radius, COLOURS[scene.colour_a])
    return image


class SyntheticCaptions(Sequence[Sample]):
    """``n`` captioned-shape samples, deterministic in ``(seed, index)``.

    ``sample_id`` is ``"synthetic-{seed}-{index:06d}"``; ``meta["scene"]`` holds
    the :class:`Scene` so training code can build hard negatives.
    """

    def __init__(self, n: int = 512, *, seed: int = 0, image_size: int = 64) -> None:
        if n < 1:
            raise ValueError(f"a synthetic dataset needs n >= 1 samples, got n={n}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        self.n, self.seed, self.image_size = n, seed, image_size

    def __len__(self) -> int:
        return self.n

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index])

    def scene(self, index: int) -> Scene:
        return random_scene(self.rng(index))

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        index %= self.n
        rng = self.rng(index)
        scene = random_scene(rng)
        image = render_scene(scene, rng, self.image_size)
        return Sample(
            sample_id=f"synthetic-{self.seed}-{index:06d}",
            text=scene.caption,
            image=image,
            meta={"scene": scene, "index": index},
        )

    @property
    def skipped(self) -> Sequence[tuple[str, str]]:
        return ()
