"""Self-supervised pretraining of an embedding network on unlabelled images: SimCLR (Chen et al., ICML 2020).

Each image of a batch of ``B`` is drawn twice by the online augmentation (:mod:`cytodml.learn.online_augment`, with
the ``pretrain.augment`` settings, strong by default), the network embeds both views, a projection head
``g(h) = W2 relu(W1 h)`` maps each embedding ``h`` to ``z``, and the NT-Xent loss pulls the two views of an image
together against the ``2B - 2`` other views of the batch::

    l(i, j) = -log( exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau) ),   s = cosine similarity of the z's,

averaged over the ``2B`` ordered positive pairs (i, j) (Chen et al.'s eq. 1). pytorch-metric-learning's ``NTXentLoss``
inside its ``SelfSupervisedLoss`` (``symmetric=True``: both views as anchors) defines the same loss, and the tests hold
:func:`nt_xent` to it; it is written here as one cross-entropy over the ``2B x 2B`` similarity matrix because the
library's pair-list form builds a ``2B x 2B(2B - 2)`` mask: at ``B = 256`` that is half a gigabyte and 5 s per step on
two CPU cores, against 2 ms here (``benchmarks/README.md``, "Pretraining throughput").

The projection head is dropped afterwards: the encoder bundle (:mod:`cytodml.learn.embed`) holds the network itself,
the start that ``network.init`` gives every loss of an experiment. No label is read, and no validation either: the
weights after the last epoch are kept (SimCLR's recipe; choosing an epoch by labelled validation would spend the labels
the few-shot protocols ration). Like training, pretraining checkpoints every epoch and, resumed on the CPU, ends with
the weights of an uninterrupted run.
"""

import copy
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cytodml.config import checked
from cytodml.errors import InputError
from cytodml.learn.embed import ENCODER_FORMAT, ENCODER_VERSION, IMAGE_DTYPES, BatchLoader, autocast, choose_device
from cytodml.learn.models import build_model
from cytodml.learn.online_augment import BatchAugmentation
from cytodml.learn.samplers import ClassBalancedBatchSampler
from cytodml.learn.trainer import CHECKPOINT_NAME, EpochLoop, channel_statistics, config_hash

__all__ = ["ViewContrast", "PretrainRun", "pretrain", "nt_xent"]

HISTORY = ("epoch", "train_loss", "lr", "seconds", "images_per_s")


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """The NT-Xent loss of the module docstring for two views ``z_a``, ``z_b`` (``[B, P]``; row i of each is image i):
    the cross-entropy of each view's cosine similarities to the other ``2B - 1`` views, over ``tau``, with its own
    image's other view as the target."""
    views = F.normalize(torch.cat([z_a, z_b]), dim=1)
    logits = (views @ views.T / temperature).fill_diagonal_(float("-inf"))
    size = len(z_a)
    partner = torch.cat([torch.arange(size, 2 * size), torch.arange(size)]).to(logits.device)
    return F.cross_entropy(logits, partner)


class ViewContrast(nn.Module):
    """SimCLR's projection head and NT-Xent: called on the embeddings of the two views, returns the loss. Its weights
    are the projection head's, trained with the network and dropped with it."""

    def __init__(self, embedding_dim: int, projection_dim: int, temperature: float):
        super().__init__()
        self.projection = nn.Sequential(
            nn.Linear(embedding_dim, embedding_dim), nn.ReLU(inplace=True), nn.Linear(embedding_dim, projection_dim)
        )
        self.temperature = temperature

    def forward(self, h_a: torch.Tensor, h_b: torch.Tensor) -> torch.Tensor:
        return nt_xent(self.projection(h_a), self.projection(h_b), self.temperature)


class PretrainRun(EpochLoop):
    """Epochs of NT-Xent steps on two views of each batch; every epoch's weights are kept (the last one wins)."""

    where = "pretrain"

    def __init__(self, **loop):
        super().__init__(history=HISTORY, **loop)

    def train_step(self, index) -> float:
        images = self.train_loader(index)
        # both views in one pass, so batch norm sees the 2B images NT-Xent compares (as in SimCLR)
        views = torch.cat([self.augment(images), self.augment(images)])
        with autocast(self.device):
            embeddings = self.model(views)
        h_a, h_b = embeddings.float().chunk(2)
        return self.step(self.loss(h_a, h_b))

    def run_epoch(self) -> None:
        started = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss, images = self.train_one_epoch()
        seconds = time.perf_counter() - started
        self.epoch += 1
        self.record(
            {
                "epoch": self.epoch,
                "train_loss": train_loss,
                "lr": lr,
                "seconds": seconds,
                "images_per_s": images / seconds,
            }
        )
        self.keep()
        self.log(
            f"epoch {self.epoch}/{self.epochs}: NT-Xent {train_loss:.4g}, lr {lr:.3g}, {seconds:.1f} s, "
            f"{images / seconds:.0f} images/s"
        )

    def encoder(self) -> dict:
        """The encoder bundle: the description with the kept weights (the projection head left out)."""
        return {**self.description, "state_dict": self.best["model"]}


def pretrain(
    images: np.ndarray,
    *,
    network: dict,
    spec: dict,
    channel_names: list[str],
    seed: int,
    checkpoint_dir,
    log=print,
) -> tuple[dict, pd.DataFrame]:
    """Pretrain ``network`` by SimCLR on the N x C x S x S uint8 / uint16 ``images`` (no labels).

    ``spec`` is the ``pretrain:`` block (the schema's defaults fill what it lacks). ``checkpoint_dir`` (None: none)
    holds the per-epoch checkpoint, resumed by a run of the same configuration and images. Returns the encoder bundle
    (:mod:`cytodml.learn.embed`) and the per-epoch history: ``epoch``, ``train_loss`` (NT-Xent), ``lr``, ``seconds``,
    ``images_per_s`` (images per second, each seen in two views). On the CPU, deterministic algorithms are on for the
    run.
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(choose_device().type == "cpu")
    try:
        run = prepare_pretraining(
            images, network=network, spec=spec, channel_names=channel_names, seed=seed,
            checkpoint_dir=checkpoint_dir, log=log,
        )  # fmt: skip
        run.fit()
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return run.encoder(), pd.DataFrame(run.history)


def prepare_pretraining(images, *, network, spec, channel_names, seed, checkpoint_dir, log=print) -> PretrainRun:
    """The inputs of :func:`pretrain` checked and turned into a :class:`PretrainRun` that has not trained yet."""
    spec = checked("pretrain", spec, "pretrain")
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise InputError(f"pretrain images: expected an N x C x S x S array, got {getattr(images, 'shape', images)}")
    if str(images.dtype) not in IMAGE_DTYPES:
        raise InputError(f"pretrain images: dtype {images.dtype}; expected one of {', '.join(IMAGE_DTYPES)}")
    if len(images) < 2:
        raise InputError(f"pretrain: {len(images)} image(s); NT-Xent needs at least two to contrast")
    if len(channel_names) != images.shape[1]:
        raise InputError(f"channel_names: {len(channel_names)} names for {images.shape[1]} image channels")
    device = choose_device()
    torch.manual_seed(seed)
    network = {key: value for key, value in checked("network", network, "network").items() if key != "init"}
    in_channels, image_size = images.shape[1], images.shape[2]
    model = build_model(network, in_channels, image_size, normalize=False).to(device)
    loss = ViewContrast(network["embedding_dim"], spec["projection_dim"], spec["temperature"]).to(device)
    normalization = channel_statistics(images)
    batch_size = min(spec["batch_size"], len(images))
    steps_per_epoch = spec.get("steps_per_epoch", math.ceil(len(images) / batch_size))
    description = {
        "format": ENCODER_FORMAT,
        "version": ENCODER_VERSION,
        "network": copy.deepcopy(network),
        "in_channels": int(in_channels),
        "image_size": int(image_size),
        "embedding_dim": int(network["embedding_dim"]),
        "channel_names": list(channel_names),
        "normalization": normalization,
        "pretrain": copy.deepcopy(spec),
        "images": int(len(images)),
        "seed": int(seed),
        "dtype": str(images.dtype),
    }
    return PretrainRun(
        model=model,
        loss=loss,
        spec=spec,
        description=description,
        train_loader=BatchLoader(images, normalization, device),
        augment=BatchAugmentation(spec["augment"], normalization, float(np.iinfo(images.dtype).max)),
        sampler=ClassBalancedBatchSampler(
            np.zeros(len(images), dtype=np.int64), batch_size, 0, seed, batches_per_epoch=steps_per_epoch
        ),
        checkpoint=None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME,
        config_hash=config_hash(description, spec, (images,)),
        log=log,
    )
