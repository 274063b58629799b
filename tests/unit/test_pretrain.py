"""Self-supervised pretraining: the NT-Xent loss, the two views, resume after a kill, what it may see, and fine-tuning
from its encoder (network.init)."""

import itertools
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import NTXentLoss, SelfSupervisedLoss

from cytodml.config import checked, pretrain_scope, pretrain_trials, validate_config
from cytodml.data.splits import make_split
from cytodml.errors import InputError
from cytodml.learn.embed import load_encoder
from cytodml.learn.inputs import held_out_hashes, pretraining_rows
from cytodml.learn.pretrain import nt_xent, prepare_pretraining, pretrain
from cytodml.learn.trainer import prepare_run, train, weights_digest

NETWORK = {"name": "small", "embedding_dim": 4, "widths": [8, 16]}
SPEC = {"epochs": 3, "batch_size": 16, "steps_per_epoch": 2}
CHANNELS = ["brightfield", "darkfield"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return rng.integers(0, 1000, size=(40, 2, 16, 16)).astype(np.uint16)


@pytest.fixture(scope="module")
def reference(images):
    return pretrain(images, network=NETWORK, spec=SPEC, channel_names=CHANNELS, seed=5, checkpoint_dir=None)


def brute_force_nt_xent(z_a, z_b, temperature):
    """Chen et al.'s eq. 1 by loops: -log(exp(s_ij / t) / sum_{k != i} exp(s_ik / t)) over the 2B ordered pairs."""
    views = [F.normalize(z, dim=0) for z in torch.cat([z_a, z_b])]
    size = len(z_a)
    total = 0.0
    for i in range(2 * size):
        j = (i + size) % (2 * size)
        numerator = torch.exp(views[i] @ views[j] / temperature)
        denominator = sum(torch.exp(views[i] @ views[k] / temperature) for k in range(2 * size) if k != i)
        total += -torch.log(numerator / denominator)
    return total / (2 * size)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_is_the_papers_loss_and_pytorch_metric_learnings(temperature):
    generator = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(2, 6, 5, generator=generator, dtype=torch.float64)
    value = nt_xent(z_a, z_b, temperature)
    assert torch.allclose(value, brute_force_nt_xent(z_a, z_b, temperature))
    library = SelfSupervisedLoss(NTXentLoss(temperature=temperature), symmetric=True)(z_a, z_b)
    assert torch.allclose(value, library, atol=1e-6)


def test_two_views_differ_and_repeat_for_a_seed(images):
    def views(seed):
        run = prepare_pretraining(images, network=NETWORK, spec=SPEC, channel_names=CHANNELS, seed=seed,
                                  checkpoint_dir=None)  # fmt: skip
        batch = run.train_loader(np.arange(8))
        return run.augment(batch), run.augment(batch)

    first, second = views(1)
    assert not torch.allclose(first, second)
    assert all(torch.equal(a, b) for a, b in zip((first, second), views(1)))
    assert not torch.allclose(first, views(2)[0])


def test_pretraining_learns_and_writes_an_encoder(reference, images, tmp_path):
    encoder, history = reference
    assert list(history.columns) == ["epoch", "train_loss", "lr", "seconds", "images_per_s"]
    assert list(history["epoch"]) == [1, 2, 3] and np.isfinite(history["train_loss"]).all()
    assert encoder["images"] == len(images) and encoder["channel_names"] == CHANNELS
    assert not any(key.startswith("projection") for key in encoder["state_dict"])  # the head is dropped
    torch.save(encoder, tmp_path / "encoder.pt")
    assert load_encoder(tmp_path / "encoder.pt")["state_dict"].keys() == encoder["state_dict"].keys()
    torch.save({"format": "cytodml-model"}, tmp_path / "model.pt")
    with pytest.raises(InputError, match=r"network.init: .*model.pt: not a cytodml encoder"):
        load_encoder(tmp_path / "model.pt")


CHILD = """
import sys, time, json
import numpy as np, torch
from cytodml.learn.pretrain import pretrain
torch.set_num_threads(1)
def log(message):
    if message.startswith("epoch 3/"):
        time.sleep(300)  # killed in epoch 3, before its checkpoint
pretrain(np.load(sys.argv[1]), network=json.loads(sys.argv[3]), spec=json.loads(sys.argv[4]),
         channel_names=["brightfield", "darkfield"], seed=5, checkpoint_dir=sys.argv[2], log=log)
"""


def test_resume_after_a_kill_gives_the_uninterrupted_weights(reference, images, tmp_path):
    np.save(tmp_path / "images.npy", images)
    checkpoint = tmp_path / "checkpoints" / "checkpoint.pt"
    spec = {**SPEC, "epochs": 4}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "images.npy"), str(checkpoint.parent),
                              json.dumps(NETWORK), json.dumps(spec)])  # fmt: skip
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        if checkpoint.exists() and torch.load(checkpoint, weights_only=True)["epoch"] == 2:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    messages = []
    resumed, history = pretrain(images, network=NETWORK, spec=spec, channel_names=CHANNELS, seed=5,
                                checkpoint_dir=checkpoint.parent, log=messages.append)  # fmt: skip
    assert any("resumed" in message and "after epoch 2" in message for message in messages)
    uninterrupted, expected = pretrain(images, network=NETWORK, spec=spec, channel_names=CHANNELS, seed=5,
                                       checkpoint_dir=None)  # fmt: skip
    for key, value in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    pd.testing.assert_frame_equal(history.drop(columns=["seconds", "images_per_s"]),
                                  expected.drop(columns=["seconds", "images_per_s"]))  # fmt: skip


def labelled(images):
    labels = np.arange(len(images)) % 2
    return {"train_images": images[:24], "train_labels": labels[:24], "val_images": images[24:],
            "val_labels": labels[24:]}  # fmt: skip


FINE_TUNING = {"class_names": ["a", "b"], "channel_names": CHANNELS, "seed": 1, "checkpoint_dir": None}


def test_fine_tuning_starts_from_the_encoder_and_only_with_init(reference, images):
    encoder = reference[0]
    data, train_spec = labelled(images), {"epochs": 1, "batch_size": 8}
    started = prepare_run(**data, network={**NETWORK, "init": "pretrain"}, loss_spec={"type": "softmax"},
                          train_spec=train_spec, init=encoder, **FINE_TUNING)  # fmt: skip
    for key, value in encoder["state_dict"].items():
        assert torch.equal(started.model.state_dict()[key], value), key
    assert started.description["normalization"] == encoder["normalization"]
    assert started.description["init"]["sha256"] == weights_digest(encoder["state_dict"])
    random = prepare_run(**data, network=NETWORK, loss_spec={"type": "softmax"}, train_spec=train_spec,
                         **FINE_TUNING)  # fmt: skip
    assert not torch.equal(random.model.state_dict()["head.2.weight"], encoder["state_dict"]["head.2.weight"])
    assert random.description["init"] is None
    # type none trains nothing: the bundle holds the encoder's weights exactly, with the classes
    bundle, history = train(**data, network={**NETWORK, "init": "pretrain"}, loss_spec={"type": "none"},
                            train_spec=train_spec, init=encoder, **FINE_TUNING)  # fmt: skip
    assert history.empty and bundle["class_names"] == ["a", "b"]
    for key, value in encoder["state_dict"].items():
        assert torch.equal(bundle["state_dict"][key], value), key
    with pytest.raises(InputError, match="type none .* needs network.init"):
        prepare_run(**data, network=NETWORK, loss_spec={"type": "none"}, train_spec=train_spec, **FINE_TUNING)
    with pytest.raises(InputError, match=r"network.init: the encoder was pretrained with network .*widths"):
        prepare_run(**data, network={**NETWORK, "widths": [8, 8], "init": "pretrain"}, loss_spec={"type": "softmax"},
                    train_spec=train_spec, init=encoder, **FINE_TUNING)  # fmt: skip


def test_a_frozen_backbone_keeps_its_weights_and_statistics(reference, images):
    encoder = reference[0]
    bundle, _ = train(**labelled(images), network={**NETWORK, "init": "pretrain"}, loss_spec={"type": "softmax"},
                      train_spec={"epochs": 1, "batch_size": 8, "backbone_lr_factor": 0, "patience": 1},
                      init=encoder, **FINE_TUNING)  # fmt: skip
    for key, value in encoder["state_dict"].items():
        changed = not torch.equal(bundle["state_dict"][key], value)
        assert changed == key.startswith("head."), key


# ---- what pretraining may see --------------------------------------------------------------------------------------


def patches_table(counts, seed=0):
    names = [name for name, count in counts.items() for _ in range(count)]
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "index": np.arange(len(names)),
            "class_name": names,
            "label": pd.factorize(pd.Series(names), sort=True)[0],
            "content_hash": [f"h{i}" for i in range(len(names))],
            "official_subset": rng.choice(["train", "val", "test"], len(names), p=[0.6, 0.1, 0.3]),
        }
    )


PROTOCOLS = {
    "full": {"protocol": "full"},
    "fewshot": {"protocol": "fewshot", "shots": 3},
    "fewshot-official": {"protocol": "fewshot", "shots": 3, "official_split": True},
    "episodic": {"protocol": "episodic"},
}


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_pretraining_never_sees_a_tested_or_open_set_image(name):
    patches = patches_table({"a": 40, "b": 30, "c": 25, "rare": 9})
    experiment = {**PROTOCOLS[name], "trials": 3, "open_set": ["c"]}
    filled = checked("experiment", {"dataset": "d", "losses": ["x"], "network": NETWORK, **experiment})
    splits = [make_split(patches, experiment, trial, 11, "d")[0] for trial in range(3)]
    scopes = {pretrain_scope(filled, trial) for trial in range(3)}
    assert scopes == ({"t0", "t1", "t2"} if name == "full" else {"all"})
    for scope in scopes:
        served = [splits[trial] for trial in pretrain_trials(filled, scope)]
        seen = set(pretraining_rows(served))
        for split in served:
            assert not seen & set(split.loc[split["subset"].isin(["test", "unknown"]), "index"])
        assert not seen & set(patches.loc[patches["class_name"] == "c", "index"])
        assert seen  # and it does see the unlabelled rest
        if name != "full":  # one fixed test side: everything else, pool included, is seen
            assert seen == set(served[0].loc[served[0]["subset"].isin(["train", "val", "pool"]), "index"])
        # an extra dump's exact copy of a held-out image is left out too
        held_out = held_out_hashes(patches, pretraining_rows(served))
        tested = served[0].loc[served[0]["subset"] == "test", "index"].iloc[0]
        assert patches.loc[tested, "content_hash"] in held_out
        assert not held_out & set(patches.loc[list(seen), "content_hash"])


def study(**experiment):
    base = {
        "dataset": "d", "protocol": "full", "losses": ["softmax"], "trials": 2,
        "network": {"name": "small", "embedding_dim": 4, "init": "pretrain"}, "pretrain": {},
    }  # fmt: skip
    return {
        "datasets": {
            "d": {
                "source": {"kind": "folder", "path": "x"},
                "channels": ["bf", "df"],
                "patch": {"mode": "resize", "size": 32},
            },
            "other": {
                "source": {"kind": "folder", "path": "y"},
                "channels": ["bf"],
                "patch": {"mode": "resize", "size": 32},
            },
        },
        "losses": {"softmax": {"type": "softmax"}, "as-is": {"type": "none"}},
        "experiments": {
            "e": {**base, **experiment},
            "plain": {**base, "network": {"name": "small", "embedding_dim": 4}, "pretrain": None},
        },
        "run": ["e", "plain"],
    }


@pytest.mark.parametrize(
    "experiment, message",
    [
        ({"pretrain": None}, r"experiments.e.network.init: 'pretrain' names the experiment's pretrain: block"),
        ({"network": {"name": "small"}}, r"experiments.e.pretrain: no loss starts from it"),
        ({"losses": ["as-is"], "network": {"name": "small"}, "pretrain": None},
         r"experiments.e.losses\[0\]: loss 'as-is' of type none .* no network.init"),
        ({"pretrain": {"extra": ["other"]}}, r"pretrain.extra\[0\]: data set 'other' lacks the experiment's channel"),
        ({"pretrain": {"extra": ["d"]}}, r"pretrain.extra\[0\]: 'd' is the experiment's own data set"),
        ({"baseline": "plain", "trials": 3}, r"experiments.e.baseline: experiment 'plain' differs in \['trials'\]"),
        ({"baseline": "gone"}, r"experiments.e.baseline: unknown experiment 'gone'"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(experiment, message):
    config = study(**experiment)
    for name in config["experiments"]:
        config["experiments"][name] = {k: v for k, v in config["experiments"][name].items() if v is not None}
    with pytest.raises(InputError, match=message):
        validate_config(config)


def test_a_matching_baseline_passes():
    config = study(baseline="plain")
    config["experiments"]["plain"].pop("pretrain")
    assert validate_config(config)["experiments"]["e"]["baseline"] == "plain"


def test_every_scope_is_a_trial_or_all():
    full = checked("experiment", {"dataset": "d", "protocol": "full", "losses": ["x"], "network": NETWORK})
    assert [pretrain_scope(full, trial) for trial in range(3)] == ["t0", "t1", "t2"]
    assert pretrain_trials(full, "t1") == [1]
    official = {**full, "official_split": True}
    assert {pretrain_scope(official, trial) for trial in range(3)} == {"all"}
    assert pretrain_trials(official, "all") == [0, 1, 2]
    assert list(itertools.islice(iter(pretrain_trials(full, "t2")), 1)) == [2]


def test_keys_given_for_the_views_are_merged_into_the_strong_defaults():
    views = checked("pretrain", {"augment": {"blur": {"p": 0}}})["augment"]
    strong = checked("pretrain", {})["augment"]
    assert views["blur"]["p"] == 0 and views["blur"]["sigma"] == strong["blur"]["sigma"]
    assert {key: views[key] for key in ("affine", "intensity", "noise")} == {
        key: strong[key] for key in ("affine", "intensity", "noise")
    }
