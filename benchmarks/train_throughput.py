"""Training throughput: cytodml's trainer against a plain pytorch-metric-learning loop, in one process.

Both sides run the same training step: the same network (same initial weights), batch size, data, optimiser (Adam,
lr 1e-3) and loss, pytorch-metric-learning's ``TripletMarginLoss`` with a ``TripletMarginMiner`` (semi-hard) on
L2-normalised embeddings. They differ in how the step is fed and laid out:

- ours: the trainer's own training step (:func:`cytodml.learn.trainer.prepare_run` builds what ``train`` fits, loss
  ``{type: pml}``; the step is ``Run.train_step``, batch indices from its sampler included): a batch is one fancy
  index of the uint16 array and one conversion to normalised float, in channels-last layout;
- plain: a ``torch.utils.data.Dataset`` that converts each image in ``__getitem__`` (uint16 -> normalised float
  tensor), a standard ``DataLoader`` (shuffle, ``num_workers=0``: on two cores a worker process would take a core from
  the step), the usual NCHW layout.

Single steps alternate (ours, plain, ours, ...) and each side's images/s comes from its median step time, so a change
of machine load during the run hits both sides alike. The input-path column times the two data paths alone
(normalised float batches, no network): how much of a step the data path can cost at most. Training GFLOP/s counts
the forward pass with ``torch.utils.flop_counter.FlopCounterMode`` and takes training as 3x the forward (backward =
2x), set against the float32 matrix-multiply rate (``torch.mm``, 2048^3) measured before and after the steps.

    python benchmarks/train_throughput.py --network luo2021 --sizes 120 64
"""

import argparse
import itertools
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import TripletMarginMiner
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from cytodml.learn.embed import BatchLoader
from cytodml.learn.models import build_model
from cytodml.learn.samplers import ClassBalancedBatchSampler
from cytodml.learn.trainer import channel_statistics, prepare_run

MARGIN = 0.2
LR = 1e-3
CLASSES = 4
PML_TRIPLET = {
    "type": "pml",
    "loss": "TripletMarginLoss",
    "loss_kwargs": {"margin": MARGIN},
    "miner": "TripletMarginMiner",
    "miner_kwargs": {"margin": MARGIN, "type_of_triplets": "semihard"},
    "normalize": True,
}


def synthetic_data(count: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % CLASSES
    images = rng.integers(0, 4096, size=(count, 1, size, size)) + 500 * labels[:, None, None, None]
    return images.astype(np.uint16), labels


def ours(network, images, labels, batch_size, seed):
    """A training step of the trainer itself, batch indices included: :func:`prepare_run` builds what
    :func:`~cytodml.learn.trainer.train` fits, and the step is :meth:`Run.train_step`, the unit ``train`` loops over."""
    run = prepare_run(
        images, labels, images[:batch_size], labels[:batch_size],
        network=network, loss_spec=PML_TRIPLET, train_spec={"batch_size": batch_size, "lr": LR},
        class_names=[f"class{c}" for c in range(CLASSES)], channel_names=["brightfield"],
        seed=seed, checkpoint_dir=None, log=lambda message: None,
    )  # fmt: skip
    run.model.train()
    run.loss.train()

    def batches():
        for epoch in itertools.count():
            run.sampler.set_epoch(epoch)
            yield from run.sampler

    indices = batches()
    return lambda: run.train_step(next(indices))


class PerItemDataset(Dataset):
    """The usual Dataset: one image converted to a normalised float tensor per ``__getitem__``."""

    def __init__(self, images, labels, normalization):
        self.images, self.labels = images, labels
        self.mean = torch.tensor(normalization["mean"], dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(normalization["std"], dtype=torch.float32)[:, None, None]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = torch.from_numpy(self.images[index].astype(np.float32))
        return (image - self.mean) / self.std, int(self.labels[index])


def plain(network, images, labels, batch_size, seed):
    """A training step of a textbook pytorch-metric-learning loop, fetching its batch included."""
    torch.manual_seed(seed)
    model = build_model(network, images.shape[1], images.shape[2], normalize=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.999))
    loss_fn, miner = TripletMarginLoss(margin=MARGIN), TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")
    loader = DataLoader(
        PerItemDataset(images, labels, channel_statistics(images)), batch_size=batch_size, shuffle=True,
        num_workers=0, drop_last=True, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    model.train()
    batches = itertools.chain.from_iterable(itertools.repeat(loader))

    def step():
        x, y = next(batches)
        optimizer.zero_grad()
        embeddings = model(x)
        loss = loss_fn(embeddings, y, miner(embeddings, y))
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def interleaved_rates(steps: dict, count: int, warmup: int, batch_size: int) -> dict:
    """images/s per side, from the median of ``count`` timed steps taken in turn (ours, plain, ours, ...) after
    ``warmup`` untimed ones; alternating single steps keeps a change of machine load from favouring one side."""
    times = {name: [] for name in steps}
    for number in range(warmup + count):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            if number >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: batch_size / statistics.median(values) for name, values in times.items()}


def data_path_rates(images, labels, batch_size, seed) -> tuple[float, float]:
    """images/s of the two input paths alone, no network: ours (sampler + BatchLoader), plain (Dataset + DataLoader)."""
    normalization = channel_statistics(images)
    sampler = ClassBalancedBatchSampler(labels, batch_size, 2, seed)
    loader = BatchLoader(images, normalization, torch.device("cpu"))
    started = time.perf_counter()
    for index in sampler:
        loader(index)
    ours_rate = len(sampler) * batch_size / (time.perf_counter() - started)
    plain_loader = DataLoader(PerItemDataset(images, labels, normalization), batch_size=batch_size, shuffle=True)
    started = time.perf_counter()
    count = sum(len(x) for x, _ in plain_loader)
    return ours_rate, count / (time.perf_counter() - started)


def training_flops_per_image(network, channels: int, size: int) -> float:
    model = build_model(network, channels, size, normalize=True)
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(2, channels, size, size))
    return 3 * counter.get_total_flops() / 2


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="luo2021")
    parser.add_argument("--sizes", type=int, nargs="+", default=[120, 64])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=512, help="training images (an epoch)")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    network = {"name": args.network}

    print(f"command: python {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; CUDA: {torch.cuda.is_available()}")  # fmt: skip
    print("| network | size | batch | ours images/s | plain images/s | ratio | "
          "training GFLOP/image | matmul GFLOP/s | ours GFLOP/s (% of matmul) | plain GFLOP/s (% of matmul) | "
          "input path alone, images/s ours / plain |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        images, labels = synthetic_data(args.images, size, args.seed)
        peaks = [matmul_gflops()]
        rates = interleaved_rates(
            {"ours": ours(network, images, labels, args.batch_size, args.seed),
             "plain": plain(network, images, labels, args.batch_size, args.seed)},
            args.steps, args.warmup, args.batch_size,
        )  # fmt: skip
        peaks.append(matmul_gflops())
        ours_rate, plain_rate, peak = rates["ours"], rates["plain"], statistics.mean(peaks)
        flops = training_flops_per_image(network, 1, size) / 1e9
        data_ours, data_plain = data_path_rates(images, labels, args.batch_size, args.seed)
        ours_gflops, plain_gflops = ours_rate * flops, plain_rate * flops
        print(f"| {args.network} | {size} | {args.batch_size} | {ours_rate:.1f} | {plain_rate:.1f} | "
              f"{ours_rate / plain_rate:.2f} | {flops:.3g} | {peak:.0f} | {ours_gflops:.1f} "
              f"({100 * ours_gflops / peak:.0f}%) | {plain_gflops:.1f} ({100 * plain_gflops / peak:.0f}%) | "
              f"{data_ours:.0f} / {data_plain:.0f} |", flush=True)  # fmt: skip
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
