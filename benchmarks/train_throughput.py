"""Training throughput: cytodml's trainer against a plain pytorch-metric-learning loop, in one process, on the CPU or
on CUDA (whichever :func:`cytodml.learn.embed.choose_device` picks: the trainer's own rule).

Both sides run the same training step: the same network (same initial weights), batch size, data, optimiser (Adam,
lr 1e-3) and loss, pytorch-metric-learning's ``TripletMarginLoss`` with a ``TripletMarginMiner`` (semi-hard) on
L2-normalised embeddings. They differ in how the step is fed, laid out and computed:

- ours: the trainer's own training step (:func:`cytodml.learn.trainer.prepare_run` builds what ``train`` fits, loss
  ``{type: pml}``; the step is ``Run.train_step``, batch indices from its sampler included): a batch is one fancy
  index of the uint16 array (on a GPU the whole array lives on the device) and one conversion to normalised float, in
  channels-last layout, under bfloat16 autocast on a GPU that has it;
- plain: a ``torch.utils.data.Dataset`` that converts each image in ``__getitem__`` (uint16 -> normalised float
  tensor), a standard ``DataLoader`` (shuffle; ``--workers`` worker processes, 0 by default: on two cores a worker
  process would take a core from the step; pinned memory and non-blocking copies on a GPU), float32, the usual NCHW.

Blocks of ``--block`` steps alternate (ours, plain, ours, ...) and each side's images/s comes from its median block
time, so a change of machine load during the run hits both sides alike. The device is synchronised at block ends
only: a step waits for the device only where the step itself asks (ours reads its loss to stop a diverged run).
The input-path columns time the two data paths alone (normalised float batches on the device, no network): how much
of a step the data path can cost at most. Training FLOPs count the forward pass with
``torch.utils.flop_counter.FlopCounterMode`` and take training as 3x the forward (backward = 2x), set against a matrix
-multiply peak measured in the same run, before and after the steps, in ours' precision (bfloat16 8192^3 on a GPU,
float32 2048^3 on the CPU). ``--profile`` prints where ours' step spends its time (``torch.profiler``).

    python benchmarks/train_throughput.py --network luo2021 --sizes 120 64
    python benchmarks/train_throughput.py --network timm:resnet50 --sizes 224 --batch-size 256 --workers 8 --block 5
"""

import argparse
import csv
import itertools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import TripletMarginMiner
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from cytodml.learn.embed import BatchLoader, autocast, choose_device, describe_device
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
COLUMNS = [
    "network", "size", "batch", "device", "precision", "workers", "ours_images_per_s", "plain_images_per_s", "ratio",
    "training_gflop_per_image", "peak_gflop_per_s", "peak_dtype", "ours_share_of_peak", "plain_share_of_peak",
    "input_ours_images_per_s", "input_plain_images_per_s",
]  # fmt: skip


def parse_network(text: str) -> dict:
    """A ``network:`` block from the command line: a network name, or ``timm:<model>`` for a timm backbone."""
    name, _, model = text.partition(":")
    return {"name": name, "model": model} if model else {"name": name}


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


def per_item_loader(images, labels, batch_size, seed, device, workers) -> DataLoader:
    """The textbook input path: per-item Dataset, shuffling DataLoader with ``workers`` processes kept between epochs,
    pinned host memory where the batches go to a GPU."""
    return DataLoader(
        PerItemDataset(images, labels, channel_statistics(images)), batch_size=batch_size, shuffle=True,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda", drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip


def plain(network, images, labels, batch_size, seed, device, workers):
    """A training step of a textbook pytorch-metric-learning loop (float32, NCHW), fetching its batch included; it
    never waits for the device itself, as such a loop that logs every few hundred steps would not."""
    torch.manual_seed(seed)
    model = build_model(network, images.shape[1], images.shape[2], normalize=True).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.999))
    loss_fn, miner = TripletMarginLoss(margin=MARGIN), TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")
    loader = per_item_loader(images, labels, batch_size, seed, device, workers)
    model.train()
    batches = itertools.chain.from_iterable(itertools.repeat(loader))

    def step():
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad()
        embeddings = model(x)
        loss = loss_fn(embeddings, y, miner(embeddings, y))
        loss.backward()
        optimizer.step()

    return step


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_rates(steps: dict, device, rounds: int, block: int, warmup: int, batch_size: int) -> dict:
    """images/s per side, from the median of ``rounds`` timed blocks of ``block`` steps taken in turn (ours, plain,
    ours, ...) after ``warmup`` untimed steps per side; alternating keeps a change of machine load from favouring one
    side, and the device is synchronised at block ends only."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            synchronize(device)
            started = time.perf_counter()
            for _ in range(block):
                step()
            synchronize(device)
            times[name].append(time.perf_counter() - started)
    return {name: block * batch_size / statistics.median(values) for name, values in times.items()}


def data_path_rates(images, labels, batch_size, seed, device, workers) -> tuple[float, float]:
    """images/s of the two input paths alone, no network, batches delivered on ``device``: ours (sampler +
    BatchLoader), plain (Dataset + DataLoader + copy); the second of two epochs each, so that worker processes and
    kernels have started."""
    normalization = channel_statistics(images)
    sampler = ClassBalancedBatchSampler(labels, batch_size, 2, seed)
    loader = BatchLoader(images, normalization, device)
    plain_loader = per_item_loader(images, labels, batch_size, seed, device, workers)

    def ours_epoch():
        return sum(len(loader(index)) for index in sampler)

    def plain_epoch():
        return sum(len(x.to(device, non_blocking=True)) for x, _ in plain_loader)

    rates = []
    for epoch in (ours_epoch, plain_epoch):
        epoch()
        synchronize(device)
        started = time.perf_counter()
        count = epoch()
        synchronize(device)
        rates.append(count / (time.perf_counter() - started))
    return rates[0], rates[1]


def training_flops_per_image(network, channels: int, size: int) -> float:
    model = build_model(network, channels, size, normalize=True)
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(2, channels, size, size))
    return 3 * counter.get_total_flops() / 2


def peak_dtype(device: torch.device) -> torch.dtype:
    """The precision ours computes in on ``device`` (the trainer's autocast rule): its matrix-multiply peak is the
    ceiling both sides are set against."""
    return torch.bfloat16 if isinstance(autocast(device), torch.autocast) else torch.float32


def matmul_gflops(device: torch.device, dtype: torch.dtype) -> float:
    """Median rate of an n^3 matrix product in ``dtype`` after warm-ups, on random data (zeros run faster): on a GPU
    n = 8192 (large enough to fill one), 3 warm-ups and 10 timed; on the CPU n = 2048, 1 and 3 (a second each)."""
    n, warmups, repeats = (8192, 3, 10) if device.type == "cuda" else (2048, 1, 3)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(warmups):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return 2 * n**3 / statistics.median(times) / 1e9


def print_profile(step, device: torch.device, steps: int = 5) -> None:
    """Where ours' step spends its time: the operators of ``steps`` steps, by their own time on the device."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(steps):
            step()
        synchronize(device)
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"profile of {steps} steps (ours), by {sort_by}:")
    print(profile.key_averages().table(sort_by=sort_by, row_limit=15), flush=True)


def measure(args, network: dict, size: int, device: torch.device) -> dict:
    """One row of the table: both sides' rates at one image size, the peak around them and the input paths."""
    images, labels = synthetic_data(args.images, size, args.seed)
    dtype = peak_dtype(device)
    peaks = [matmul_gflops(device, dtype)]
    ours_step = ours(network, images, labels, args.batch_size, args.seed)
    steps = {
        "ours": ours_step,
        "plain": plain(network, images, labels, args.batch_size, args.seed, device, args.workers),
    }
    rates = interleaved_rates(steps, device, args.steps // args.block, args.block, args.warmup, args.batch_size)
    peaks.append(matmul_gflops(device, dtype))
    if args.profile:
        print(f"{args.network} at {size} px: ", end="")
        print_profile(ours_step, device)
    peak = statistics.mean(peaks)
    flops = training_flops_per_image(network, 1, size) / 1e9
    input_ours, input_plain = data_path_rates(images, labels, args.batch_size, args.seed, device, args.workers)
    return {
        "network": args.network, "size": size, "batch": args.batch_size, "device": device.type,
        "precision": "bfloat16 autocast" if dtype == torch.bfloat16 else "float32", "workers": args.workers,
        "ours_images_per_s": rates["ours"], "plain_images_per_s": rates["plain"],
        "ratio": rates["ours"] / rates["plain"],
        "training_gflop_per_image": flops, "peak_gflop_per_s": peak, "peak_dtype": str(dtype).removeprefix("torch."),
        "ours_share_of_peak": rates["ours"] * flops / peak, "plain_share_of_peak": rates["plain"] * flops / peak,
        "input_ours_images_per_s": input_ours, "input_plain_images_per_s": input_plain,
    }  # fmt: skip


def markdown_row(row: dict) -> str:
    return (
        f"| {row['network']} | {row['size']} | {row['batch']} | {row['ours_images_per_s']:.1f} | "
        f"{row['plain_images_per_s']:.1f} | {row['ratio']:.2f} | {row['training_gflop_per_image']:.3g} | "
        f"{row['peak_gflop_per_s']:.0f} | {100 * row['ours_share_of_peak']:.0f}% | "
        f"{100 * row['plain_share_of_peak']:.0f}% | "
        f"{row['input_ours_images_per_s']:.0f} / {row['input_plain_images_per_s']:.0f} |"
    )


def append_csv(path: Path, row: dict) -> None:
    """Add ``row`` to the CSV at ``path``, writing the header first where the file is new."""
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="luo2021", help="a network name, or timm:<model> (random weights)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[120, 64])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=512, help="training images (an epoch)")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per side")
    parser.add_argument("--block", type=int, default=1, help="steps per timed block (a divisor of --steps)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes of the plain loop")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print where ours' step spends its time")
    parser.add_argument("--csv", type=Path, help="also append each row to this CSV file")
    args = parser.parse_args()
    if args.block < 1 or args.steps % args.block:
        parser.error(f"--block {args.block} must be a positive divisor of --steps {args.steps}")
    torch.set_num_threads(args.threads)
    network = parse_network(args.network)
    device = choose_device()

    print(f"command: python {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; device: {describe_device(device)}", flush=True)  # fmt: skip
    rows = []
    for size in args.sizes:
        rows.append(measure(args, network, size, device))
        if args.csv:
            append_csv(args.csv, rows[-1])
    # the table last, after any profiles, so that it is whole where only the end of the output is read
    print(f"precision of ours: {rows[0]['precision']}; plain: float32, {args.workers} DataLoader worker(s)")
    print("| network | size | batch | ours images/s | plain images/s | ratio | training GFLOP/image | "
          f"peak {rows[0]['peak_dtype']} GFLOP/s | ours % of peak | plain % of peak | "
          "input path alone, images/s ours / plain |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(markdown_row(row))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
