"""Self-supervised pretraining throughput: the NT-Xent loss written as one cross-entropy (``cytodml.learn.pretrain``)
against pytorch-metric-learning's ``SelfSupervisedLoss(NTXentLoss())``, and images per second of whole pretraining
steps (two views, forward, backward, update) for the networks of the real-data presets, in one run.

The loss columns time forward and backward of each implementation on the same random projections of ``2B`` views
(the median of ``--repeats``), with the largest absolute difference of their values; the step columns time
``PretrainRun.train_step`` (views drawn by the online augmentation with the ``pretrain.augment`` defaults) on random
images of each preset's shape, after one warm-up step.

    python benchmarks/pretrain_throughput.py
    python benchmarks/pretrain_throughput.py --batch-sizes 64 256 --steps 5
"""

import argparse
import statistics
import time

import numpy as np
import torch
from pytorch_metric_learning.losses import NTXentLoss, SelfSupervisedLoss

from cytodml.learn.pretrain import nt_xent, prepare_pretraining

#: (name, network, channels, patch size): the networks the pretrained presets use
PRESETS = [
    ("bloodmnist", {"name": "small", "embedding_dim": 64, "widths": [32, 64, 128, 128], "stem_stride": 1}, 3, 28),
    ("jurkat", {"name": "small", "embedding_dim": 32, "widths": [16, 32, 64, 128], "stem_stride": 1}, 2, 40),
]


def time_loss(loss, size: int, repeats: int) -> tuple[float, float]:
    """Median seconds of forward + backward of ``loss(z_a, z_b)`` on ``size`` pairs of 64-d projections, and its
    value."""
    generator = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(2, size, 64, generator=generator)
    seconds, value = [], None
    for _ in range(repeats):
        a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
        started = time.perf_counter()
        value = loss(a, b)
        value.backward()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), float(value.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed pretraining steps per preset")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")

    library = SelfSupervisedLoss(NTXentLoss(temperature=0.2), symmetric=True)
    print("| images B (2B views) | ours: s per loss step | pytorch-metric-learning: s | ratio | abs. difference |")
    print("|---|---|---|---|---|")
    for size in args.batch_sizes:
        ours, ours_value = time_loss(lambda a, b: nt_xent(a, b, 0.2), size, args.repeats)
        theirs, theirs_value = time_loss(library, size, args.repeats)
        print(f"| {size} | {ours:.4f} | {theirs:.3f} | {theirs / ours:.0f}x | {abs(ours_value - theirs_value):.1e} |")

    print("\n| preset network | images | batch | s per step | images/s (each in two views) |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name, network, channels, size in PRESETS:
        for batch in args.batch_sizes:
            images = rng.integers(0, 255, size=(max(batch, 512), channels, size, size)).astype(np.uint8)
            run = prepare_pretraining(images, network=network, spec={"batch_size": batch}, channel_names=[
                f"c{i}" for i in range(channels)], seed=0, checkpoint_dir=None)  # fmt: skip
            run.set_train_mode()
            index = np.arange(batch)
            run.train_step(index)
            started = time.perf_counter()
            for _ in range(args.steps):
                run.train_step(index)
            seconds = (time.perf_counter() - started) / args.steps
            print(f"| {name} | {channels} x {size} x {size} | {batch} | {seconds:.3f} | {batch / seconds:.0f} |")


if __name__ == "__main__":
    main()
