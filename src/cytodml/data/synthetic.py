"""The embedded default data set: a synthetic imaging-flow-cytometry brightfield dump of rare bioparticles.

It stands in for the drinking-water study of Luo et al. (RSC Adv 2021, 11:17603), who imaged Cryptosporidium
oocysts, Giardia cysts and a background of natural pollutants and microplastic beads (1.54 to 15 um) on an ImageStream
at 60x. :func:`render_dump` writes what an IDEAS export of such a run looks like: one folder per class, one uint16
TIFF per object named ``<object number>_Ch1.tif``, cropped around the object at a size that varies with the object,
the object not always centred, a few doublets and a few objects cut by the frame border.

Image formation, per object (all lengths in um, converted with ``pixel_size_um``):

- the particle is an optical density map ``D`` (absorption) and a phase map ``phi`` (optical thickness);
- a defocused brightfield image of a phase object follows the transport-of-intensity equation,
  ``I(z) ~ I0 (1 - z lambda / (2 pi) laplacian(phi))``, which draws the bright-dark rim (halo) of refractile
  particles; here ``I = exp(-D) exp(-h laplacian(G * phi))`` with ``h`` signed (the particle above or below focus);
- defocus blur, a Gaussian whose sigma grows with ``difficulty.blur`` and varies per object;
- illumination: a background level of 600 to 900 counts with a linear gradient across the frame;
- camera: Poisson shot noise and Gaussian read noise, both scaled by ``difficulty.noise``, clipped to 12 bits
  (0..4095) in a 16-bit file.

Each object draws from its own generator, seeded by ``(seed, class name, index within the class)`` through
:class:`numpy.random.SeedSequence`, so a change to one class's count leaves every other object's pixels unchanged
(the object numbers, which interleave the classes in acquisition order, do change).
"""

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage

from cytodml.config import fill
from cytodml.errors import InputError
from cytodml.io import atomic_path

DIFFICULTY_KEYS = ("noise", "blur", "size_overlap")
"""What makes the rendered classes hard to tell apart, each in [0, 1] (defaults: the config schema's)."""

BEAD_DIAMETERS_UM = (1.54, 3.0, 4.5, 6.0, 10.0, 15.0)
"""Microplastic bead sizes: Luo et al. 2021 list beads of 1.54 to 15 um among the pollutants; the sizes between
are this renderer's choice."""

SHARED_SIZE_UM = (3.0, 20.0)
"""At ``size_overlap`` 1 every class draws its size log-uniformly from this range, so size alone separates nothing."""

DOUBLET_RATE = 0.03
PARTIAL_RATE = 0.03

BACKGROUND_COUNTS = (600.0, 900.0)
CAMERA_MAX = 4095
GAIN_AT_FULL_NOISE = 1.0  # counts per photo-electron: shot noise ~27 counts on a 750-count background
READ_NOISE_AT_FULL_NOISE = 10.0  # counts
PSF_SIGMA_UM = 0.15  # in-focus point spread, ~0.21 lambda / NA for 0.55 um light at NA 0.75
DEFOCUS_SIGMA_UM = 1.0  # blur sigma of the most defocused object at difficulty.blur = 1
HALO_UM2 = 0.12  # z lambda / (2 pi) of the transport-of-intensity term at full defocus, um^2
HALO_IN_FOCUS = 0.25  # a particle several um thick spans focal planes, so even at blur 0 a faint rim remains
HALO_WIDTH_UM = 0.3  # smoothing of the phase before its laplacian: the halo's width
FAR_SIDE_OF_FOCUS = 0.75  # share of particles with a dark rim and a bright halo outside it; the rest invert
CROP_PX = (32, 160)  # IDEAS crops: never below 32 px, and very large objects are cut at 160 px


class Particle(NamedTuple):
    """How one class is drawn.

    ``size(rng)`` draws the class's published characteristic length in um (diameter, major axis or fibre length);
    ``reach`` is the object's half-extent as a fraction of that length, for cropping; ``draw(rng, size, v, u, px)``
    returns ``(density, phase)`` on the grid of particle-frame coordinates ``v, u`` (um) at pixel size ``px``.
    """

    size: Callable[[np.random.Generator], float]
    reach: float
    draw: Callable[..., tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------------------------- shape primitives


def _inside(signed_distance: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased indicator of ``signed_distance > 0`` (um, positive inside), one pixel wide at the edge."""
    return np.clip(0.5 + signed_distance / px, 0.0, 1.0)


def _dome(signed_distance: np.ndarray, radius: float) -> np.ndarray:
    """Thickness of a sphere of ``radius`` at depth ``signed_distance`` from its rim: sqrt(d (2 R - d))."""
    d = np.clip(signed_distance, 0.0, radius)
    return np.sqrt(d * (2.0 * radius - d))


def _ring(signed_distance: np.ndarray, depth: float, width: float, px: float) -> np.ndarray:
    """A Gaussian band ``width`` wide at ``depth`` inside the rim (a wall, an exine, a refraction ring), cut there."""
    return _inside(signed_distance, px) * np.exp(-(((signed_distance - depth) / width) ** 2))


def _spot(v: np.ndarray, u: np.ndarray, cv: float, cu: float, radius: float) -> np.ndarray:
    return np.exp(-((v - cv) ** 2 + (u - cu) ** 2) / radius**2)


def _texture(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """White noise smoothed to grain ``sigma_px`` and scaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    return field / max(float(field.std()), 1e-12)


def _ellipse_distance(v: np.ndarray, u: np.ndarray, a: float, b: float) -> np.ndarray:
    """Signed distance (um, positive inside) to the ellipse of semi-axes ``a`` along u and ``b`` along v.

    First-order estimate -f / |grad f| of f = (u/a)^2 + (v/b)^2 - 1, exact on the rim where the halo is drawn.
    """
    f = (u / a) ** 2 + (v / b) ** 2 - 1.0
    grad = 2.0 * np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2)
    return -f / np.maximum(grad, 1.0 / max(a, b))


def _star_distance(v: np.ndarray, u: np.ndarray, radius_of_angle: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Signed radial distance to a star-shaped outline ``r(theta)``."""
    return radius_of_angle(np.arctan2(v, u)) - np.hypot(u, v)


def _polyline_distance(v: np.ndarray, u: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance from every pixel to the polyline through ``points`` (k x 2, as v, u)."""
    start, end = points[:-1], points[1:]
    seg = end - start
    length2 = np.maximum((seg**2).sum(axis=1), 1e-12)
    pv, pu = v[..., None] - start[:, 0], u[..., None] - start[:, 1]
    t = np.clip((pv * seg[:, 0] + pu * seg[:, 1]) / length2, 0.0, 1.0)
    return np.sqrt((pv - t * seg[:, 0]) ** 2 + (pu - t * seg[:, 1]) ** 2).min(axis=-1)


# ------------------------------------------------------------------------------------------------- the classes


def _cryptosporidium(rng, size, v, u, px):
    """Cryptosporidium oocyst: round, 4-6 um (the usual range for C. parvum), granular interior, thin wall.

    Refractile and nearly transparent: the halo of the phase dome draws the bright-dark rim; four sporozoites and a
    residual body show as fine granules and one darker spot.
    """
    stretch = rng.uniform(0.94, 1.06)
    radius = size / 2
    sd = _ellipse_distance(v, u, radius * stretch, radius / stretch)
    inside = _inside(sd, px)
    grain = _texture(rng, v.shape, 0.28 / px)
    angle, off = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.45) * radius
    body = _spot(v, u, off * np.sin(angle), off * np.cos(angle), rng.uniform(0.18, 0.3) * radius)
    density = inside * (0.06 + 0.07 * grain + 0.25 * body) + 0.3 * _ring(sd, 0.12, 0.15, px)
    phase = 0.45 * _dome(sd, radius) * (1 + 0.15 * grain * inside)
    return density, phase


def _giardia(rng, size, v, u, px):
    """Giardia cyst: oval, 8-14 x 7-10 um (the usual range for G. duodenalis), random orientation.

    The width is 0.6 to 0.9 of the length (7 to 10 um at the typical 11 um length), so that it follows the length
    when ``size_overlap`` moves it.

    The cytoplasm pulls away from the cyst wall (a clear peritrophic space); two to four nuclei sit at the anterior
    end; the axonemes run as dark lines along the long axis.
    """
    a = size / 2
    b = a * rng.uniform(0.6, 0.9)
    sd = _ellipse_distance(v, u, a, b)
    shrink = rng.uniform(0.8, 0.92)
    cyto = _inside(_ellipse_distance(v, u - rng.uniform(-0.05, 0.05) * a, shrink * a, shrink * b), px)
    grain = _texture(rng, v.shape, 0.35 / px)
    nuclei = sum(
        _spot(v, u, rng.uniform(-0.35, 0.35) * b, rng.uniform(0.2, 0.55) * a, rng.uniform(0.35, 0.55))
        for _ in range(rng.integers(2, 5))
    )
    axo = np.zeros_like(v)
    for offset in rng.uniform(-0.12, 0.12, size=rng.integers(1, 3)) * b:
        line = np.array([[offset, -0.75 * a], [offset + rng.uniform(-0.1, 0.1) * b, 0.45 * a]])
        axo = np.maximum(axo, np.exp(-((_polyline_distance(v, u, line) / 0.15) ** 2)))
    density = 0.25 * _ring(sd, 0.15, 0.18, px) + cyto * (0.18 + 0.05 * grain + 0.25 * nuclei + 0.15 * axo)
    phase = 0.3 * _dome(sd, b)
    return density, phase


def _bead(rng, size, v, u, px):
    """Polystyrene microplastic bead (Luo et al. 2021: 1.54 to 15 um): a perfect circle, smooth and uniform.

    The high refractive index (about 1.59 in water at 1.33) bends light out of the objective at the rim, a thick dark
    ring, and focuses it to a bright centre like a ball lens.
    """
    radius = size / 2
    sd = radius - np.hypot(u, v)
    width = max(0.15 * radius, 0.3)
    dye = rng.uniform(0.0, 0.12)
    density = (
        _inside(sd, px) * dye
        + rng.uniform(0.7, 1.1) * _ring(sd, width, width, px)
        - rng.uniform(0.2, 0.5) * _spot(v, u, 0.0, 0.0, max(0.3 * radius, 0.25))
    )
    phase = 1.2 * _dome(sd, radius)
    return density, phase


def _bead_size(rng):
    return float(rng.choice(BEAD_DIAMETERS_UM))


def _debris(rng, size, v, u, px):
    """Natural pollutants: angular fragments, amorphous blobs, fibres and aggregates, 2-25 um, any texture.

    Contrast spans nearly transparent flocs to opaque mineral grains; the texture grain varies per particle.
    """
    kind = rng.choice(["fragment", "blob", "fibre", "aggregate"], p=[0.35, 0.3, 0.15, 0.2])
    radius = size / 2
    if kind == "fragment":
        n = rng.integers(5, 11)
        corners = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.5, 1.0, n)
        sd = _star_distance(v, u, lambda t: np.interp(t, corners, radii, period=2 * np.pi))
    elif kind == "blob":
        k = np.arange(2, 7)
        amp, shift = rng.normal(0, 0.36, k.size) / k, rng.uniform(0, 2 * np.pi, k.size)
        # a mean radius of 0.8 keeps the lobes mostly inside the particle's reach
        sd = _star_distance(v, u, lambda t: 0.8 * radius * (1 + np.cos(np.multiply.outer(t, k) + shift) @ amp))
    elif kind == "fibre":
        steps = 8
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.25, steps))
        path = np.cumsum(np.stack([np.sin(heading), np.cos(heading)], axis=1) * size / steps, axis=0)
        path = np.vstack([[0.0, 0.0], path])
        path -= path.mean(axis=0)
        sd = rng.uniform(0.2, 1.0) - _polyline_distance(v, u, path)
    else:
        sd = np.full(v.shape, -np.inf)
        for _ in range(rng.integers(3, 8)):
            r = radius * rng.uniform(0.2, 0.45)
            cv, cu = rng.uniform(-0.55, 0.55, 2) * radius
            sd = np.maximum(sd, r - np.hypot(v - cv, u - cu))
    inside = _inside(sd, px)
    grain = _texture(rng, v.shape, rng.uniform(0.25, 1.5) / px)
    level = math.exp(rng.uniform(math.log(0.05), math.log(1.2)))
    density = inside * level * np.clip(1 + rng.uniform(0.1, 0.6) * grain, 0, None)
    phase = rng.uniform(0.1, 0.6) * _dome(sd, min(radius, 2.0))
    return density, phase


def _debris_size(rng):
    return math.exp(rng.uniform(math.log(2.0), math.log(25.0)))


def _pollen(rng, size, v, u, px):
    """Pollen grain, the unseen open-set type: round-ish, 15-30 um (the common range of wind-borne pollen).

    A thick exine, echinate (spines round the outline) and reticulate (a net of ridges over the face), with a dense
    cytoplasm that makes the grain darker than the protozoa.
    """
    radius = size / 2
    spines, spine_h = rng.integers(14, 30), rng.uniform(0.0, 1.4)
    lobes, lobe_phase = rng.normal(0, 0.03, 3), rng.uniform(0, 2 * np.pi, 3)
    k = np.array([2, 3, 4])

    def outline(t):
        body = radius * (1 + np.cos(np.multiply.outer(t, k) + lobe_phase) @ lobes)
        return body + spine_h * (0.5 + 0.5 * np.cos(spines * t)) ** 12

    sd = _star_distance(v, u, outline)
    inside = _inside(sd, px)
    lumen = rng.uniform(0.5, 0.9) / px
    white = rng.standard_normal(v.shape)
    band = ndimage.gaussian_filter(white, lumen, mode="wrap") - ndimage.gaussian_filter(white, 2 * lumen, mode="wrap")
    ridges = np.exp(-((band / (0.3 * band.std())) ** 2))
    exine = rng.uniform(0.8, 1.5)
    density = inside * (rng.uniform(0.25, 0.6) + 0.3 * ridges) + 0.5 * _ring(sd, exine / 2, exine / 2, px)
    phase = 0.3 * _dome(sd, radius)
    return density, phase


RENDERERS: dict[str, Particle] = {
    "cryptosporidium": Particle(lambda rng: rng.uniform(4.0, 6.0), 0.55, _cryptosporidium),
    "giardia": Particle(lambda rng: rng.uniform(8.0, 14.0), 0.55, _giardia),
    "bead": Particle(_bead_size, 0.55, _bead),
    "debris": Particle(_debris_size, 0.65, _debris),
    "pollen": Particle(lambda rng: rng.uniform(15.0, 30.0), 0.6, _pollen),
}


def known_classes() -> list[str]:
    """Class names :func:`render_dump` can draw."""
    return sorted(RENDERERS)


# --------------------------------------------------------------------------------------------- one object's frame


def _size(particle: Particle, rng: np.random.Generator, overlap: float) -> float:
    """Geometric blend of the published size and a draw from :data:`SHARED_SIZE_UM`: ``p^(1-s) * q^s``."""
    published = particle.size(rng)
    lo, hi = np.log(SHARED_SIZE_UM)
    shared = rng.uniform(lo, hi)
    return float(np.exp((1 - overlap) * np.log(published) + overlap * shared))


def _layout(rng, radii_px, partial):
    """Crop box and particle centres (px) as IDEAS crops them: a random margin each side, so rarely centred.

    ``radii_px`` holds the primary particle's reach and, for a doublet, its partner's; the partner touches or
    slightly overlaps the primary in a random direction. A partial object sits across a random frame edge.
    """
    centres = [np.zeros(2)]
    if len(radii_px) == 2:
        angle = rng.uniform(0, 2 * np.pi)
        gap = sum(radii_px) * rng.uniform(0.75, 1.05)
        centres.append(gap * np.array([np.sin(angle), np.cos(angle)]))
    centres, radii = np.array(centres), np.array(radii_px)[:, None]
    low, high = (centres - radii).min(axis=0), (centres + radii).max(axis=0)
    margin_low, margin_high = rng.uniform(4, 22, 2), rng.uniform(4, 22, 2)
    shape = np.clip(np.ceil(high - low + margin_low + margin_high), *CROP_PX).astype(int)
    # spread any clipping evenly so the object stays in the frame at the minimum size
    origin = low - margin_low - (shape - (high - low + margin_low + margin_high)) / 2
    centres = centres - origin
    if partial:
        axis, far_side = rng.integers(2), rng.integers(2)
        depth = rng.uniform(0.1, 0.6) * radii_px[0]
        shift = (shape[axis] - depth if far_side else depth) - centres[0, axis]
        centres[:, axis] += shift
    return (int(shape[0]), int(shape[1])), centres


def render_object(class_name: str, rng: np.random.Generator, difficulty: dict, pixel_size_um: float) -> np.ndarray:
    """One uint16 brightfield frame of a ``class_name`` particle (see the module docstring for the model)."""
    particle = RENDERERS[class_name]
    px = pixel_size_um
    members = [(particle, _size(particle, rng, difficulty["size_overlap"]))]
    if rng.random() < DOUBLET_RATE:
        partner = particle if rng.random() < 0.5 else RENDERERS["debris"]
        members.append((partner, _size(partner, rng, difficulty["size_overlap"])))
    partial = rng.random() < PARTIAL_RATE
    shape, centres = _layout(rng, [p.reach * s / px for p, s in members], partial)

    rows, cols = np.arange(shape[0], dtype=float), np.arange(shape[1], dtype=float)
    density, phase = np.zeros(shape), np.zeros(shape)
    for (member, size), (cy, cx) in zip(members, centres, strict=True):
        angle = rng.uniform(0, 2 * np.pi)
        y, x = (rows[:, None] - cy) * px, (cols[None, :] - cx) * px
        u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
        d, p = member.draw(rng, size, v, u, px)
        density += d
        phase += p

    defocus = rng.uniform(0.2, 1.0)  # particles cross the core stream at different depths
    focus_side = -1.0 if rng.random() < FAR_SIDE_OF_FOCUS else 1.0
    halo = focus_side * HALO_UM2 * (HALO_IN_FOCUS + difficulty["blur"] * defocus)
    laplacian = ndimage.gaussian_laplace(phase, HALO_WIDTH_UM / px) / px**2
    sigma_um = math.hypot(PSF_SIGMA_UM, difficulty["blur"] * defocus * DEFOCUS_SIGMA_UM)
    particle_image = ndimage.gaussian_filter(np.exp(-density - halo * laplacian), sigma_um / px, mode="nearest")

    level = rng.uniform(*BACKGROUND_COUNTS)
    tilt, direction = rng.uniform(0, 0.08), rng.uniform(0, 2 * np.pi)
    ramp = (rows[:, None] / shape[0] - 0.5) * np.sin(direction) + (cols[None, :] / shape[1] - 0.5) * np.cos(direction)
    counts = level * (1 + tilt * ramp) * particle_image
    if difficulty["noise"] > 0:
        gain = GAIN_AT_FULL_NOISE * difficulty["noise"]
        counts = rng.poisson(counts / gain) * gain
        counts = counts + rng.normal(0.0, READ_NOISE_AT_FULL_NOISE * difficulty["noise"], shape)
    return np.clip(np.rint(counts), 0, CAMERA_MAX).astype(np.uint16)


# ---------------------------------------------------------------------------------------------------- the dump


def object_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    """The generator of the ``index``-th object of ``class_name``: SeedSequence of (seed, class-name hash, index)."""
    class_key = int.from_bytes(hashlib.sha256(class_name.encode()).digest()[:4], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, class_key, index]))


def _check_spec(spec: dict) -> tuple[dict[str, int], dict[str, float], float]:
    """Class counts, difficulty and pixel size of a ``synthetic`` source block, keys it lacks taking the config
    schema's defaults (the pixel size: an ImageStream pixel at the 60x objective). Unlike a study's data set, a
    rendered dump may hold one class (a blank sample of beads, say)."""
    kind = spec.get("kind", "synthetic")
    if kind != "synthetic":
        raise InputError(f"kind: render_dump draws kind 'synthetic' only, not {kind!r}")
    spec = fill("source", spec | {"kind": "synthetic"})
    classes = spec.get("classes") or {}
    if not classes:
        raise InputError("classes: the synthetic source needs at least one class with a count")
    for name, count in classes.items():
        if name not in RENDERERS:
            raise InputError(f"classes.{name}: unknown synthetic class; known: {', '.join(known_classes())}")
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise InputError(f"classes.{name}: count must be a non-negative integer, got {count!r}")
    if not any(classes.values()):
        raise InputError("classes: every count is 0; the synthetic source needs at least one object")
    difficulty = spec["difficulty"]
    for key, value in difficulty.items():
        if key not in DIFFICULTY_KEYS:
            raise InputError(f"difficulty.{key}: unknown key; known: {', '.join(DIFFICULTY_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise InputError(f"difficulty.{key}: must be a number in [0, 1], got {value!r}")
    pixel_size = spec["pixel_size_um"]
    if isinstance(pixel_size, bool) or not isinstance(pixel_size, int | float) or not pixel_size > 0:
        raise InputError(f"pixel_size_um: must be a positive number, got {pixel_size!r}")
    return (
        {name: int(count) for name, count in classes.items()},
        {k: float(v) for k, v in difficulty.items()},
        float(pixel_size),
    )


def _clean(out_dir: Path, keep: set[str]) -> None:
    """Remove the TIFFs (and interrupted ``.part`` files) of an earlier render from every renderable class folder."""
    for name in RENDERERS:
        folder = out_dir / name
        if not folder.is_dir():
            continue
        for stale in [*folder.glob("*_Ch*.tif"), *folder.glob(".*.part")]:
            stale.unlink()
        if name not in keep and not any(folder.iterdir()):
            folder.rmdir()


def render_dump(out_dir, spec: dict, seed: int) -> pd.DataFrame:
    """Render the data set ``spec`` (a config ``source:`` block of kind ``synthetic``) into ``out_dir``.

    Writes ``out_dir/<class>/<object>_Ch1.tif``, one uint16 single-object brightfield TIFF per object, with object
    numbers unique across classes and interleaved as in an acquisition; each file is written under a temporary name
    and renamed. Files an earlier render left in the renderable class folders are removed first. Returns the
    manifest: ``object_id``, ``class_name``, ``path``, ``height``, ``width``, one row per object, by object number.
    """
    counts, difficulty, pixel_size = _check_spec(spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean(out_dir, keep={name for name, count in counts.items() if count})

    jobs = [(name, index) for name in sorted(counts) for index in range(counts[name])]
    order = np.random.default_rng(np.random.SeedSequence([seed, len(jobs)])).permutation(len(jobs))
    width = max(5, len(str(len(jobs) - 1)))
    rows = []
    for number, job in enumerate(order):
        name, index = jobs[job]
        image = render_object(name, object_rng(seed, name, index), difficulty, pixel_size)
        object_id = f"{number:0{width}d}"
        path = out_dir / name / f"{object_id}_Ch1.tif"
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, image, photometric="minisblack", metadata=None)
        rows.append((object_id, name, str(path), *image.shape))
    return pd.DataFrame(rows, columns=["object_id", "class_name", "path", "height", "width"])
