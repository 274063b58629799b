"""Recipe check: the plain baselines of ../shared/REFERENCE.md against the workflow's trainer, on the same draws.

Two sides per data set, loss and trial, on the same training, validation and test images:

- plain: the reference being reproduced, written here on purpose (not the library's network or loop), exactly as
  REFERENCE.md's "Plain baselines measured on the shared data" states it: a small CNN (3x3 conv + BN + ReLU blocks of
  32, 64, 128, 128 channels, the first stride 1 and the others stride 2, global average pool, Linear 128 -> 64;
  softmax adds Linear 64 -> C and embeds with the 64-d input to it), channels-last, Adam lr 1e-3 constant, one random
  flip and 90-degree turn per image, channels standardised on the training images, pytorch-metric-learning
  ``TripletMarginLoss(margin=0.2)`` with ``TripletMarginMiner(margin=0.2, type_of_triplets="semihard")`` or
  cross-entropy; ``torch.manual_seed`` (and numpy's global seed, which PML's sampler draws from) per model;
- workflow: :func:`cytodml.learn.trainer.train` with the preset's ``network:`` and ``train:`` blocks (read through
  :func:`cytodml.config.validate_config`, so defaults are filled, then ``--network-override`` /
  ``--recipe-override`` merged in) and a loss of its ``losses:`` (``--loss-override`` merged in by name), on the training images grown by the preset's
  ``augment:`` block as scripts/augment.py does (BloodMNIST ``count: 0``: none; Jurkat: 6 000), the seed
  ``trial_seed(preset seed, data set, trial)`` as scripts/train.py; embeddings by :func:`cytodml.learn.embed.embed`.

Both sides are scored alike: kNN (k = 5, :class:`cytodml.evaluate.classifiers.KNNClassifier`) on L2-normalised
embeddings, fitted on the (un-augmented) training images' embeddings. Data and draws:

- ``bloodmnist`` (preset experiment ``bloodmnist-fewshot``): the .npz's train, val and test merged (17 092, in that
  order), one stratified 50/50 ``train_test_split`` (seed 0; its second part is the test half); test = a stratified
  ``train_test_split(train_size=3000, random_state=0)`` of the test half; per trial t (0-4) 20 images per class of
  the other half, class by class in label order, ``RandomState(1000 + t).choice(..., 20, replace=False)``. Plain: 300
  steps of batch 32 (the 160 images shuffled anew every 5 steps), no validation. Workflow: the fewshot protocol's
  selection sees at most 20 labels per class, so its validation is 20 images per class drawn
  (``RandomState(2000 + t)``, the same way) from that half less the trial's training draw. Score: 8-class balanced
  accuracy.
- ``jurkat-labelfree`` (brightfield + darkfield) and ``jurkat-all`` (the three channels), preset experiments of the same
  names: the 3 418 cells the workflow's ingest and patch stages give (:func:`cytodml.data.sources.ingest`,
  :func:`cytodml.data.patching.make_patches`: filler tiles and the repeated Anaphase cell dropped), uint16 40 px;
  per seed t (0-2) ``train_test_split`` 40 % test, then 20 % of the rest as validation (1 640 / 410 / 1 368,
  stratified, ``random_state=t``). Plain: ``MPerClassSampler`` m = 8, batch 56, an epoch of 1 640 // 56 = 29
  batches, 30 epochs; at epochs 5, 10, ..., 30 the mean of the validation kNN and nearest-centre
  (:class:`~cytodml.evaluate.classifiers.CentroidClassifier`) balanced accuracies, the best epoch's weights kept (the
  first on a tie). Workflow: the same 410 validation cells. Score: MCC of mitotic (predicted Prophase, Metaphase,
  Anaphase or Telophase by the 7-class kNN) against interphase; the 7-class balanced accuracy is printed beside it.

Seconds per model: everything done for that model (standardisation or augmentation, training, validation, embedding,
scoring), not the data loading shared by all models. ``--quick`` proves the code paths only (1 trial, 2 epochs or 30
steps). Needs ../shared/data/ (skips with a message where it is absent). Two threads by default; on cores shared with
other jobs ``--threads 1`` ran the plain BloodMNIST model about 10 x faster (13 against 136 s per 300 steps, load
average 4), and scores differ slightly between thread counts (floating-point summation order).

    python benchmarks/recipe.py --datasets bloodmnist --sides plain --trials 2
    python benchmarks/recipe.py --sides workflow --trials 1 --losses softmax --datasets bloodmnist
    python benchmarks/recipe.py --datasets jurkat-labelfree --recipe-override '{"epochs": 40, "steps_per_epoch": 10}'
    python benchmarks/recipe.py --quick --datasets jurkat-labelfree,jurkat-all

Prints the command, the machine and, per data set, the workflow's filled ``network:``, ``train:``, ``augment:`` and
loss blocks; one line per model as it finishes (data set, side, loss, trial, score, seconds); then a table per data set
and loss (plain mean +- sd, workflow mean +- sd, workflow - plain, seconds per model of each side) and one setting the
plain side beside REFERENCE.md, within one standard deviation where |reproduced - reference| <= the larger of the two
sample standard deviations (ddof 1; REFERENCE's are rounded to its printed digits).
"""

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import TripletMarginMiner
from pytorch_metric_learning.samplers import MPerClassSampler
from sklearn.metrics import balanced_accuracy_score, matthews_corrcoef
from sklearn.model_selection import train_test_split
from torch import nn

from cytodml.config import channel_indices, checked, load_config, loss_train, merged, validate_config
from cytodml.data.augment import augment
from cytodml.data.patching import make_patches
from cytodml.data.sources import ingest
from cytodml.data.splits import trial_seed
from cytodml.evaluate.classifiers import CentroidClassifier, KNNClassifier
from cytodml.learn.embed import choose_device, describe_device, embed, load_model
from cytodml.learn.trainer import train

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DATASETS = {  # name: (preset, experiment)
    "bloodmnist": ("presets/bloodmnist.yaml", "bloodmnist-fewshot"),
    "jurkat-labelfree": ("presets/jurkat.yaml", "jurkat-labelfree"),
    "jurkat-all": ("presets/jurkat.yaml", "jurkat-all"),
}
SIDES = ("plain", "workflow")
PLAIN_LOSSES = ("softmax", "triplet")
#: REFERENCE.md, "Plain baselines measured on the shared data": (mean, sd) of the plain recipe
REFERENCE = {
    ("bloodmnist", "triplet"): (0.752, 0.019),
    ("bloodmnist", "softmax"): (0.771, 0.005),
    ("jurkat-labelfree", "triplet"): (0.72, 0.01),
    ("jurkat-labelfree", "softmax"): (0.79, 0.00),
    ("jurkat-all", "triplet"): (0.84, 0.01),
    ("jurkat-all", "softmax"): (0.84, 0.02),
}
MITOTIC = ("Prophase", "Metaphase", "Anaphase", "Telophase")
K = 5
# the plain recipe
WIDTHS, STRIDES, EMBEDDING = (32, 64, 128, 128), (1, 2, 2, 2), 64
LR, MARGIN = 1e-3, 0.2
BLOOD_SHOTS, BLOOD_TEST, BLOOD_STEPS, BLOOD_BATCH = 20, 3000, 300, 32
JURKAT_M, JURKAT_BATCH, JURKAT_EPOCHS, JURKAT_EVERY = 8, 56, 30, 5
EMBED_BATCH = 512


# ------------------------------------------------------------------------------------------------------ data, draws
@dataclass
class Draw:
    """One trial's images: positions in the data set's arrays."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class Case:
    """One data set: its images as the workflow feeds them (N x C x S x S, uint8 / uint16), labels (positions in
    ``class_names``), the trials' draws, and the preset experiment's blocks for the workflow side."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    channel_names: list[str]
    draws: list[Draw]
    seed: int
    dataset: str
    network: dict
    train: dict
    augment: dict
    losses: dict
    metric: str = field(init=False)

    def __post_init__(self):
        self.metric = "balanced accuracy" if self.name == "bloodmnist" else "mitotic MCC"


@cache
def preset(path: str) -> dict:
    return validate_config(load_config(ROOT / path))


def stratified_choice(rng: np.random.RandomState, labels: np.ndarray, pool: np.ndarray, per_class: int) -> np.ndarray:
    """``per_class`` images of every class from ``pool`` (sorted), class by class in label order, without replacement."""
    pool = np.sort(pool)
    return np.concatenate([rng.choice(pool[labels[pool] == c], per_class, replace=False) for c in np.unique(labels)])


def bloodmnist_arrays(source: dict) -> tuple[np.ndarray, np.ndarray]:
    """The official train, val and test merged, in that order: uint8 N x 3 x 28 x 28 and labels."""
    with np.load(ROOT / source["path"]) as archive:
        images = np.concatenate([archive[f"{s}_images"] for s in ("train", "val", "test")])
        labels = np.concatenate([archive[f"{s}_labels"].ravel() for s in ("train", "val", "test")])
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels.astype(np.int64)


def bloodmnist_draws(labels: np.ndarray, trials: int) -> list[Draw]:
    """The fixed 50/50 split and test subsample, then per trial the 20-per-class training draw and, for the workflow
    side, a disjoint 20-per-class validation draw from the same half."""
    everything = np.arange(len(labels))
    pool, test_half = train_test_split(everything, test_size=0.5, stratify=labels, random_state=0)
    test, _ = train_test_split(test_half, train_size=BLOOD_TEST, stratify=labels[test_half], random_state=0)
    draws = []
    for trial in range(trials):
        chosen = stratified_choice(np.random.RandomState(1000 + trial), labels, pool, BLOOD_SHOTS)
        rest = np.setdiff1d(pool, chosen)
        val = stratified_choice(np.random.RandomState(2000 + trial), labels, rest, BLOOD_SHOTS)
        draws.append(Draw(chosen, val, np.sort(test)))
    return draws


@cache
def jurkat_arrays(source_json: str, channels: tuple[str, ...], patch_json: str) -> tuple[np.ndarray, list[str]]:
    """The Jurkat cells as the workflow's ingest and patch stages give them (filler tiles and the repeated Anaphase
    cell dropped): uint16 N x C x 40 x 40 and each cell's class name."""
    source, patch = json.loads(source_json), json.loads(patch_json)
    source["path"] = str(ROOT / source["path"])
    raw = ingest(source, list(channels))
    with tempfile.TemporaryDirectory() as folder:
        table, _ = make_patches(raw, {**patch, "tile_size": source["tile_size"]}, Path(folder) / "patches.npy")
        images = np.load(Path(folder) / "patches.npy")
    return images, table["class_name"].tolist()


def jurkat_draws(labels: np.ndarray, trials: int) -> list[Draw]:
    """Per seed: 40 % test, then 20 % of the rest as validation, both stratified."""
    draws = []
    for seed in range(trials):
        rest, test = train_test_split(np.arange(len(labels)), test_size=0.4, stratify=labels, random_state=seed)
        chosen, val = train_test_split(rest, test_size=0.2, stratify=labels[rest], random_state=seed)
        draws.append(Draw(np.sort(chosen), np.sort(val), np.sort(test)))
    return draws


def load_case(name: str, trials: int | None, overrides: dict) -> Case:
    path, experiment_name = DATASETS[name]
    config = preset(path)
    experiment = config["experiments"][experiment_name]
    dataset = config["datasets"][experiment["dataset"]]
    source = dataset["source"]
    if source["kind"] == "medmnist":
        images, labels = bloodmnist_arrays(source)
        class_names = list(source["class_names"])
        trials = experiment["trials"] if trials is None else min(trials, experiment["trials"])
        draws = bloodmnist_draws(labels, trials)
    else:
        images, names = jurkat_arrays(
            json.dumps(source, sort_keys=True), tuple(dataset["channels"]), json.dumps(dataset["patch"])
        )
        class_names = sorted(set(names))
        labels = np.array([class_names.index(n) for n in names], dtype=np.int64)
        trials = experiment["trials"] if trials is None else min(trials, experiment["trials"])
        draws = jurkat_draws(labels, trials)
    if class_names != sorted(class_names):
        raise SystemExit(f"{name}: class names {class_names} are not sorted; the trainer's labels would differ")
    channels = channel_indices(dataset["channels"], experiment.get("channels"))
    return Case(
        name=name,
        images=np.ascontiguousarray(images[:, channels]),
        labels=labels,
        class_names=class_names,
        channel_names=[dataset["channels"][c] for c in channels],
        draws=draws,
        seed=config["seed"],
        dataset=experiment["dataset"],
        network=merged(experiment["network"], overrides["network"]),
        train=merged(experiment["train"], overrides["train"]),
        augment=merged(experiment["augment"], overrides["augment"]),
        losses=merged(config["losses"], overrides["losses"]),
    )


# ------------------------------------------------------------------------------------------------------- scoring
def unit(embeddings) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def knn_predict(train_embeddings, train_labels, query_embeddings) -> np.ndarray:
    return KNNClassifier(k=K).fit(unit(train_embeddings), train_labels).predict(unit(query_embeddings))


def score(case: Case, predicted: np.ndarray, truth: np.ndarray) -> dict:
    """The case's score, and the balanced accuracy beside Jurkat's MCC."""
    balanced = balanced_accuracy_score(truth, predicted)
    if case.name == "bloodmnist":
        return {"score": balanced}
    mitotic = [case.class_names.index(name) for name in MITOTIC]
    return {"score": matthews_corrcoef(np.isin(truth, mitotic), np.isin(predicted, mitotic)), "balanced": balanced}


def validation_score(train_embeddings, train_labels, val_embeddings, val_labels) -> float:
    """The plain Jurkat selection score: the mean of kNN and nearest-centre balanced accuracy on validation."""
    reference, query = unit(train_embeddings), unit(val_embeddings)
    knn = KNNClassifier(k=K).fit(reference, train_labels).predict(query)
    centre = CentroidClassifier().fit(reference, train_labels).predict(query)
    return (balanced_accuracy_score(val_labels, knn) + balanced_accuracy_score(val_labels, centre)) / 2


# ------------------------------------------------------------------------------------------------- the plain side
class PlainNet(nn.Module):
    """REFERENCE.md's small CNN: [3x3 conv, BN, ReLU] x 4 (32, 64, 128, 128; stride 1, 2, 2, 2), global average
    pool, Linear 128 -> 64 (the embedding); ``classes`` > 0 adds the softmax head Linear 64 -> C."""

    def __init__(self, in_channels: int, classes: int = 0):
        super().__init__()
        layers, channels = [], in_channels
        for width, stride in zip(WIDTHS, STRIDES):
            layers += [nn.Conv2d(channels, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embedding = nn.Linear(channels, EMBEDDING)
        self.head = nn.Linear(EMBEDDING, classes) if classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.features(x))


def standardised(images: np.ndarray, reference: np.ndarray, device: torch.device) -> torch.Tensor:
    """``images`` as float, each channel standardised by the mean and sd of ``reference``'s pixels, channels-last."""
    pixels = reference.astype(np.float64)
    mean, std = pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3))
    out = (images.astype(np.float32) - mean[:, None, None].astype(np.float32)) / std[:, None, None].astype(np.float32)
    return torch.from_numpy(out).to(device).contiguous(memory_format=torch.channels_last)


def flip_and_turn(batch: torch.Tensor) -> torch.Tensor:
    """Per image, a left-right flip with probability 1/2, then 0, 1, 2 or 3 quarter turns (uniform)."""
    flips = torch.rand(len(batch)) < 0.5
    batch = torch.where(flips.to(batch.device)[:, None, None, None], batch.flip(-1), batch)
    turns = torch.randint(0, 4, (len(batch),))
    out = batch.clone()
    for k in (1, 2, 3):
        chosen = (turns == k).to(batch.device)
        if chosen.any():
            out[chosen] = torch.rot90(batch[chosen], k, (-2, -1))
    return out.contiguous(memory_format=torch.channels_last)


def plain_criterion(loss: str, model: PlainNet):
    if loss == "triplet":
        triplet = TripletMarginLoss(margin=MARGIN)
        miner = TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")
        return lambda embeddings, labels: triplet(embeddings, labels, miner(embeddings, labels))
    return lambda embeddings, labels: F.cross_entropy(model.head(embeddings), labels)


def plain_setup(case: Case, loss: str, draw: Draw, seed: int, device: torch.device):
    """Seeded network, optimiser and criterion, and the draw's standardised images."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # PML's MPerClassSampler draws from numpy's global generator
    model = PlainNet(case.images.shape[1], len(case.class_names) if loss == "softmax" else 0)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    reference = case.images[draw.train]
    images = {part: standardised(case.images[getattr(draw, part)], reference, device) for part in ("train", "test")}
    if case.name != "bloodmnist":
        images["val"] = standardised(case.images[draw.val], reference, device)
    return model, optimizer, plain_criterion(loss, model), images


def plain_step(model, optimizer, criterion, images: torch.Tensor, labels: torch.Tensor) -> None:
    model.train()
    loss = criterion(model(flip_and_turn(images)), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@torch.inference_mode()
def plain_embed(model: PlainNet, images: torch.Tensor) -> np.ndarray:
    model.eval()
    return torch.cat([model(images[s : s + EMBED_BATCH]) for s in range(0, len(images), EMBED_BATCH)]).cpu().numpy()


def plain_bloodmnist(case: Case, loss: str, draw: Draw, seed: int, device, steps: int) -> dict:
    """300 steps of batch 32 over the 160 training images, reshuffled each pass; no validation."""
    model, optimizer, criterion, images = plain_setup(case, loss, draw, seed, device)
    labels = torch.from_numpy(case.labels[draw.train]).to(device)
    per_pass = len(draw.train) // BLOOD_BATCH
    for step in range(steps):
        if step % per_pass == 0:
            order = torch.randperm(len(draw.train)).to(device)
        index = order[(step % per_pass) * BLOOD_BATCH : (step % per_pass + 1) * BLOOD_BATCH]
        plain_step(model, optimizer, criterion, images["train"][index], labels[index])
    return plain_test(case, model, draw, images)


def plain_jurkat(case: Case, loss: str, draw: Draw, seed: int, device, epochs: int) -> dict:
    """MPerClassSampler (m 8, batch 56, an epoch of len(train) // 56 batches); every fifth epoch (and the last) scored
    on validation, the best epoch's weights kept."""
    model, optimizer, criterion, images = plain_setup(case, loss, draw, seed, device)
    train_labels = case.labels[draw.train]
    labels = torch.from_numpy(train_labels).to(device)
    sampler = MPerClassSampler(train_labels, JURKAT_M, JURKAT_BATCH, length_before_new_iter=len(draw.train))
    best = (-np.inf, 0, None)
    for epoch in range(1, epochs + 1):
        order = torch.as_tensor(list(iter(sampler)), device=device)
        for start in range(0, len(order), JURKAT_BATCH):
            index = order[start : start + JURKAT_BATCH]
            plain_step(model, optimizer, criterion, images["train"][index], labels[index])
        if epoch % JURKAT_EVERY == 0 or epoch == epochs:
            reference, query = plain_embed(model, images["train"]), plain_embed(model, images["val"])
            value = validation_score(reference, train_labels, query, case.labels[draw.val])
            if value > best[0]:
                best = (value, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    return {"epoch": best[1], **plain_test(case, model, draw, images)}


def plain_test(case: Case, model: PlainNet, draw: Draw, images: dict) -> dict:
    predicted = knn_predict(
        plain_embed(model, images["train"]), case.labels[draw.train], plain_embed(model, images["test"])
    )
    return score(case, predicted, case.labels[draw.test])


def run_plain(case: Case, loss: str, trial: int, args, device) -> dict:
    draw = case.draws[trial]
    if case.name == "bloodmnist":
        return plain_bloodmnist(case, loss, draw, trial, device, 30 if args.quick else BLOOD_STEPS)
    return plain_jurkat(case, loss, draw, trial, device, 2 if args.quick else JURKAT_EPOCHS)


# ---------------------------------------------------------------------------------------------- the workflow side
def run_workflow(case: Case, loss: str, trial: int, args, device) -> dict:
    """As the workflow: augment (scripts/augment.py), train (scripts/train.py), embed, then the same kNN score."""
    draw = case.draws[trial]
    seed = trial_seed(case.seed, case.dataset, trial)
    train_images, table = augment(case.images[draw.train], case.labels[draw.train], draw.train, case.augment, seed)
    train_spec = loss_train(case.train, case.losses[loss])
    train_spec = {**train_spec, "epochs": 2} if args.quick else train_spec
    bundle, history = train(
        train_images,
        table["label"].to_numpy(),
        case.images[draw.val],
        case.labels[draw.val],
        network=case.network,
        loss_spec=case.losses[loss],
        train_spec=train_spec,
        class_names=case.class_names,
        channel_names=case.channel_names,
        seed=seed,
        checkpoint_dir=None,
        log=print if args.verbose else (lambda message: None),
    )
    model = load_model(bundle)
    embedded = {part: embed(model, case.images[getattr(draw, part)])["embedding"] for part in ("train", "test")}
    predicted = knn_predict(embedded["train"], case.labels[draw.train], embedded["test"])
    result = score(case, predicted, case.labels[draw.test])
    return {"epoch": f"{bundle['best_epoch']}/{len(history)}", "images": len(train_images), **result}


# --------------------------------------------------------------------------------------------------------- output
def print_header(args, cases: list[Case], device) -> None:
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; device: {describe_device(device)}"
    )
    for case in cases:
        sizes = {part: len(getattr(case.draws[0], part)) for part in ("train", "val", "test")}
        print(f"{case.name}: {len(case.images)} images {case.images.dtype} {case.images.shape[1:]}, channels "
              f"{case.channel_names}, {len(case.draws)} trial(s), per trial {sizes}")  # fmt: skip
        if "workflow" in args.sides:
            train_spec = {**case.train, "epochs": 2} if args.quick else case.train
            print(f"  workflow network: {json.dumps(checked('network', case.network, 'network'))}")
            print(f"  workflow train: {json.dumps(checked('train', train_spec, 'train'))}")
            print(f"  workflow augment (offline): {json.dumps(case.augment)}")
            for loss in args.losses:
                print(f"  workflow loss {loss}: {json.dumps(case.losses[loss])}")
    sys.stdout.flush()


def model_line(case: Case, side: str, loss: str, trial: int, result: dict, seconds: float) -> str:
    extra = f", 7-class balanced accuracy {result['balanced']:.3f}" if "balanced" in result else ""
    if result.get("epoch") is not None:
        extra += f", epoch kept {result['epoch']}"
    if "images" in result:
        extra += f", {result['images']} training images"
    return f"{case.name} {side} {loss} trial {trial}: {case.metric} {result['score']:.3f}{extra}; {seconds:.1f} s"


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = f"{statistics.stdev(values):.3f}" if len(values) > 1 else "-"
    return f"{statistics.mean(values):.3f} +- {sd} (n={len(values)})"


def print_summary(results: dict, args) -> None:
    """The side-by-side table, then the plain side against REFERENCE.md."""
    print("\n| data set | loss | plain mean +- sd | workflow mean +- sd | workflow - plain | s/model plain | "
          "s/model workflow |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in args.datasets:
        for loss in args.losses:
            plain, flow = results.get((name, "plain", loss), []), results.get((name, "workflow", loss), [])
            scores = [[r["score"] for r in rows] for rows in (plain, flow)]
            difference = f"{statistics.mean(scores[1]) - statistics.mean(scores[0]):+.3f}" if all(scores) else "-"
            seconds = [f"{statistics.mean(r['seconds'] for r in rows):.1f}" if rows else "-" for rows in (plain, flow)]
            print(f"| {name} | {loss} | {mean_sd(scores[0])} | {mean_sd(scores[1])} | {difference} | "
                  f"{seconds[0]} | {seconds[1]} |")  # fmt: skip
    if "plain" not in args.sides:
        return
    print("\nplain side against REFERENCE.md (within 1 sd: |difference| <= the larger sample sd):")
    print("| data set | loss | reproduced | REFERENCE | difference | within 1 sd |")
    print("|---|---|---|---|---|---|")
    for (name, loss), (mean, sd) in REFERENCE.items():
        rows = results.get((name, "plain", loss), [])
        if not rows:
            continue
        values = [r["score"] for r in rows]
        spread = max(sd, statistics.stdev(values) if len(values) > 1 else 0.0)
        difference = statistics.mean(values) - mean
        verdict = "yes" if abs(difference) <= spread + 1e-9 else "no"
        if args.quick:
            verdict = "n/a (--quick)"
        print(f"| {name} | {loss} | {mean_sd(values)} | {mean:.3f} +- {sd:.3f} | {difference:+.3f} | {verdict} |")


# ----------------------------------------------------------------------------------------------------------- main
def json_dict(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text}")
    return value


def names(choices):
    def parse(text: str) -> list[str]:
        chosen = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [part for part in chosen if choices and part not in choices]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(choices)}")
        return chosen

    return parse


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=names(tuple(DATASETS)), default=list(DATASETS))
    parser.add_argument("--sides", type=names(SIDES), default=list(SIDES))
    parser.add_argument("--losses", type=names(()), default=list(PLAIN_LOSSES), help="any of the preset's losses:")
    parser.add_argument("--trials", type=int, help="trials per data set (default: all, BloodMNIST 5, Jurkat 3)")
    parser.add_argument("--recipe-override", type=json_dict, default={}, help="JSON merged into the train: block")
    parser.add_argument("--network-override", type=json_dict, default={}, help="JSON merged into the network: block")
    parser.add_argument("--augment-override", type=json_dict, default={}, help="JSON merged into the augment: block")
    parser.add_argument("--loss-override", type=json_dict, default={}, help="JSON merged into losses:, by loss name")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 trial, 2 epochs (plain BloodMNIST: 30 steps)")
    parser.add_argument("--verbose", action="store_true", help="print the trainer's per-epoch log")
    args = parser.parse_args()
    if args.quick:
        args.trials = 1
    return args


def main():
    args = parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} (../shared/data relative to the project) is absent; this benchmark needs the real data")
        return
    torch.set_num_threads(args.threads)
    device = choose_device()
    overrides = {
        "train": args.recipe_override,
        "network": args.network_override,
        "augment": args.augment_override,
        "losses": args.loss_override,
    }
    cases = [load_case(name, args.trials, overrides) for name in args.datasets]
    for case in cases:
        unknown = [loss for loss in args.losses if loss not in case.losses]
        if unknown:
            raise SystemExit(f"--losses: {unknown} not in the {case.name} preset's losses: {sorted(case.losses)}")
    print_header(args, cases, device)
    runners = {"plain": run_plain, "workflow": run_workflow}
    results = {}
    for case in cases:
        for trial in range(len(case.draws)):
            for loss in args.losses:
                for side in args.sides:
                    if side == "plain" and loss not in PLAIN_LOSSES:
                        continue
                    started = time.perf_counter()
                    result = runners[side](case, loss, trial, args, device)
                    result["seconds"] = time.perf_counter() - started
                    results.setdefault((case.name, side, loss), []).append(result)
                    print(model_line(case, side, loss, trial, result, result["seconds"]), flush=True)
    if any(loss not in PLAIN_LOSSES for loss in args.losses) and "plain" in args.sides:
        print(f"the plain recipe has {' and '.join(PLAIN_LOSSES)} only; other losses ran on the workflow side alone")
    print_summary(results, args)


if __name__ == "__main__":
    main()
