"""What the two SimCLR views should be made of, on BloodMNIST: short pretrainings that differ in one setting, each
scored by kNN (k = 5, cosine) on the pretrained embedding with no fine-tuning, 20 labelled images per class as the
support set (5 draws from the official training split), on the official test split.

Every variant pretrains the BloodMNIST preset's network (``presets/bloodmnist.yaml``) on the 13 671 official training
and validation images, labels unread, from the same seed, with ``pretrain:`` defaults except what the variant names;
the augmentation of the views is written out in full, so the numbers do not move with the schema's defaults.

    python benchmarks/pretrain_views.py                       # the variants of benchmarks/README.md, ~2 min each
    python benchmarks/pretrain_views.py --epochs 20 --only crop-no-intensity
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier

from cytodml.learn.embed import embed
from cytodml.learn.pretrain import pretrain
from cytodml.learn.trainer import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bloodmnist" / "bloodmnist.npz"
NETWORK = {"name": "small", "embedding_dim": 64, "widths": [32, 64, 128, 128], "stem_stride": 1}
#: SimCLR's views as first written: a zoom both ways, and per-channel intensity (colour) jitter
SIMCLR_LIKE = {
    "dihedral": True,
    "affine": {"p": 1.0, "degrees": 180, "shift": 0.1, "zoom": [0.8, 1.25]},
    "intensity": {"p": 0.8, "brightness": 0.2, "contrast": [0.6, 1.4], "gamma": [0.7, 1.4]},
    "blur": {"p": 0.5, "sigma": [0.1, 1.5]},
    "noise": {"p": 0.5, "sigma": 0.2},
}
CROP_IN = {"p": 1.0, "degrees": 180, "shift": 0.1, "zoom": [1.0, 1.6]}
NO_INTENSITY = {"p": 0}
VARIANTS = {
    "simclr-like": {"augment": SIMCLR_LIKE},
    "no-intensity": {"augment": {**SIMCLR_LIKE, "intensity": NO_INTENSITY}},
    "mild-intensity": {
        "augment": {
            **SIMCLR_LIKE,
            "intensity": {"p": 0.8, "brightness": 0.1, "contrast": [0.8, 1.25], "gamma": [0.8, 1.25]},
        }
    },
    "temperature-0.5": {"augment": SIMCLR_LIKE, "temperature": 0.5},
    "crop-in": {"augment": {**SIMCLR_LIKE, "affine": CROP_IN}},
    "crop-no-intensity": {"augment": {**SIMCLR_LIKE, "affine": CROP_IN, "intensity": NO_INTENSITY}},
    "crop-no-intensity-lr3x": {"augment": {**SIMCLR_LIKE, "affine": CROP_IN, "intensity": NO_INTENSITY}, "lr": 0.003},
    "crop-no-intensity-no-blur-noise": {
        "augment": {
            **SIMCLR_LIKE,
            "affine": CROP_IN,
            "intensity": NO_INTENSITY,
            "blur": {"p": 0},
            "noise": {"p": 0},
        }
    },  # fmt: skip
    "crop-2x-no-intensity": {
        "augment": {**SIMCLR_LIKE, "affine": {**CROP_IN, "zoom": [1.0, 2.0]}, "intensity": NO_INTENSITY}
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--draws", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = np.load(DATA)
    images = np.concatenate([data["train_images"], data["val_images"]]).transpose(0, 3, 1, 2).copy()
    labels = np.concatenate([data["train_labels"], data["val_labels"]]).ravel()
    test_images, test_labels = data["test_images"].transpose(0, 3, 1, 2).copy(), data["test_labels"].ravel()
    classes = [str(label) for label in range(8)]
    print(f"| variant | pretraining (s) | last NT-Xent | kNN balanced accuracy (%), {args.epochs} epochs |")
    print("|---|---|---|---|")
    for name in args.only:
        spec = {"epochs": args.epochs, "batch_size": 256, **VARIANTS[name]}
        started = time.perf_counter()
        encoder, history = pretrain(images, network=NETWORK, spec=spec, channel_names=["red", "green", "blue"],
                                    seed=1, checkpoint_dir=None, log=lambda message: None)  # fmt: skip
        seconds = time.perf_counter() - started
        # loss type none: the encoder as it is, with the embedding L2-normalised as the workflow's classifiers see it
        some = np.repeat(np.arange(8), 2)
        model, _ = train(images[:16], some, images[16:32], some, network={**NETWORK, "init": "pretrain"},
                         loss_spec={"type": "none"}, train_spec={}, class_names=classes,
                         channel_names=["red", "green", "blue"], seed=1, checkpoint_dir=None, init=encoder,
                         log=lambda message: None)  # fmt: skip
        reference, test = embed(model, images)["embedding"], embed(model, test_images)["embedding"]
        rng = np.random.default_rng(0)
        scores = []
        for _ in range(args.draws):
            support = np.concatenate([rng.choice(np.flatnonzero(labels == c), 20, replace=False) for c in range(8)])
            knn = KNeighborsClassifier(5).fit(reference[support], labels[support])
            scores.append(balanced_accuracy_score(test_labels, knn.predict(test)))
        print(
            f"| {name} | {seconds:.0f} | {history['train_loss'].iloc[-1]:.3f} | "
            f"{100 * np.mean(scores):.1f} +- {100 * np.std(scores):.1f} |  `{json.dumps(VARIANTS[name])}`",
            flush=True,
        )


if __name__ == "__main__":
    main()
