"""Applying a trained network: the model bundle, its per-channel normalisation, and embeddings of any images.

A model bundle is the plain dict :func:`cytodml.learn.trainer.train` returns and the train stage saves with
``torch.save``; it loads with ``torch.load(weights_only=True)`` (tensors, dicts, lists, strings, numbers only)::

    {"format": "cytodml-model", "version": 1, "network": {...}, "loss": {...}, "in_channels": C, "image_size": S,
     "embedding_dim": D, "class_names": [...], "channel_names": [...], "normalization": {"mean": [...], "std": [...]},
     "state_dict": {...}, "loss_state_dict": {...}, "best_epoch": int, "seed": int, "dtype": "uint8" | "uint16",
     "init": {"sha256": ..., "images": n} | None}

An encoder bundle is what self-supervised pretraining (:mod:`cytodml.learn.pretrain`) writes, the start a training run
loads with ``network.init``: no classes and no loss, the network's weights and the normalisation they expect::

    {"format": "cytodml-encoder", "version": 1, "network": {...}, "in_channels": C, "image_size": S,
     "embedding_dim": D, "channel_names": [...], "normalization": {...}, "state_dict": {...}, "pretrain": {...},
     "images": n, "seed": int, "dtype": "uint8" | "uint16"}
"""

import contextlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from cytodml.errors import InputError
from cytodml.learn.losses import build_loss
from cytodml.learn.models import EmbeddingNet, build_model

MODEL_FORMAT = "cytodml-model"
MODEL_VERSION = 1
ENCODER_FORMAT = "cytodml-encoder"
ENCODER_VERSION = 1
IMAGE_DTYPES = ("uint8", "uint16")


CPU_FOR_GPU_JOBS = "CYTODML_CPU_FOR_GPU_JOBS"
"""Set to 1, jobs that ask for a GPU run on the CPU where there is none (testing a cluster's wiring on GPU-less nodes);
the job log says so. Never the default: a silent CPU run takes days where hours were booked."""


class GPUUnavailable(RuntimeError):
    """A job asked for a GPU but PyTorch cannot use one; the message says whether the build or the node is at fault."""


def choose_device(require_gpu: bool = False) -> torch.device:
    """The first CUDA device where there is one, else the CPU; with ``require_gpu`` (the job's resources ask for a GPU)
    a missing CUDA raises :class:`GPUUnavailable` instead, since a silent CPU run takes days where hours were booked."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if require_gpu and os.environ.get(CPU_FOR_GPU_JOBS) != "1":
        raise GPUUnavailable(cuda_unavailable_reason())
    return torch.device("cpu")


def cuda_unavailable_reason() -> str:
    """Why CUDA is unusable here, in the two forms clusters show: a CPU-only PyTorch build, or no GPU visible."""
    if torch.version.cuda is None:
        return (
            f"this job asked for a GPU, but PyTorch {torch.__version__} is a CPU-only build (no CUDA): the job's "
            f"environment resolved a CPU build of PyTorch; install a CUDA build (docs/cluster.md, 'GPU jobs'), or, "
            f"where no GPU is meant, let the job ask for none (--resources gpu=0)"
        )
    visible = repr(os.environ["CUDA_VISIBLE_DEVICES"]) if "CUDA_VISIBLE_DEVICES" in os.environ else "unset"
    return (
        f"this job asked for a GPU, but PyTorch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no "
        f"GPU (CUDA_VISIBLE_DEVICES={visible}): the node has no GPU visible to the job or no working driver; check "
        f"the job's GPU request (sbatch --gpus / --gres) and nvidia-smi on the node"
    )


def asks_for_gpu(resources) -> bool:
    """Whether a job's resources (Snakemake's ``resources``: ``gpu`` as in the profiles, or a ``gres`` naming one)
    ask for a GPU. ``--resources gpu=0`` caps every job's ``gpu`` at 0, so a CPU machine can opt out."""
    return int(resources.get("gpu", 0) or 0) > 0 or "gpu" in str(resources.get("gres", "") or "")


def describe_device(device: torch.device) -> str:
    """The device a job runs on, for its log: the GPU's name and CUDA version, or the CPU."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)}, PyTorch {torch.__version__}, CUDA {torch.version.cuda})"
    allowed = f", {CPU_FOR_GPU_JOBS}=1" if os.environ.get(CPU_FOR_GPU_JOBS) == "1" else ""
    return f"cpu (PyTorch {torch.__version__}{allowed})"


def autocast(device: torch.device):
    """bfloat16 mixed precision on a GPU that has it (no loss scaling needed); full precision elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class BatchLoader:
    """Normalised float batches from an N x C x S x S uint8 / uint16 array, one array operation per batch.

    A batch is one fancy index of the array and one conversion, ``x = (float(image) - mean_c) / std_c`` with each
    channel's mean and standard deviation over the training images, in the source value range. Batches come out
    channels-last, the layout cuDNN's tensor cores want and oneDNN's CPU convolutions run fastest in (1.1-1.5x per
    training step, benchmarks/README.md); the network's weights are converted to match. On a GPU the whole array
    lives on the device (uint16 widened to int32, which every indexing kernel takes). On the CPU numpy converts the
    batch straight into the channels-last buffer, in the calling thread: torch's two-thread elementwise kernels took
    50 to 100 times longer on cores shared with other jobs.
    """

    def __init__(self, images: np.ndarray, normalization: dict, device: torch.device):
        self.device = device
        mean = np.asarray(normalization["mean"], dtype=np.float32)
        scale = 1 / np.asarray(normalization["std"], dtype=np.float32)
        if device.type == "cuda":
            widened = images.astype(np.int32) if images.dtype == np.uint16 else np.ascontiguousarray(images)
            self.images = torch.from_numpy(widened).to(device)
            self.mean = torch.from_numpy(mean).to(device).view(1, -1, 1, 1)
            self.scale = torch.from_numpy(scale).to(device).view(1, -1, 1, 1)
        else:
            self.images, self.mean, self.scale = images, mean, scale

    def __len__(self) -> int:
        return len(self.images)

    def __call__(self, index) -> torch.Tensor:
        if self.device.type == "cuda":
            batch = self.images[torch.as_tensor(index, device=self.device)].float().sub_(self.mean).mul_(self.scale)
            return batch.contiguous(memory_format=torch.channels_last)
        images = self.images[index]
        batch = np.empty((len(images), *images.shape[2:], images.shape[1]), dtype=np.float32)
        np.subtract(images.transpose(0, 2, 3, 1), self.mean, out=batch)
        batch *= self.scale
        return torch.from_numpy(batch).permute(0, 3, 1, 2)


@torch.inference_mode()
def run_model(model: EmbeddingNet, loader: BatchLoader, batch_size: int, head: nn.Module | None = None, blocks=False):
    """The network in eval mode over every image of ``loader``, in order, ``batch_size`` at a time.

    Returns float32 tensors on the loader's device: ``embedding`` N x D; ``logits`` N x K where ``head`` (a softmax
    loss) is given; ``blocks`` (name -> N x F pooled block features) where asked.
    """
    model.eval()
    parts = {"embedding": [], "logits": [], "blocks": []}
    with autocast(loader.device):
        for start in range(0, len(loader), batch_size):
            images = loader(np.arange(start, min(start + batch_size, len(loader))))
            if blocks:
                embedding, features = model.forward_features(images)
                parts["blocks"].append({name: f.float() for name, f in features.items()})
            else:
                embedding = model(images)
            parts["embedding"].append(embedding.float())
            if head is not None:
                parts["logits"].append(head.logits(parts["embedding"][-1]).float())
    return {
        "embedding": torch.cat(parts["embedding"]),
        "logits": torch.cat(parts["logits"]) if head is not None else None,
        "blocks": {name: torch.cat([p[name] for p in parts["blocks"]]) for name in parts["blocks"][0]}
        if blocks
        else None,
    }


def load_model(path_or_bundle) -> tuple[EmbeddingNet, nn.Module, dict]:
    """(network, loss, bundle) from a bundle written by the train stage, or the bundle dict itself, in eval mode on
    the CPU. Anything else raises ``InputError`` saying it is not a cytodml model."""
    where = "the given bundle"
    bundle = path_or_bundle
    if isinstance(path_or_bundle, (str, Path)):
        where = str(path_or_bundle)
        bundle = _read_bundle(path_or_bundle, where, "model")
    if not isinstance(bundle, dict) or bundle.get("format") != MODEL_FORMAT:
        raise InputError(f"{where}: not a cytodml model (no 'format': '{MODEL_FORMAT}' entry)")
    if bundle.get("version") != MODEL_VERSION:
        raise InputError(f"{where}: cytodml model format version {bundle.get('version')}, this cytodml reads 1")
    loss = build_loss(bundle["loss"], len(bundle["class_names"]), bundle["embedding_dim"])
    model = build_model(bundle["network"], bundle["in_channels"], bundle["image_size"], loss.normalize_embeddings)
    model.load_state_dict(bundle["state_dict"])
    loss.load_state_dict(bundle["loss_state_dict"])
    return model.eval(), loss.eval(), bundle


def _read_bundle(path, where: str, what: str) -> dict:
    """``torch.load`` of a bundle file (``weights_only``); a missing or foreign file raises ``InputError`` naming
    ``where``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{where}: no such {what} file") from None
    except Exception as err:  # torch raises pickle, zip and runtime errors alike for a foreign file
        raise InputError(f"{where}: not a cytodml {what} ({type(err).__name__}: {err})") from None


def load_encoder(path) -> dict:
    """The encoder bundle a pretrain job wrote at ``path``; a missing or foreign file raises ``InputError`` naming it
    and ``network.init``."""
    where = f"network.init: {path}"
    bundle = _read_bundle(path, where, "encoder")
    if not isinstance(bundle, dict) or bundle.get("format") != ENCODER_FORMAT:
        raise InputError(
            f"{where}: not a cytodml encoder (no 'format': '{ENCODER_FORMAT}' entry; a trained model's file is not a "
            "start, a pretrain job's results/<experiment>/pretrain/<scope>.pt is)"
        )
    if bundle.get("version") != ENCODER_VERSION:
        raise InputError(f"{where}: encoder format version {bundle.get('version')}, this cytodml reads 1")
    return bundle


def check_images(images: np.ndarray, bundle: dict, what: str = "images") -> None:
    """``images`` must be N x C x S x S in the dtype, channel count and size the model was trained on."""
    expected = (bundle["in_channels"], bundle["image_size"], bundle["image_size"])
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise InputError(f"{what}: shape {images.shape}, but the model takes N x {' x '.join(map(str, expected))}")
    if str(images.dtype) != bundle["dtype"]:
        raise InputError(
            f"{what}: dtype {images.dtype}, but the model was trained on {bundle['dtype']} images (its normalisation "
            f"is in that value range)"
        )


def embed(bundle_or_model, images: np.ndarray, batch_size: int = 256, blocks: bool = False) -> dict:
    """Embeddings of ``images`` (N x C x S x S, the training dtype) by a trained model, in eval mode.

    ``bundle_or_model`` is a model file, a bundle dict, or the ``(network, loss, bundle)`` triple of
    :func:`load_model`. Returns ``embedding`` (N x D float32), ``probabilities`` (N x K softmax of the head's logits,
    for a softmax loss only, else None) and ``blocks`` (name -> N x F pooled block features where ``blocks``, else
    None), as numpy arrays.
    """
    model, loss, bundle = bundle_or_model if isinstance(bundle_or_model, tuple) else load_model(bundle_or_model)
    check_images(images, bundle)
    device = choose_device()
    model.to(device)
    loss.to(device)
    loader = BatchLoader(images, bundle["normalization"], device)
    model.to(memory_format=torch.channels_last)
    head = loss if hasattr(loss, "logits") else None
    out = run_model(model, loader, batch_size, head=head, blocks=blocks)
    return {
        "embedding": out["embedding"].cpu().numpy(),
        "probabilities": None if head is None else out["logits"].softmax(dim=1).cpu().numpy(),
        "blocks": None if not blocks else {name: f.cpu().numpy() for name, f in out["blocks"].items()},
    }


def embedding_table(model, patches: np.ndarray, split: pd.DataFrame, channels: list[int], chunk: int = 4096):
    """The embed stage's table: one row per patch of the split, in patch order, except the ``pool`` (a few-shot
    trial's training images not drawn), which nothing downstream reads and which can be most of a data set.

    Columns ``index``, ``subset``, ``class_name``, ``label`` (the data set's label) from the split, ``embedding``
    (a list of D floats) and, for a softmax model, ``probability`` (K floats, in the model's ``class_names`` order).
    ``model`` is the triple of :func:`load_model`; ``patches`` the data set's N x C x S x S array (a memory map is
    read ``chunk`` patches at a time); ``channels`` the experiment's channel positions.
    """
    rows = split[split["subset"] != "pool"].sort_values("index", kind="stable").reset_index(drop=True)
    parts = []
    for start in range(0, len(rows), chunk):
        index = rows["index"].to_numpy()[start : start + chunk]
        parts.append(embed(model, np.ascontiguousarray(patches[index][:, channels])))
    table = rows[["index", "subset", "class_name", "label"]].copy()
    table["embedding"] = list(np.concatenate([part["embedding"] for part in parts]))
    if parts and parts[0]["probabilities"] is not None:
        table["probability"] = list(np.concatenate([part["probabilities"] for part in parts]))
    return table
