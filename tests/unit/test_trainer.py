"""The trainer and embedding extraction: determinism, resume after a kill, divergence, bundle format, embed outputs."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import cytodml.learn.trainer as trainer
from cytodml.errors import InputError
from cytodml.learn.embed import embed, embedding_table, load_model
from cytodml.learn.monitor import precision_at_1
from cytodml.learn.trainer import TrainingDiverged, channel_statistics, train

CLASSES = ["bead", "cryptosporidium", "giardia"]
TIMING = ["seconds", "images_per_s"]
KWARGS = {
    "network": {"name": "small", "embedding_dim": 4, "widths": [8, 16]},
    "loss_spec": {"type": "contrastive"},  # draws random pairs: the resume must restore torch's random state
    # online augmentation on: the resume test proves its random draws are restored too
    "train_spec": {
        "epochs": 5,
        "batch_size": 24,
        "lr": 0.01,
        "lr_decay": 0.9,
        "patience": 2,
        "samples_per_class": 4,
        "augment": {"affine": {"p": 0.5}, "noise": {"p": 0.5}},
    },
    "class_names": CLASSES,
    "channel_names": ["brightfield", "darkfield"],
    "seed": 7,
}


def make_images(count, seed):
    """Two-channel uint16 images whose brightness and a bright square tell the class, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % 3)
    images = rng.integers(0, 800, size=(count, 2, 16, 16)) + 40 * labels[:, None, None, None]
    for image, label in zip(images, labels):
        image[1, 4 * label : 4 * label + 4, 4:8] += 150
    return images.astype(np.uint16), labels


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, here and in the killed child alike: tiny batches gain nothing from two, and on cores
    shared with other jobs two spinning threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    train_images, train_labels = make_images(96, 0)
    val_images, val_labels = make_images(30, 1)
    return {"xt": train_images, "yt": train_labels, "xv": val_images, "yv": val_labels}


def run_train(data, checkpoint_dir=None, log=lambda message: None, **overrides):
    kwargs = {**KWARGS, **overrides}
    return train(data["xt"], data["yt"], data["xv"], data["yv"], checkpoint_dir=checkpoint_dir, log=log, **kwargs)


@pytest.fixture(scope="module")
def reference(data):
    return run_train(data)


def assert_same_weights(first: dict, second: dict):
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def assert_same_history(first: pd.DataFrame, second: pd.DataFrame):
    pd.testing.assert_frame_equal(first.drop(columns=TIMING), second.drop(columns=TIMING))


def test_same_seed_gives_identical_weights_and_history(data, reference):
    bundle, history = run_train(data)
    assert_same_weights(bundle["state_dict"], reference[0]["state_dict"])
    assert_same_history(history, reference[1])
    assert list(history.columns) == [
        "epoch", "train_loss", "val_loss", "val_precision_at_1", "val_balanced_accuracy", "monitor_standard_error",
        "lr", "seconds", "images_per_s",
    ]  # fmt: skip
    assert np.allclose(history["lr"], 0.01 * 0.9 ** np.arange(len(history)))


def last_best(values, sign=1) -> int:
    """The 1-based epoch the trainer keeps: the best value, the later epoch on a tie."""
    values = sign * np.asarray(values)
    return int(np.flatnonzero(values == values.max())[-1]) + 1


def test_best_epoch_is_kept_and_early_stopping_counts_patience(data, reference):
    bundle, history = reference
    values, errors = history["val_balanced_accuracy"].to_numpy(), history["monitor_standard_error"].to_numpy()
    top = np.maximum.accumulate(values)
    top_error = errors[[int(np.flatnonzero(values[: e + 1] == top[e])[0]) for e in range(len(values))]]
    within = np.flatnonzero(values >= top - top_error - 1e-12)  # the one-standard-error rule, epoch by epoch
    assert bundle["best_epoch"] == within[-1] + 1
    spec = {**KWARGS["train_spec"], "epochs": 8, "patience": 1, "monitor": "val_precision_at_1", "selection": "best"}
    bundle, history = run_train(data, train_spec=spec)
    precision = history["val_precision_at_1"].to_numpy()
    assert bundle["best_epoch"] == last_best(precision)
    assert len(history) == 8 or precision[-1] <= precision[:-1].max()  # stopped: no strict gain in the last epoch


SCRIPTED = [  # val_loss best at epoch 2, retrieval best (a tie) at epochs 3 and 5, a gain of 0.01 at 5
    {"val_loss": 0.9, "val_precision_at_1": 0.5, "val_balanced_accuracy": 0.50},
    {"val_loss": 0.4, "val_precision_at_1": 0.6, "val_balanced_accuracy": 0.60},
    {"val_loss": 0.7, "val_precision_at_1": 0.7, "val_balanced_accuracy": 0.70},
    {"val_loss": 0.8, "val_precision_at_1": 0.6, "val_balanced_accuracy": 0.65},
    {"val_loss": 0.9, "val_precision_at_1": 0.7, "val_balanced_accuracy": 0.71},
    {"val_loss": 1.0, "val_precision_at_1": 0.6, "val_balanced_accuracy": 0.60},
]
NOISY = [  # a lucky peak at epoch 2 whose standard error covers epochs 3 and 4
    {"val_loss": 1.0, "val_precision_at_1": 0.5, "val_balanced_accuracy": 0.50, "monitor_standard_error": 0.08},
    {"val_loss": 1.0, "val_precision_at_1": 0.5, "val_balanced_accuracy": 0.70, "monitor_standard_error": 0.08},
    {"val_loss": 1.0, "val_precision_at_1": 0.5, "val_balanced_accuracy": 0.65, "monitor_standard_error": 0.08},
    {"val_loss": 1.0, "val_precision_at_1": 0.5, "val_balanced_accuracy": 0.66, "monitor_standard_error": 0.08},
]


@pytest.mark.parametrize(
    ("monitor", "min_delta", "kept", "epochs_run"),
    [
        ("val_balanced_accuracy", 0, 5, 6),  # the retrieval score, not the loss, picks the epoch
        ("val_loss", 0, 2, 4),  # selectable still; patience 2 stops it two epochs after its best
        ("val_precision_at_1", 0, 5, 5),  # a tie goes to the later epoch, but only a gain restarts patience
        ("val_balanced_accuracy", 0.02, 5, 5),  # kept at a small gain, yet patience ran on: stopped after 5
        ("val_loss", 0.35, 3, 4),  # epoch 3 is within min_delta of the best (epoch 2): the later epoch is kept
    ],
)
def test_monitor_picks_the_epoch_by_its_score_ties_and_min_delta(data, monkeypatch, monitor, min_delta, kept,
                                                                  epochs_run):  # fmt: skip
    scores = iter([{**row, "monitor_standard_error": 0.0} for row in SCRIPTED])
    monkeypatch.setattr(trainer.Run, "validate", lambda self: next(scores))
    spec = {**KWARGS["train_spec"], "epochs": 6, "patience": 2, "monitor": monitor, "min_delta": min_delta}
    bundle, history = run_train(data, train_spec=spec)
    assert (bundle["best_epoch"], len(history)) == (kept, epochs_run)


@pytest.mark.parametrize(("selection", "kept"), [("one_standard_error", 4), ("best", 2)])
def test_one_standard_error_rule_keeps_the_latest_epoch_within_the_best_scores_error(data, monkeypatch, selection,
                                                                                      kept):  # fmt: skip
    scores = iter(NOISY)
    monkeypatch.setattr(trainer.Run, "validate", lambda self: next(scores))
    spec = {**KWARGS["train_spec"], "epochs": 4, "patience": 4, "selection": selection}
    bundle, history = run_train(data, train_spec=spec)
    assert bundle["best_epoch"] == kept and len(history) == 4


def test_online_augmentation_changes_every_draw_and_is_off_on_request(data):
    run = trainer.prepare_run(data["xt"], data["yt"], data["xv"], data["yv"], checkpoint_dir=None, **KWARGS)
    batch = run.train_loader(list(range(24)))
    first, second = run.augment(batch), run.augment(batch)
    assert first.shape == batch.shape and not torch.equal(first, second) and not torch.equal(first, batch)
    off = {**KWARGS["train_spec"], "augment": {"dihedral": False}}
    run = trainer.prepare_run(data["xt"], data["yt"], data["xv"], data["yv"], checkpoint_dir=None,
                              **{**KWARGS, "train_spec": off})  # fmt: skip
    assert not run.augment.active


def test_steps_per_epoch_sets_the_budget_and_fewshot_selection_sees_at_most_its_shots(data):
    spec = {**KWARGS["train_spec"], "steps_per_epoch": 7, "monitor_per_class": 4}
    run = trainer.prepare_run(data["xt"], data["yt"], data["xv"], data["yv"], checkpoint_dir=None,
                              **{**KWARGS, "train_spec": spec})  # fmt: skip
    assert len(run.sampler) == 7 and len(list(run.sampler)) == 7
    assert torch.bincount(run.val_labels).tolist() == [4, 4, 4]


def test_other_seed_gives_other_weights(data, reference):
    bundle, _ = run_train(data, seed=8, train_spec={**KWARGS["train_spec"], "epochs": 1})
    assert not torch.equal(bundle["state_dict"]["head.2.weight"], reference[0]["state_dict"]["head.2.weight"])


CHILD = """
import json, sys, time
import numpy as np
import torch
from cytodml.learn.trainer import train

torch.set_num_threads(1)

data = np.load(sys.argv[1])
kwargs = json.loads(sys.argv[3])

def log(message):
    if message.startswith("epoch 3/"):
        time.sleep(300)  # the parent kills us in epoch 3; never let its checkpoint be written

train(data["xt"], data["yt"], data["xv"], data["yv"], checkpoint_dir=sys.argv[2], log=log, **kwargs)
"""


def checkpoint_epoch(path) -> int:
    if not path.exists():
        return 0
    return torch.load(path, weights_only=True)["epoch"]


def kill_in_epoch_3(data, tmp_path, kwargs, kill, timeout) -> Path:
    """Train in a child process, kill it with ``kill`` once its epoch-2 checkpoint is written (the child sleeps in
    epoch 3) and return the checkpoint's path."""
    np.savez(tmp_path / "data.npz", **data)
    checkpoint = tmp_path / "checkpoints" / "checkpoint.pt"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "data.npz"), str(checkpoint.parent), json.dumps(kwargs)]
    )
    deadline = time.monotonic() + timeout
    while checkpoint_epoch(checkpoint) < 2 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.poll() is None, "the training process ended before it could be killed"
    child.send_signal(kill)
    assert child.wait(timeout=30) == -kill
    assert checkpoint_epoch(checkpoint) == 2
    return checkpoint


@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_resume_after_a_kill_gives_the_uninterrupted_weights(data, reference, tmp_path, kill):
    checkpoint = kill_in_epoch_3(data, tmp_path, KWARGS, kill, timeout=60)

    messages = []
    bundle, history = run_train(data, checkpoint_dir=checkpoint.parent, log=messages.append)
    assert any("resumed" in message and "after epoch 2" in message for message in messages)
    assert_same_weights(bundle["state_dict"], reference[0]["state_dict"])
    assert_same_history(history, reference[1])


def test_checkpoint_of_another_configuration_is_not_resumed(data, tmp_path):
    run_train(data, checkpoint_dir=tmp_path, train_spec={**KWARGS["train_spec"], "epochs": 1})
    messages = []
    _, history = run_train(data, checkpoint_dir=tmp_path, seed=9, log=messages.append,
                           train_spec={**KWARGS["train_spec"], "epochs": 1})  # fmt: skip
    assert any("another configuration" in message for message in messages)
    assert len(history) == 1


class NaNAfter(nn.Module):
    """Wraps a loss; its ``after``-th training call (gradients on) returns NaN."""

    def __init__(self, inner, after):
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0
        self.normalize_embeddings = inner.normalize_embeddings
        self.samples_per_class_min = inner.samples_per_class_min
        self.check_batch = inner.check_batch
        self.trains = inner.trains

    def forward(self, embeddings, labels):
        value = self.inner(embeddings, labels)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.after:
                return value * math.nan
        return value


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    build_loss = trainer.build_loss
    batches_per_epoch = math.ceil(96 / 24)
    monkeypatch.setattr(
        trainer, "build_loss", lambda *args: NaNAfter(build_loss(*args), after=2 * batches_per_epoch + 2)
    )
    with pytest.raises(TrainingDiverged, match=r"epoch 3, batch 2 \(the checkpoint of epoch 2 is kept\)"):
        run_train(data, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]["epoch"]) == 2
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())


def test_checkpoint_and_bundle_load_with_weights_only(data, reference, tmp_path):
    run_train(data, checkpoint_dir=tmp_path, train_spec={**KWARGS["train_spec"], "epochs": 1})
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert {"model", "loss", "optimizer", "scheduler", "rng", "best", "history", "epoch", "bad_epochs"} <= set(state)
    bundle = reference[0]
    torch.save(bundle, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=True)
    assert loaded["format"] == "cytodml-model" and loaded["version"] == 1
    assert loaded["class_names"] == CLASSES and loaded["dtype"] == "uint16"
    assert (loaded["in_channels"], loaded["image_size"], loaded["embedding_dim"]) == (2, 16, 4)
    assert loaded["normalization"] == channel_statistics(data["xt"])
    model, _, _ = load_model(tmp_path / "model.pt")
    assert_same_weights(model.state_dict(), bundle["state_dict"])


def test_load_model_rejects_a_foreign_file(tmp_path):
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="foreign.pt: not a cytodml model"):
        load_model(tmp_path / "foreign.pt")
    (tmp_path / "notes.pt").write_text("not a tensor file")
    with pytest.raises(InputError, match="notes.pt: not a cytodml model"):
        load_model(tmp_path / "notes.pt")


def test_embed_gives_probabilities_for_softmax_only(data, reference):
    softmax, _ = run_train(data, loss_spec={"type": "softmax"}, train_spec={**KWARGS["train_spec"], "epochs": 1})
    out = embed(softmax, data["xv"], batch_size=7, blocks=True)
    assert out["embedding"].shape == (30, 4) and out["embedding"].dtype == np.float32
    assert out["probabilities"].shape == (30, 3) and np.allclose(out["probabilities"].sum(axis=1), 1, atol=1e-6)
    assert {name: f.shape for name, f in out["blocks"].items()} == {"block1": (30, 8), "block2": (30, 16)}
    metric = embed(load_model(reference[0]), data["xv"], batch_size=7)
    assert metric["probabilities"] is None and metric["blocks"] is None
    assert np.allclose(metric["embedding"], embed(reference[0], data["xv"], batch_size=30)["embedding"], atol=1e-5)


def test_embedding_table_rows_follow_the_split(data, reference):
    patches = np.concatenate([data["xv"], data["xv"][:, ::-1]], axis=1)  # four channels; the model reads 0 and 1
    split = pd.DataFrame({"index": [5, 2, 9, 0], "subset": ["test", "train", "unknown", "pool"],
                          "class_name": ["b", "a", "x", "a"], "label": [1, 0, 3, 0]})  # fmt: skip
    table = embedding_table(load_model(reference[0]), patches, split, channels=[0, 1])
    assert table["index"].tolist() == [2, 5, 9] and table["subset"].tolist() == ["train", "test", "unknown"]
    expected = embed(reference[0], data["xv"][[2, 5, 9]])["embedding"]
    assert np.allclose(np.stack(table["embedding"]), expected, atol=1e-5)
    assert "probability" not in table


def test_embed_rejects_images_unlike_the_training_ones(data, reference):
    with pytest.raises(InputError, match="dtype uint8.*uint16"):
        embed(reference[0], data["xv"].astype(np.uint8))
    with pytest.raises(InputError, match="shape"):
        embed(reference[0], data["xv"][:, :1])


def test_bad_train_input_names_what_is_wrong(data):
    with pytest.raises(InputError, match="train.nesterov"):
        run_train(data, train_spec={"nesterov": True})
    with pytest.raises(InputError, match="train images: dtype float32"):
        train(data["xt"].astype(np.float32), data["yt"], data["xv"], data["yv"], checkpoint_dir=None, **KWARGS)
    with pytest.raises(InputError, match="val labels: values outside"):
        train(data["xt"], data["yt"], data["xv"], data["yv"] + 3, checkpoint_dir=None, **KWARGS)
    with pytest.raises(InputError, match="train.samples_per_class"):
        run_train(data, loss_spec={"type": "triplet"}, train_spec={"samples_per_class": 1})


def test_channel_statistics_and_precision_at_1():
    images = np.array([[[[0, 2]], [[5, 5]]], [[[4, 6]], [[5, 5]]]], dtype=np.uint16)  # 2 images, 2 channels, 1x2
    stats = channel_statistics(images, chunk=1)
    assert stats["mean"] == [3.0, 5.0] and stats["std"] == [pytest.approx(math.sqrt(5)), 1.0]
    embeddings = torch.tensor([[0.0], [0.1], [1.0], [1.2], [5.0]])
    assert precision_at_1(embeddings, torch.tensor([0, 0, 1, 1, 0]), chunk=2) == pytest.approx(4 / 5)
