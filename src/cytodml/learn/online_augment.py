"""Online augmentation: every training batch transformed anew, on the training device, in normalised float units.

:class:`BatchAugmentation` takes the ``train.augment`` block of the config and the training images' per-channel
normalisation, and returns a callable that the trainer applies to each batch ``x`` (``[B, C, S, S]``, float, values
``(raw - mean_c) / std_c``) after it is on the device. Each image of the batch gets its own draw of every transform:

- *dihedral*: one of the 8 flips and 90-degree turns;
- *affine*: rotation, translation and isotropic zoom (``kornia.augmentation.RandomAffine``);
- *blur*: Gaussian blur (``kornia.augmentation.RandomGaussianBlur``);
- *intensity*: gamma, contrast and brightness per channel, in the raw value range scaled to ``[0, 1]``;
- *noise*: additive Gaussian noise in channel standard deviations.

They run in this order, the order in which a microscope degrades an image: the object's pose, then the optics (blur),
then the sensor's response (intensity) and its noise.

Why kornia for the geometric part: resampling a batch with per-image affine matrices (``grid_sample``) and per-image
Gaussian kernels is what kornia does, vectorised on any device. Why plain tensor ops for the rest: kornia has no op for
the dihedral group (its ``RandomRotation90`` resamples through an affine warp, where a transpose and flips are exact,
and rounds a continuous draw of the quarter turns, and its flips are separate modules), and kornia's ``ColorJitter``
assumes RGB images in ``[0, 1]``, whereas these transforms must act on each channel alone in the raw range of 8- or
16-bit data, without quantising 16-bit values to an 8-bit grid.

All randomness comes from torch's global generators (``torch.rand``/``torch.randn`` on the batch's device, and
kornia, which draws from torch's CPU generator), so a trainer that seeds torch and checkpoints
``torch.get_rng_state()`` (and CUDA's) resumes with the augmentation the uninterrupted run would have drawn. A
transform that is off (``p = 0``, ``dihedral: false``) draws nothing.
"""

import kornia.augmentation as K
import numpy as np
import torch

from cytodml.errors import InputError

__all__ = ["BatchAugmentation"]

#: the [low, high] ranges of the spec, whose order the schema cannot check
RANGES = [("affine", "zoom"), ("intensity", "contrast"), ("intensity", "gamma"), ("blur", "sigma")]


class BatchAugmentation:
    """Random augmentation of a normalised batch ``x`` (``[B, C, S, S]``, ``x = (raw - mean_c) / std_c``).

    Each transform but ``dihedral`` applies to an image with its probability ``p``; every draw is per image, and the
    intensity draws per image and channel. In order:

    - ``dihedral``: ``x <- vflip^v(hflip^h(transpose^t(x)))`` with ``t, h, v`` independent fair coins, so each of the
      8 elements of the dihedral group (flips and 90-degree turns) has probability 1/8;
    - ``affine``: rotation by ``U(-degrees, degrees)``, translation by ``U(-shift, shift) * S`` along each axis,
      isotropic zoom by ``U(zoom)``; bilinear, the border filled by reflection;
    - ``blur``: Gaussian blur of standard deviation ``U(sigma)`` pixels, kernel ``2 * ceil(3 * sigma_max) + 1``
      (at most the largest odd size below ``S``), the border filled by reflection;
    - ``intensity``: on the raw scale ``u = (x * std_c + mean_c) / max_value``,
      ``u' = clamp(u, 0, 1) ** gamma``, ``u' <- (u' - m) * contrast + m`` with ``m`` the image's mean of ``u'`` in
      the channel, ``u' <- u' + brightness``, and back ``x' = (u' * max_value - mean_c) / std_c``; ``gamma ~
      U(gamma)``, ``contrast ~ U(contrast)``, ``brightness ~ U(-brightness, brightness)``, each drawn per image and
      channel. The result is not clamped, so no value is saturated, and stays float, so 16-bit values keep their
      precision;
    - ``noise``: ``x <- x + sigma * N(0, 1)`` per pixel, i.e. ``sigma`` channel standard deviations.

    Args:
        spec: the ``train.augment`` config block, filled with its defaults (``checked("train", ...)["augment"]``).
        normalization: ``{"mean": [...], "std": [...]}`` per channel, in raw units, as used to normalise ``x``.
        max_value: the top of the raw range, 255 for uint8 and 65535 for uint16 data.

    Calling it returns a new tensor of ``x``'s shape, dtype, device and memory format; gradients are not tracked.
    """

    def __init__(self, spec: dict, normalization: dict, max_value: float):
        self.spec = spec
        self.mean, self.std = _channel_statistics(normalization)
        if not max_value > 0:
            raise InputError(f"max_value: expected a positive raw maximum, got {max_value}")
        self.max_value = float(max_value)
        for transform, key in RANGES:
            low, high = spec[transform][key]
            if low > high:
                raise InputError(f"augment.{transform}.{key}: expected [low, high], got [{low}, {high}]")
        affine = spec["affine"]
        # Reflection, not zeros or the border: a zero after normalisation is the channel mean, brighter than the
        # background of most microscopy images, so zero padding would frame the cell in a flat band that never occurs
        # in real images; border padding smears the edge pixels into streaks without noise. Reflection fills the
        # corners with background of the image's own texture and noise.
        self.random_affine = K.RandomAffine(
            degrees=affine["degrees"],
            translate=(affine["shift"], affine["shift"]),
            scale=tuple(affine["zoom"]),
            padding_mode="reflection",
            p=affine["p"],
            keepdim=True,
        )
        self._random_blurs = {}  # by image size, which caps the kernel

    @property
    def active(self) -> bool:
        """False when no batch would ever change: ``dihedral`` off and every transform's ``p`` 0."""
        return self.spec["dihedral"] or any(
            self.spec[transform]["p"] > 0 for transform in ("affine", "blur", "intensity", "noise")
        )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """A randomly augmented copy of the batch ``x``."""
        self._check_batch(x)
        out = x
        if self.spec["dihedral"]:
            out = dihedral(out)
        if self.spec["affine"]["p"] > 0:
            out = self.random_affine(out)
        if self.spec["blur"]["p"] > 0:
            out = self._random_blur(out.shape[-1])(out)
        if self.spec["intensity"]["p"] > 0:
            out = self._intensity(out)
        if self.spec["noise"]["p"] > 0:
            out = gaussian_noise(out, self.spec["noise"]["p"], self.spec["noise"]["sigma"])
        if out is x:
            out = x.clone()
        return out.to(x.dtype).contiguous(memory_format=_memory_format(x))

    def _check_batch(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[-1] != x.shape[-2] or not x.is_floating_point():
            raise InputError(f"augment: expected a float batch [B, C, S, S], got {x.dtype} {tuple(x.shape)}")
        if x.shape[1] != len(self.mean):
            raise InputError(f"augment: the batch has {x.shape[1]} channels, the normalization {len(self.mean)}")

    def _random_blur(self, size: int) -> K.RandomGaussianBlur:
        if size not in self._random_blurs:
            blur = self.spec["blur"]
            kernel_size = blur_kernel_size(blur["sigma"][1], size)
            self._random_blurs[size] = K.RandomGaussianBlur(
                kernel_size, tuple(blur["sigma"]), border_type="reflect", p=blur["p"], keepdim=True
            )
        return self._random_blurs[size]

    def _intensity(self, x: torch.Tensor) -> torch.Tensor:
        # The affine map between normalised and [0, 1] raw units, worked out in float64 and applied in x's dtype.
        scale = (self.std / self.max_value).to(x)
        offset = (self.mean / self.max_value).to(x)
        spec = self.spec["intensity"]
        return intensity_jitter(
            x, scale, offset, spec["p"], tuple(spec["gamma"]), tuple(spec["contrast"]), spec["brightness"]
        )


def dihedral(x: torch.Tensor) -> torch.Tensor:
    """Each square image of ``x`` under one of the 8 dihedral-group elements, uniformly: transpose, then horizontal
    flip, then vertical flip, each with probability 1/2 (the 8 coin outcomes are the 8 distinct elements)."""
    transpose, hflip, vflip = (torch.rand(3, x.shape[0], 1, 1, 1, device=x.device) < 0.5).unbind(0)
    x = torch.where(transpose, x.transpose(-2, -1), x)
    x = torch.where(hflip, x.flip(-1), x)
    return torch.where(vflip, x.flip(-2), x)


def intensity_jitter(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    p: float,
    gamma: tuple[float, float],
    contrast: tuple[float, float],
    brightness: float,
) -> torch.Tensor:
    """Gamma, contrast and brightness per image and channel on the raw scale ``u = x * scale + offset`` (``scale``,
    ``offset``: ``[C]``), applied to each image with probability ``p``; see :class:`BatchAugmentation`."""
    batch, channels = x.shape[:2]
    apply = torch.rand(batch, 1, 1, 1, device=x.device) < p
    draws = torch.rand(3, batch, channels, 1, 1, device=x.device, dtype=x.dtype)
    gamma_, contrast_ = (low + (high - low) * draw for (low, high), draw in zip((gamma, contrast), draws[:2]))
    brightness_ = brightness * (2 * draws[2] - 1)
    scale, offset = scale.view(1, channels, 1, 1), offset.view(1, channels, 1, 1)
    # Clamping keeps pow real-valued for values that earlier noise or a loose max_value put outside [0, 1]; images as
    # loaded, resampled or blurred (weighted means with reflected borders) are inside already.
    u = (x * scale + offset).clamp(0, 1) ** gamma_
    channel_mean = u.mean(dim=(-2, -1), keepdim=True)
    u = (u - channel_mean) * contrast_ + channel_mean + brightness_
    return torch.where(apply, (u - offset) / scale, x)


def gaussian_noise(x: torch.Tensor, p: float, sigma: float) -> torch.Tensor:
    """``x + sigma * N(0, 1)`` per pixel for each image with probability ``p``."""
    apply = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p
    return torch.where(apply, x + sigma * torch.randn_like(x), x)


def blur_kernel_size(sigma_max: float, size: int) -> int:
    """``2 * ceil(3 * sigma_max) + 1`` (the Gaussian to 3 sigma), at most the largest odd size below ``size`` so that
    reflection padding has pixels to reflect."""
    largest = size - 1 if size % 2 == 0 else size - 2
    return max(1, min(2 * int(np.ceil(3 * sigma_max)) + 1, largest))


def _channel_statistics(normalization: dict) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.as_tensor(normalization["mean"], dtype=torch.float64).flatten()
    std = torch.as_tensor(normalization["std"], dtype=torch.float64).flatten()
    if len(mean) == 0 or mean.shape != std.shape:
        raise InputError(f"normalization: expected mean and std per channel, got {len(mean)} and {len(std)} values")
    if not (std > 0).all():
        raise InputError(f"normalization: every channel's std must be positive, got {std.tolist()}")
    return mean, std


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format
