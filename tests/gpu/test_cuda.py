"""The CUDA path, on a GPU only (marker ``cuda``, skipped without one): device-resident batches, bfloat16 autocast,
channels-last, resume after a kill, embedding on the GPU against the CPU.

Each test records the difference it measured (``record_property``); the GPU check kit (``benchmarks/gpu/check.py``)
writes them to its CSV. The tolerances are relative L2 differences, ``|a - b| / |b|``, as docs/cluster.md states them
("GPU jobs"): bfloat16 keeps 8 significant bits (a rounding of about 4e-3), float32 convolutions on tensor cores
round their inputs to TF32's 11 bits, and CUDA's atomic additions make runs of one seed differ in the last bits.
"""

import copy
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from cytodml.learn import embed as embedding
from cytodml.learn.embed import BatchLoader, autocast, embed
from cytodml.learn.losses import build_loss
from cytodml.learn.models import build_model
from cytodml.learn.trainer import CHECKPOINT_NAME, channel_statistics, prepare_run
from tests.unit.test_trainer import KWARGS, kill_in_epoch_3
from tests.unit.test_trainer import run_train as run_cpu_train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parents[2]
#: the default study's losses, so that every loss type the study trains is checked under autocast
LOSSES = yaml.safe_load((ROOT / "config.yaml").read_text())["losses"]
CUDA = torch.device("cuda")
BF16_TOLERANCE = 2e-2  # bfloat16 autocast against float32: a few roundings of 4e-3 deep
TF32_TOLERANCE = 1e-2  # two float32 layouts, each through TF32 tensor cores with its own algorithm
RUN_TOLERANCE = 1e-2  # whole trainings of one seed on one GPU (rerun, or resumed after a kill), per weight tensor
PROBABILITY_TOLERANCE = 2e-2  # softmax probabilities on the GPU (bfloat16) against the CPU, absolute
#: every epoch runs (patience = epochs), so that trainings are compared at one epoch by their last weights: the best
#: epoch's weights would jump to another epoch where a last-bit difference reorders two close validation losses
GPU_KWARGS = {**KWARGS, "train_spec": {**KWARGS["train_spec"], "patience": KWARGS["train_spec"]["epochs"]}}


def run_train(data, **overrides):
    """test_trainer's training, every epoch run (GPU_KWARGS)."""
    return run_cpu_train(data, **{"train_spec": GPU_KWARGS["train_spec"], **overrides})


def last_weights(checkpoint_dir: Path) -> dict:
    """The network's weights after the last epoch, from the checkpoint a finished training leaves."""
    return torch.load(checkpoint_dir / CHECKPOINT_NAME, weights_only=True)["model"]


def relative_difference(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.detach().double().cpu(), reference.detach().double().cpu()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-12))


def weights_difference(first: dict, second: dict) -> float:
    """The largest relative difference over two state dicts' floating-point tensors; integer ones (batch norm's
    step counts) must be equal."""
    assert first.keys() == second.keys()
    worst = 0.0
    for key, tensor in first.items():
        if tensor.is_floating_point():
            worst = max(worst, relative_difference(tensor, second[key]))
        else:
            assert torch.equal(tensor, second[key]), key
    return worst


def small_run(data, loss_spec):
    """A run of the trainer on the GPU that has not trained yet: small network, the test images."""
    return prepare_run(
        data["xt"], data["yt"], data["xv"], data["yv"], network=KWARGS["network"], loss_spec=loss_spec,
        train_spec=KWARGS["train_spec"], class_names=KWARGS["class_names"], channel_names=KWARGS["channel_names"],
        seed=0, checkpoint_dir=None, log=lambda message: None,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_device_batches_equal_the_cpu_batches_in_channels_last(dtype):
    rng = np.random.default_rng(0)
    images = rng.integers(0, np.iinfo(dtype).max, size=(64, 3, 24, 24), dtype=dtype, endpoint=True)
    normalization = channel_statistics(images)
    index = rng.permutation(64)[:32]
    loader = BatchLoader(images, normalization, CUDA)
    assert loader.images.device.type == "cuda"  # the whole array lives on the device
    batch = loader(index)
    assert batch.device.type == "cuda" and batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last)
    # the same float32 subtraction and multiplication on both sides: equal to the bit
    assert torch.equal(batch.cpu(), BatchLoader(images, normalization, torch.device("cpu"))(index))


@pytest.mark.parametrize("name", list(LOSSES))
def test_bfloat16_autocast_gives_finite_losses_and_embeddings_near_float32(data, name, record_property):
    loss = build_loss(LOSSES[name], len(KWARGS["class_names"]), 16).to(CUDA)
    torch.manual_seed(0)
    model = build_model({"name": "small", "embedding_dim": 16}, 2, 16, loss.normalize_embeddings).to(CUDA)
    model.to(memory_format=torch.channels_last).train()
    batch = BatchLoader(data["xt"], channel_statistics(data["xt"]), CUDA)(np.arange(len(data["xt"])))
    labels = torch.as_tensor(data["yt"], device=CUDA)
    with torch.no_grad():
        full = model(batch)
        with autocast(CUDA):
            mixed = model(batch).float()
        losses = {"float32": float(loss(full, labels)), "bfloat16": float(loss(mixed, labels))}
    difference = relative_difference(mixed, full)
    record_property("embedding_relative_difference", difference)
    for precision, value in losses.items():
        record_property(f"loss_{precision}", value)
    assert all(math.isfinite(value) for value in losses.values()), losses
    assert difference < BF16_TOLERANCE


@pytest.mark.parametrize("name", list(LOSSES))
def test_training_steps_on_the_device_are_finite_and_move_the_weights(data, name):
    run = small_run(data, LOSSES[name])
    assert run.device.type == "cuda"
    before = copy.deepcopy(run.model.state_dict())
    run.sampler.set_epoch(0)
    values = [run.train_step(index) for index in run.sampler]
    assert all(math.isfinite(value) for value in values), values
    after = run.model.state_dict()
    assert any(not torch.equal(after[key], before[key]) for key in before if before[key].is_floating_point())


def test_channels_last_runs_through_the_network_and_matches_the_contiguous_layout(data, record_property):
    run = small_run(data, LOSSES["triplet"])
    convolutions = [layer for layer in run.model.modules() if isinstance(layer, nn.Conv2d)]
    assert convolutions and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convolutions)
    batch = run.train_loader(np.arange(32))
    first_block = next(iter(run.model.blocks.values()))
    with torch.no_grad():
        assert first_block(batch).is_contiguous(memory_format=torch.channels_last)  # no layout conversion inside
        contiguous = copy.deepcopy(run.model).to(memory_format=torch.contiguous_format).eval()
        difference = relative_difference(run.model.eval()(batch), contiguous(batch.contiguous()))
    record_property("embedding_relative_difference", difference)
    assert difference < TF32_TOLERANCE


def test_two_trainings_of_one_seed_on_the_gpu_agree_within_tolerance(data, tmp_path, record_property):
    for run in ("first", "second"):
        run_train(data, checkpoint_dir=tmp_path / run)
    difference = weights_difference(last_weights(tmp_path / "first"), last_weights(tmp_path / "second"))
    record_property("weights_max_relative_difference", difference)
    record_property("bit_identical", difference == 0)
    assert difference <= RUN_TOLERANCE


def test_resume_after_a_kill_on_the_gpu_ends_near_the_uninterrupted_weights(data, tmp_path, record_property):
    run_train(data, checkpoint_dir=tmp_path / "uninterrupted")
    checkpoint = kill_in_epoch_3(data, tmp_path, GPU_KWARGS, signal.SIGKILL, timeout=120)

    messages = []
    run_train(data, checkpoint_dir=checkpoint.parent, log=messages.append)
    assert any("resumed" in message and "after epoch 2" in message for message in messages)
    difference = weights_difference(last_weights(checkpoint.parent), last_weights(tmp_path / "uninterrupted"))
    record_property("weights_max_relative_difference", difference)
    assert difference <= RUN_TOLERANCE


@pytest.mark.parametrize("name", ["softmax", "triplet"])
def test_embed_on_the_gpu_matches_the_cpu_within_tolerance(data, name, monkeypatch, record_property):
    bundle, _ = run_train(data, loss_spec=LOSSES[name], train_spec={**KWARGS["train_spec"], "epochs": 2})
    assert all(tensor.device.type == "cpu" for tensor in bundle["state_dict"].values())  # a bundle loads anywhere
    on_gpu = embed(bundle, data["xv"])
    monkeypatch.setattr(embedding, "choose_device", lambda require_gpu=False: torch.device("cpu"))
    on_cpu = embed(bundle, data["xv"])
    difference = relative_difference(torch.from_numpy(on_gpu["embedding"]), torch.from_numpy(on_cpu["embedding"]))
    record_property("embedding_relative_difference", difference)
    assert difference < BF16_TOLERANCE
    if on_cpu["probabilities"] is not None:
        largest = float(np.abs(on_gpu["probabilities"] - on_cpu["probabilities"]).max())
        record_property("probability_max_difference", largest)
        assert largest < PROBABILITY_TOLERANCE
