"""BatchAugmentation: each transform does what it says, the dihedral draw is uniform over the group, 16-bit values keep
their precision, and the draws are reproducible from torch's RNG state (what resuming a training run needs)."""

import time

import numpy as np
import pytest
import torch

from cytodml.config import checked
from cytodml.errors import InputError
from cytodml.learn.online_augment import BatchAugmentation, blur_kernel_size

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
NORMALIZATION = {"mean": [100.0, 50.0, 20.0], "std": [40.0, 30.0, 10.0]}


def spec(dihedral=False, **transforms) -> dict:
    """The filled train.augment block with only the given transforms switched on (``affine={"p": 1}``, ...)."""
    return checked("train", {"augment": {"dihedral": dihedral, **transforms}})["augment"]


def every_transform_on(p=0.5) -> dict:
    return spec(True, affine={"p": p}, intensity={"p": p}, noise={"p": p}, blur={"p": p})


def uint8_batch(n=256, channels=3, size=28, seed=0) -> torch.Tensor:
    """Random uint8 images normalised with NORMALIZATION."""
    raw = torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed))
    mean, std = (torch.tensor(NORMALIZATION[key][:channels]).view(1, -1, 1, 1) for key in ("mean", "std"))
    return ((raw - mean) / std).float()


def dihedral_images(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 dihedral-group images of each image in ``x``: 4 rotations, each with and without a flip."""
    return [torch.rot90(image, k, dims=(-2, -1)) for image in (x, x.flip(-1)) for k in range(4)]


def high_frequency_energy(x: torch.Tensor) -> torch.Tensor:
    """Per image: the energy of the differences between neighbouring pixels."""
    return (x.diff(dim=-1) ** 2).sum(dim=(1, 2, 3)) + (x.diff(dim=-2) ** 2).sum(dim=(1, 2, 3))


def test_inactive_spec_leaves_the_batch_as_it_is():
    augment = BatchAugmentation(spec(), NORMALIZATION, 255)
    x = uint8_batch()
    assert not augment.active
    out = augment(x)
    assert torch.equal(out, x) and out is not x
    assert BatchAugmentation(spec(noise={"p": 0.1}), NORMALIZATION, 255).active
    assert BatchAugmentation(spec(dihedral=True), NORMALIZATION, 255).active


def test_dihedral_gives_one_of_the_8_elements_per_image_and_all_of_them_over_a_batch():
    torch.manual_seed(0)
    x = uint8_batch()
    out = BatchAugmentation(spec(dihedral=True), NORMALIZATION, 255)(x)
    candidates = torch.stack(dihedral_images(x))  # [8, B, C, S, S]; random images: the 8 are distinct
    matches = (candidates == out).flatten(2).all(dim=2)  # [8, B]
    assert (matches.sum(dim=0) == 1).all()
    elements = matches.int().argmax(dim=0)
    assert len(elements.unique()) >= 6
    assert np.bincount(elements.numpy(), minlength=8).min() >= 12  # 32 expected of each, per 256


@pytest.mark.parametrize("device", DEVICES)
def test_draws_follow_torchs_rng_state(device):
    augment = BatchAugmentation(every_transform_on(), NORMALIZATION, 255)
    x = uint8_batch(64).to(device)
    torch.manual_seed(1)
    first = augment(x)
    torch.manual_seed(1)
    assert torch.equal(augment(x), first)
    torch.manual_seed(2)
    assert not torch.equal(augment(x), first)
    # a resumed run restores the RNG states it checkpointed, and must draw what the uninterrupted run drew next
    states = torch.get_rng_state(), torch.cuda.get_rng_state_all() if device == "cuda" else None
    following = augment(x)
    torch.set_rng_state(states[0])
    if device == "cuda":
        torch.cuda.set_rng_state_all(states[1])
    assert torch.equal(augment(x), following)


def sixteen_bit_batch():
    """Smooth 16-bit images (a gradient plus texture) spanning most of the range, normalised with their statistics,
    and the statistics."""
    generator = torch.Generator().manual_seed(3)
    ramp = torch.linspace(0, 1, 32)
    base = 2000 + 50000 * ramp.view(1, 1, 1, 32) * torch.rand(64, 2, 1, 1, generator=generator)
    raw = (base + torch.randint(0, 3000, (64, 2, 32, 32), generator=generator)).round().to(torch.int32)
    assert raw.max() <= 65535
    normalization = {"mean": raw.double().mean(dim=(0, 2, 3)).tolist(), "std": raw.double().std(dim=(0, 2, 3)).tolist()}
    mean, std = (torch.tensor(normalization[key], dtype=torch.float64).view(1, -1, 1, 1) for key in ("mean", "std"))
    return ((raw - mean) / std).float(), raw, mean, std, normalization


def unique_counts(x: torch.Tensor) -> list[int]:
    """The number of distinct values in each image channel."""
    return [len(channel.unique()) for channel in x.flatten(2).flatten(0, 1)]


def test_intensity_keeps_16_bit_precision():
    x, raw, mean, std, normalization = sixteen_bit_batch()
    identity = spec(intensity={"p": 1, "gamma": [1, 1], "contrast": [1, 1], "brightness": 0})
    torch.manual_seed(0)
    out = BatchAugmentation(identity, normalization, 65535)(x)
    assert (out - x).abs().max() < 1e-5
    assert torch.equal((out.double() * std + mean).round(), raw.double())  # every raw unit kept
    assert unique_counts(out) == unique_counts(x)

    jitter = spec(intensity={"p": 1, "gamma": [0.8, 1.2], "contrast": [0.8, 1.2], "brightness": 0.1})
    out = BatchAugmentation(jitter, normalization, 65535)(x)
    assert not torch.allclose(out, x, atol=1e-2)
    back = out.double() * std + mean
    assert ((back - back.round()).abs() > 0.01).float().mean() > 0.9  # not on the integer grid of raw values
    on_8_bit_grid = back / 65535 * 255
    assert ((on_8_bit_grid - on_8_bit_grid.round()).abs() > 0.01).float().mean() > 0.9
    # a monotone map per image and channel: values one raw unit apart stay apart
    assert unique_counts(out) == unique_counts(x)


def test_intensity_formula_on_the_raw_scale():
    """The formula computed by hand for 8-bit images of one channel: gamma 0.5, contrast 2, brightness 0, p = 1."""
    x = uint8_batch(512, channels=1, size=8)
    normalization = {"mean": NORMALIZATION["mean"][:1], "std": NORMALIZATION["std"][:1]}
    torch.manual_seed(4)
    out = BatchAugmentation(
        spec(intensity={"p": 1, "gamma": [0.5, 0.5], "contrast": [2, 2], "brightness": 0}), normalization, 255
    )(x)
    u = ((x * 40 + 100) / 255).clamp(0, 1) ** 0.5
    u_mean = u.mean(dim=(-2, -1), keepdim=True)
    expected = (((u - u_mean) * 2 + u_mean) * 255 - 100) / 40
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("p", [0, 1])
def test_affine_moves_every_image_at_p_1_and_none_at_p_0(p):
    x = uint8_batch(64)
    torch.manual_seed(5)
    out = BatchAugmentation(spec(affine={"p": p}), NORMALIZATION, 255)(x)
    changed = (out - x).abs().flatten(1).amax(dim=1) > 1e-3
    assert changed.all() if p else torch.equal(out, x)


def test_noise_has_standard_deviation_sigma_and_hits_a_share_p_of_images():
    x = uint8_batch(256)
    torch.manual_seed(6)
    difference = BatchAugmentation(spec(noise={"p": 1, "sigma": 0.2}), NORMALIZATION, 255)(x) - x
    assert abs(difference.std().item() - 0.2) < 0.005 and abs(difference.mean().item()) < 0.005
    difference = BatchAugmentation(spec(noise={"p": 0.5, "sigma": 0.2}), NORMALIZATION, 255)(x) - x
    changed = (difference != 0).flatten(1).any(dim=1)
    assert 0.35 < changed.float().mean() < 0.65
    assert (difference[~changed] == 0).all()


def test_blur_lowers_high_frequency_energy_of_every_image():
    x = uint8_batch(64)
    torch.manual_seed(7)
    out = BatchAugmentation(spec(blur={"p": 1, "sigma": [0.5, 1.5]}), NORMALIZATION, 255)(x)
    assert (high_frequency_energy(out) < 0.8 * high_frequency_energy(x)).all()
    assert blur_kernel_size(1.0, 28) == 7 and blur_kernel_size(3.0, 16) == 15 and blur_kernel_size(3.0, 15) == 13


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_batch_keeps_shape_dtype_device_memory_format_and_values(device):
    augment = BatchAugmentation(every_transform_on(1.0), NORMALIZATION, 255)
    x = uint8_batch(32).to(device)
    x_last = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(8)
    out = augment(x)
    torch.manual_seed(8)
    out_last = augment(x_last)
    assert out_last.shape == x.shape and out_last.dtype == x.dtype and out_last.device == x.device
    assert out_last.is_contiguous(memory_format=torch.channels_last) and out.is_contiguous()
    torch.testing.assert_close(out_last, out, atol=1e-4, rtol=1e-4)


def test_a_batch_of_256_takes_milliseconds():
    augment = BatchAugmentation(every_transform_on(), NORMALIZATION, 255)
    x = uint8_batch(256)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on 2 shared cores wait on each other whenever another process runs
    try:
        augment(x)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            augment(x)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    assert min(times) < 0.1  # about 30 ms on one core; a loop over the images would take several times that


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="augment.affine.probability"):
        checked("train", {"augment": {"affine": {"probability": 0.5}}})
    with pytest.raises(InputError, match="augment.intensity.gamma"):
        BatchAugmentation(spec(intensity={"gamma": [1.1, 0.9]}), NORMALIZATION, 255)
    with pytest.raises(InputError, match="channels"):
        BatchAugmentation(spec(dihedral=True), NORMALIZATION, 255)(uint8_batch(4)[:, :2])
