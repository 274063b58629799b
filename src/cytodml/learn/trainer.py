"""Training of one embedding network with one loss, resumable and deterministic.

The recipe is the ``train:`` block: an optimiser and a learning-rate schedule stepped per optimiser step
(:mod:`cytodml.learn.optim`) over a budget of ``epochs x steps_per_epoch`` steps, every training batch augmented on the
training device (:mod:`cytodml.learn.online_augment`), and early stopping on a validation score after each epoch, the
weights of the best epoch kept (Luo et al., RSC Adv 2021: at most 300 epochs). Batches come from
:class:`~cytodml.learn.samplers.ClassBalancedBatchSampler`: with ``samples_per_class`` images of every class when the
loss needs positives in each batch, plain shuffled otherwise; either way the order is a function of (seed, epoch).

Every epoch ends with a checkpoint (model, loss head, optimiser, scheduler, random state, best weights, history,
early-stopping counter) written atomically to ``checkpoint_dir``; a run started again with the same configuration and
data resumes from it and, on the CPU, ends with the weights an uninterrupted run gives (the augmentation draws from
torch's random state, which the checkpoint holds).

Validation per epoch, on a fixed stratified subsample of the validation images (``monitor_images``,
``monitor_per_class``): ``val_balanced_accuracy`` (kNN over a subsample of the training images),
``val_precision_at_1`` (:mod:`cytodml.learn.monitor`) and ``val_loss``, the loss on validation batches drawn like the
training ones (with a fixed order). ``train.monitor`` picks the one early stopping follows. The kept epoch is the latest
one within ``min_delta`` of the best so far or, with ``selection: one_standard_error`` (the default), within the best
score's standard error where that is larger (the later epoch wins a tie); patience restarts only on a gain above
``min_delta``.

The bundle ``train`` returns, and :func:`load_model` that reads it back, are defined in :mod:`cytodml.learn.embed`
(``load_model`` is re-exported here).
"""

import copy
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cytodml.config import MIN_SAMPLES_PER_CLASS, checked
from cytodml.errors import InputError
from cytodml.io import atomic_path
from cytodml.learn.embed import (
    IMAGE_DTYPES,
    MODEL_FORMAT,
    MODEL_VERSION,
    BatchLoader,
    autocast,
    choose_device,
    load_model,
    run_model,
)
from cytodml.learn.losses import build_loss
from cytodml.learn.models import build_model
from cytodml.learn.monitor import (
    knn_balanced_accuracy,
    precision_at_1,
    proportion_standard_error,
    stratified_subsample,
)
from cytodml.learn.online_augment import BatchAugmentation
from cytodml.learn.optim import build_optimizer, build_schedule
from cytodml.learn.samplers import ClassBalancedBatchSampler

__all__ = ["TrainingDiverged", "train", "prepare_run", "load_model", "channel_statistics"]

#: +1 where a higher monitor value is better, -1 where lower is
MONITORS = {"val_balanced_accuracy": 1, "val_precision_at_1": 1, "val_loss": -1}
HISTORY = (
    "epoch", "train_loss", "val_loss", "val_precision_at_1", "val_balanced_accuracy", "monitor_standard_error", "lr",
    "seconds", "images_per_s",
)  # fmt: skip
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "cytodml-checkpoint"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and batch and the checkpoint that was kept."""


def train(
    train_images: np.ndarray,
    train_labels,
    val_images: np.ndarray,
    val_labels,
    *,
    network: dict,
    loss_spec: dict,
    train_spec: dict,
    class_names: list[str],
    channel_names: list[str],
    seed: int,
    checkpoint_dir,
    init: dict | None = None,
    log=print,
) -> tuple[dict, pd.DataFrame]:
    """Train ``network`` with the loss ``loss_spec`` on N x C x S x S uint8 / uint16 images.

    Labels are positions in ``class_names``. ``checkpoint_dir`` (None: no checkpoints) holds the per-epoch
    checkpoint; one written by the same configuration and data is resumed. ``init`` is an encoder bundle
    (:func:`~cytodml.learn.embed.load_encoder`, what ``network.init`` names) the network starts from, with the
    normalisation it was pretrained with; None: random weights. Returns the model bundle (see
    :mod:`cytodml.learn.embed`) holding the best epoch's weights, and the per-epoch history: ``epoch``,
    ``train_loss``, ``val_loss``, ``val_precision_at_1``, ``val_balanced_accuracy``, ``lr`` (at the epoch's start),
    ``seconds``, ``images_per_s``.
    On the CPU, deterministic algorithms are switched on for the run (and restored after it).
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(choose_device().type == "cpu")
    try:
        run = prepare_run(
            train_images, train_labels, val_images, val_labels, network=network, loss_spec=loss_spec,
            train_spec=train_spec, class_names=class_names, channel_names=channel_names, seed=seed,
            checkpoint_dir=checkpoint_dir, init=init, log=log,
        )  # fmt: skip
        run.fit()
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return run.bundle(), pd.DataFrame(run.history)


def prepare_run(
    train_images, train_labels, val_images, val_labels, *, network, loss_spec, train_spec, class_names,
    channel_names, seed, checkpoint_dir, init=None, log=print,
) -> "Run":  # fmt: skip
    """The inputs of :func:`train` checked and turned into a :class:`Run` (network, loss, optimiser, batches) that has
    not trained yet; ``train`` fits it, a benchmark can drive :meth:`Run.train_step` itself."""
    spec = check_train_spec(train_spec)
    train_labels, val_labels = _check_subsets(
        train_images, train_labels, val_images, val_labels, spec, class_names, channel_names
    )
    in_channels, image_size = train_images.shape[1], train_images.shape[2]

    device = choose_device()
    torch.manual_seed(seed)
    network = checked("network", network, "network")
    embedding_dim = network["embedding_dim"]
    loss = build_loss(loss_spec, len(class_names), embedding_dim).to(device)
    model = build_model(network, in_channels, image_size, loss.normalize_embeddings)
    if init is None and (not loss.trains or "init" in network):
        raise InputError(
            "network.init: a loss of type none keeps the network it starts from, so it needs network.init"
            if not loss.trains
            else "network.init is set, but no encoder bundle was given to start from"
        )
    normalization = (
        channel_statistics(train_images)
        if init is None
        else start_from(model, init, network, channel_names, (in_channels, image_size))
    )
    model.to(device)
    samples_per_class = resolve_samples_per_class(spec, loss)
    loss.check_batch(samples_per_class, len(class_names))
    steps_per_epoch = spec.get("steps_per_epoch", math.ceil(len(train_images) / spec["batch_size"]))
    # scored every epoch: the same bounded subsamples, so that epochs compare and a large set costs little
    val_kept = stratified_subsample(val_labels, spec["monitor_images"], spec.get("monitor_per_class"), seed)
    reference_kept = stratified_subsample(train_labels, spec["monitor_images"], None, seed)
    description = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "network": copy.deepcopy(dict(network)),
        "loss": copy.deepcopy(dict(loss_spec)),
        "in_channels": int(in_channels),
        "image_size": int(image_size),
        "embedding_dim": int(embedding_dim),
        "class_names": list(class_names),
        "channel_names": list(channel_names),
        "normalization": normalization,
        "seed": int(seed),
        "dtype": str(train_images.dtype),
        "init": None if init is None else {"sha256": weights_digest(init["state_dict"]), "images": init["images"]},
    }  # what the model bundle records, and what a checkpoint must match to be resumed
    return Run(
        model=model,
        loss=loss,
        spec=spec,
        description=description,
        train_loader=BatchLoader(train_images, normalization, device),
        val_loader=BatchLoader(val_images[val_kept], normalization, device),
        reference_loader=BatchLoader(train_images[reference_kept], normalization, device),
        train_labels=torch.as_tensor(train_labels, device=device),
        val_labels=torch.as_tensor(val_labels[val_kept], device=device),
        reference_labels=torch.as_tensor(train_labels[reference_kept], device=device),
        augment=BatchAugmentation(spec["augment"], normalization, float(np.iinfo(train_images.dtype).max)),
        sampler=ClassBalancedBatchSampler(
            train_labels, spec["batch_size"], samples_per_class, seed, batches_per_epoch=steps_per_epoch
        ),
        val_batches=list(ClassBalancedBatchSampler(val_labels[val_kept], spec["batch_size"], samples_per_class, seed)),
        checkpoint=None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME,
        config_hash=config_hash(description, spec, (train_images, train_labels, val_images, val_labels)),
        log=log,
    )


def start_from(model, init: dict, network: dict, channel_names: list[str], shape: tuple[int, int]) -> dict:
    """Load the pretrained encoder ``init`` into ``model`` (built from ``network``) and return the normalisation it
    was pretrained with, which the fine-tuning keeps: its features expect images scaled that way. ``shape`` is the
    images' (channels, size). An encoder of
    another architecture, channel set or patch size raises ``InputError`` naming what differs."""
    own = {key: value for key, value in network.items() if key != "init"}
    theirs = {key: value for key, value in init["network"].items() if key != "init"}
    differences = []
    if own != theirs:
        differences.append(f"network {theirs} (this experiment: {own})")
    if list(init["channel_names"]) != list(channel_names):
        differences.append(f"channels {init['channel_names']} (this experiment: {list(channel_names)})")
    if (init["in_channels"], init["image_size"]) != shape:
        differences.append(
            f"{init['in_channels']} channels of {init['image_size']} px (this experiment: {shape[0]} of {shape[1]} px)"
        )
    if differences:
        raise InputError(f"network.init: the encoder was pretrained with {'; '.join(differences)}")
    try:
        model.load_state_dict(init["state_dict"])
    except RuntimeError as err:
        raise InputError(f"network.init: the encoder's weights do not fit this network: {err}") from None
    return copy.deepcopy(init["normalization"])


def parameter_groups(model, loss, lr: float, backbone_lr_factor: float) -> list[dict]:
    """The optimiser's parameter groups: the network's blocks at ``lr * backbone_lr_factor``, its embedding layer
    (head) and the loss's own weights at ``lr``; one group of everything at a factor of 1 (pretraining, and fine-tuning
    at one rate). A factor of 0 freezes the blocks (left out of the optimiser and
    without gradients; :class:`Run` also keeps their batch-norm statistics fixed)."""
    if backbone_lr_factor == 1:
        return [{"params": [*model.parameters(), *loss.parameters()]}]
    rest = [*model.head.parameters(), *loss.parameters()]
    if backbone_lr_factor == 0:
        model.blocks.requires_grad_(False)
        return [{"params": rest}]
    return [{"params": list(model.blocks.parameters()), "lr": lr * backbone_lr_factor}, {"params": rest}]


def weights_digest(state_dict: dict) -> str:
    """A SHA-256 of a state dict's names and tensors: which pretrained start a model came from."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_subsets(train_images, train_labels, val_images, val_labels, spec, class_names, channel_names):
    """Both subsets' images and labels checked against each other, the classes and the channel names; returns the
    labels as arrays."""
    train_labels = check_data(train_images, train_labels, "train", len(class_names))
    val_labels = check_data(val_images, val_labels, "val", len(class_names))
    if train_images.shape[1:] != val_images.shape[1:] or train_images.dtype != val_images.dtype:
        raise InputError(
            f"val images are {val_images.dtype} {val_images.shape[1:]}, train images {train_images.dtype} "
            f"{train_images.shape[1:]}: both subsets must come from the same patches and channels"
        )
    if spec["monitor"] == "val_precision_at_1" and len(val_images) < 2:
        raise InputError("train.monitor: val_precision_at_1 needs at least 2 validation images")
    if spec["monitor"] == "val_balanced_accuracy" and spec["monitor_images"] < len(class_names):
        raise InputError(
            f"train.monitor_images: {spec['monitor_images']} images cannot hold one of each of the "
            f"{len(class_names)} classes that val_balanced_accuracy scores"
        )
    if len(channel_names) != train_images.shape[1]:
        raise InputError(f"channel_names: {len(channel_names)} names for {train_images.shape[1]} image channels")
    return train_labels, val_labels


def check_train_spec(train_spec: dict) -> dict:
    """The ``train:`` block with the config schema's defaults filled in; a wrong key or value raises InputError."""
    return checked("train", train_spec, "train")


def check_data(images: np.ndarray, labels, subset: str, num_classes: int) -> np.ndarray:
    """Images N x C x S x S of a supported dtype, and one label per image in [0, num_classes)."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise InputError(f"{subset} images: expected an N x C x S x S array, got {getattr(images, 'shape', images)}")
    if str(images.dtype) not in IMAGE_DTYPES:
        raise InputError(f"{subset} images: dtype {images.dtype}; expected one of {', '.join(IMAGE_DTYPES)}")
    if len(images) == 0:
        raise InputError(f"{subset} images: none; training needs a {subset} subset (experiment fractions.{subset})")
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{subset} labels: expected {len(images)} integers, got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise InputError(f"{subset} labels: values outside [0, {num_classes}) (positions in class_names)")
    return labels.astype(np.int64)


def resolve_samples_per_class(spec: dict, loss) -> int:
    """Images per class in every batch: 0 (plain shuffled) for a loss that needs none, else ``train.samples_per_class``
    or, unset, max(2, the loss's minimum)."""
    needed = loss.samples_per_class_min
    if needed == 0:
        return 0
    chosen = spec.get("samples_per_class", max(MIN_SAMPLES_PER_CLASS, needed))
    if isinstance(chosen, bool) or not isinstance(chosen, int) or chosen < needed:
        raise InputError(f"train.samples_per_class: {chosen!r}, but the loss needs at least {needed} per class")
    return chosen


def channel_statistics(images: np.ndarray, chunk: int = 1024) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation over every pixel of ``images``, in the source value range.

    Two passes in float64 (the mean, then the squared deviations), so uint16 data lose no precision; a constant
    channel gets std 1, leaving it centred but unscaled.
    """
    pixels = len(images) * images.shape[2] * images.shape[3]
    total = np.zeros(images.shape[1])
    for start in range(0, len(images), chunk):
        total += images[start : start + chunk].sum(axis=(0, 2, 3), dtype=np.float64)
    mean = total / pixels
    squares = np.zeros(images.shape[1])
    for start in range(0, len(images), chunk):
        deviation = images[start : start + chunk].astype(np.float64) - mean[None, :, None, None]
        squares += np.square(deviation).sum(axis=(0, 2, 3))
    std = np.sqrt(squares / pixels)
    return {"mean": mean.tolist(), "std": np.where(std > 0, std, 1.0).tolist()}


def config_hash(description: dict, spec: dict, arrays) -> str:
    """A digest of everything a training run depends on, so a checkpoint is resumed only by the run that wrote it."""
    digest = hashlib.sha256(json.dumps([description, spec], sort_keys=True).encode())
    for array in arrays:
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()


def cpu_copy(state_dict: dict) -> dict:
    return {key: value.detach().to("cpu", copy=True) for key, value in state_dict.items()}


class EpochLoop:
    """Epochs of optimiser steps on one network and a loss module, with a checkpoint after each: what supervised
    training (:class:`Run`) and self-supervised pretraining (:class:`cytodml.learn.pretrain.PretrainRun`) share.

    A subclass says what one step is (:meth:`train_step`), what an epoch records and which weights it keeps
    (:meth:`run_epoch`), and when to stop before the budget (:meth:`stopped`). :meth:`fit` resumes from a checkpoint of
    the same ``config_hash`` it finds. ``where`` is the config block messages name (``train``, ``pretrain``).
    """

    where = "train"

    def __init__(self, *, model, loss, spec, description, train_loader, augment, sampler, checkpoint, config_hash,
                 log, history):  # fmt: skip
        self.model, self.loss, self.spec, self.description = model, loss, spec, description
        self.train_loader, self.augment, self.sampler = train_loader, augment, sampler
        self.checkpoint, self.config_hash, self.log = checkpoint, config_hash, log
        self.device = train_loader.device
        # a loss that trains nothing (type none) runs no epoch; the pretraining's loss always trains
        self.epochs = spec["epochs"] if getattr(loss, "trains", True) else 0
        # a transient per-batch bar where a person watches; the per-epoch log line either way
        self.progress_bar = sys.stderr.isatty()
        model.to(memory_format=torch.channels_last)
        groups = parameter_groups(model, loss, spec["lr"], spec.get("backbone_lr_factor", 1))
        self.optimizer = build_optimizer(groups, spec)
        self.scheduler = build_schedule(self.optimizer, spec, len(sampler))
        self.epoch = 0
        self.bad_epochs = 0
        self.best = {"epoch": 0, "model": cpu_copy(model.state_dict()), "loss": cpu_copy(loss.state_dict())}
        self.history = {column: [] for column in history}

    # ------------------------------------------------------------------------------------------------------ the loop
    def fit(self) -> None:
        self.resume()
        while self.epoch < self.epochs and not self.stopped():
            self.run_epoch()
            self.save()
        stopped = "early stop" if self.stopped() else "last epoch"
        self.log(f"{stopped} after epoch {self.epoch}; keeping epoch {self.best['epoch']}")

    def stopped(self) -> bool:
        """Whether to stop before the budget is spent (early stopping)."""
        return False

    def run_epoch(self) -> None:
        raise NotImplementedError

    def train_step(self, index) -> float:
        raise NotImplementedError

    def set_train_mode(self) -> None:
        self.model.train()
        self.loss.train()

    def keep(self, **scores) -> None:
        """The current weights become the kept ones, with ``scores``: the subclass's record of why."""
        self.best = {
            "epoch": self.epoch,
            **scores,
            "model": cpu_copy(self.model.state_dict()),
            "loss": cpu_copy(self.loss.state_dict()),
        }

    def record(self, row: dict) -> None:
        for column, value in row.items():
            self.history[column].append(value)

    def train_one_epoch(self) -> tuple[float, int]:
        """One pass over the epoch's batches; returns the mean loss per image and the images seen."""
        self.set_train_mode()
        self.sampler.set_epoch(self.epoch)
        total, images = 0.0, 0
        batches = self.sampler
        if self.progress_bar:
            batches = tqdm(batches, desc=f"epoch {self.epoch + 1}/{self.epochs}", leave=False)
        for number, index in enumerate(batches, start=1):
            scalar = self.train_step(index)
            if not math.isfinite(scalar):
                kept = "no checkpoint yet"
                if self.checkpoint and self.epoch:
                    kept = f"the checkpoint of epoch {self.epoch} is kept"
                raise TrainingDiverged(
                    f"training diverged: loss {scalar} at epoch {self.epoch + 1}, batch {number} ({kept}); "
                    f"try a lower {self.where}.lr"
                )
            total += scalar * len(index)
            images += len(index)
        return total / images, images

    def step(self, value: torch.Tensor) -> float:
        """An optimiser and schedule step on the batch loss ``value``; returns it as a float, and leaves the weights
        untouched where it is not finite."""
        scalar = value.item()
        if math.isfinite(scalar):
            self.optimizer.zero_grad(set_to_none=True)
            value.backward()
            self.optimizer.step()
            self.scheduler.step()
        return scalar

    # ------------------------------------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """Everything an interrupted run needs to go on exactly where this epoch ended (weights_only-loadable)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CHECKPOINT_FORMAT,
            "config_hash": self.config_hash,
            "epoch": self.epoch,
            "bad_epochs": self.bad_epochs,
            "model": self.model.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "best": self.best,
            "history": self.history,
        }

    def save(self) -> None:
        if self.checkpoint is None:
            return
        with atomic_path(self.checkpoint) as tmp:
            torch.save(self.state(), tmp)

    def resume(self) -> None:
        if self.checkpoint is None or not self.checkpoint.exists():
            return
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as err:  # an unreadable checkpoint only costs the epochs it held
            self.log(f"ignoring unreadable checkpoint {self.checkpoint} ({type(err).__name__}: {err}); starting afresh")
            return
        if state.get("format") != CHECKPOINT_FORMAT or state.get("config_hash") != self.config_hash:
            self.log(f"checkpoint {self.checkpoint} is of another configuration or data; starting afresh")
            return
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch, self.bad_epochs = state["epoch"], state["bad_epochs"]
        self.best, self.history = state["best"], state["history"]
        self.log(f"resumed from {self.checkpoint} after epoch {self.epoch}")


class Run(EpochLoop):
    """One supervised training run: an :class:`EpochLoop` validated after each epoch, with early stopping and the
    best epoch kept (see the module docstring)."""

    def __init__(self, *, val_loader, reference_loader, train_labels, val_labels, reference_labels, val_batches,
                 **loop):  # fmt: skip
        super().__init__(history=HISTORY, **loop)
        self.val_loader, self.reference_loader = val_loader, reference_loader
        self.train_labels, self.val_labels, self.reference_labels = train_labels, val_labels, reference_labels
        self.val_batches = val_batches
        self.frozen_backbone = self.spec["backbone_lr_factor"] == 0
        self.best |= {"value": None, "top": None, "top_error": 0.0}

    def stopped(self) -> bool:
        return self.bad_epochs >= self.spec["patience"]

    def set_train_mode(self) -> None:
        super().set_train_mode()
        if self.frozen_backbone:  # frozen includes the batch-norm statistics, which train mode would update
            self.model.blocks.eval()

    def bundle(self) -> dict:
        """The model bundle: the run's description with the best epoch's weights."""
        return {
            **self.description,
            "state_dict": self.best["model"],
            "loss_state_dict": self.best["loss"],
            "best_epoch": self.best["epoch"],
        }

    def run_epoch(self) -> None:
        started = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss, images = self.train_one_epoch()
        train_seconds = time.perf_counter() - started
        scores = self.validate()
        self.epoch += 1
        row = {
            "epoch": self.epoch,
            "train_loss": train_loss,
            **scores,
            "lr": lr,
            "seconds": time.perf_counter() - started,
            "images_per_s": images / train_seconds,
        }
        self.record(row)
        improved = self.track_best(row[self.spec["monitor"]], row["monitor_standard_error"])
        self.log(
            f"epoch {self.epoch}/{self.spec['epochs']}: train_loss {train_loss:.4g}, val_loss {row['val_loss']:.4g}, "
            f"val_precision_at_1 {row['val_precision_at_1']:.3f}, val_balanced_accuracy "
            f"{row['val_balanced_accuracy']:.3f}, lr {lr:.3g}, {row['seconds']:.1f} s, "
            f"{row['images_per_s']:.0f} images/s{' (best)' if improved else ''}"
        )

    def train_step(self, index) -> float:
        """One optimiser step on the training images ``index``; returns the batch loss, and leaves the weights
        untouched where it is not finite."""
        images = self.train_loader(index)
        if self.augment.active:
            images = self.augment(images)
        with autocast(self.device):
            embeddings = self.model(images)
        return self.step(self.loss(embeddings.float(), self.train_labels[index]))

    def validate(self) -> dict[str, float]:
        """The monitor's scores, in eval mode: validation loss (mean over the fixed validation batches), precision
        at 1 and the kNN balanced accuracy over the reference (training) subsample; and the standard error of the one
        ``train.monitor`` names (of the loss: the batch losses' standard deviation over the root of their count)."""
        embeddings = run_model(self.model, self.val_loader, self.spec["batch_size"])["embedding"]
        reference = run_model(self.model, self.reference_loader, self.spec["batch_size"])["embedding"]
        self.loss.eval()
        with torch.inference_mode():
            losses = [float(self.loss(embeddings[b], self.val_labels[b])) for b in self.val_batches]
        precision = precision_at_1(embeddings, self.val_labels)
        balanced, balanced_error = knn_balanced_accuracy(reference, self.reference_labels, embeddings, self.val_labels)
        errors = {
            "val_loss": float(np.std(losses, ddof=1) / math.sqrt(len(losses))) if len(losses) > 1 else 0.0,
            "val_precision_at_1": proportion_standard_error(precision * len(embeddings), len(embeddings)),
            "val_balanced_accuracy": balanced_error,
        }
        return {
            "val_loss": float(np.mean(losses)),
            "val_precision_at_1": precision,
            "val_balanced_accuracy": balanced,
            "monitor_standard_error": errors[self.spec["monitor"]],
        }

    def track_best(self, value: float, standard_error: float) -> bool:
        """Keep this epoch if its monitor value is within the tolerance of the best so far (the top): ``min_delta`` or,
        with ``selection: one_standard_error``, the top's standard error where that is larger. A difference that
        small is noise, and the later epoch has trained longer (and, under a decaying schedule, at a smaller step).
        Patience restarts only on a gain above ``min_delta`` over the top. Returns whether the epoch was kept."""
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"training diverged: {self.spec['monitor']} is {value} after epoch {self.epoch}; try a lower train.lr"
            )
        sign, top, top_error = MONITORS[self.spec["monitor"]], self.best["top"], self.best["top_error"]
        gain = math.inf if top is None else sign * (value - top)
        self.bad_epochs = 0 if gain > self.spec["min_delta"] else self.bad_epochs + 1
        if gain > 0:
            top, top_error = value, standard_error
        tolerance = self.spec["min_delta"]
        if self.spec["selection"] == "one_standard_error":
            tolerance = max(tolerance, top_error)
        if gain < -tolerance:
            self.best |= {"top": top, "top_error": top_error}
            return False
        self.keep(value=value, top=top, top_error=top_error)
        return True
