"""Embedding networks: the published layer tables (parameter counts, output sizes), shapes, options, errors."""

import math

import pytest
import torch

from cytodml.config import fill
from cytodml.errors import InputError
from cytodml.learn.models import build_model

# Luo et al., RSC Adv 2021, Table 1: layer, output size, parameters
LUO2021_TABLE = [
    ("conv", (64, 60, 60), 9_536),
    ("rb0", (64, 30, 30), 147_968),
    ("rb1", (128, 15, 15), 525_568),
    ("rb2", (256, 8, 8), 2_099_712),
    ("pool", (256, 2, 2), 0),
    ("dense1", (256,), 262_400),
    ("prelu", (256,), 1),
    ("dense2", (2,), 514),
]


def luo2021_layers(net):
    return {**net.blocks, **dict(net.head.named_children())}


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def on_meta(network, in_channels, image_size, normalize=False):
    """The network built on the meta device: shapes propagate without any arithmetic."""
    with torch.device("meta"):
        return build_model(network, in_channels, image_size, normalize)


def output_shapes(net, x) -> dict:
    shapes = {}
    hooks = [
        module.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
        for name, module in {**net.blocks, **dict(net.head.named_children())}.items()
    ]
    net(x)
    for hook in hooks:
        hook.remove()
    return shapes


@pytest.mark.parametrize("in_channels", [3, 1])
def test_luo2021_matches_the_published_layer_table(in_channels):
    net = build_model({"name": "luo2021"}, in_channels, 120, normalize=False)
    layers = luo2021_layers(net)
    shapes = output_shapes(net, torch.zeros(2, in_channels, 120, 120))
    print(f"\nluo2021, {in_channels} input channel(s): layer, output, parameters (ours / Luo et al. Table 1)")
    for name, paper_shape, paper_count in LUO2021_TABLE:
        ours = parameter_count(layers[name])
        print(f"  {name:7s} {str(shapes[name]):15s} {ours:>10,d} / {paper_count:>10,d}")
        assert shapes[name] == paper_shape, name
        # The table's 9 536 is a bias-free 7x7 conv on 3 channels plus batch norm; other channel counts change only it
        expected = paper_count + (in_channels - 3) * 7 * 7 * 64 if name == "conv" else paper_count
        assert ours == expected, name
    assert parameter_count(net) == sum(count for _, _, count in LUO2021_TABLE) + (in_channels - 3) * 7 * 7 * 64


def test_luo2021_is_glorot_initialised():
    net = build_model({"name": "luo2021"}, 1, 120, normalize=False)
    dense = net.head.dense1
    bound = math.sqrt(6 / (dense.in_features + dense.out_features))
    assert dense.weight.abs().max() <= bound and dense.weight.abs().max() > 0.9 * bound
    assert torch.all(dense.bias == 0)
    assert net.head.prelu.weight.item() == pytest.approx(0.25)


def test_gupta2019_layer_outputs_follow_the_published_table():
    net = on_meta({"name": "gupta2019"}, 3, 128)
    shapes = output_shapes(net, torch.empty(1, 3, 128, 128, device="meta"))
    sizes = [shapes[f"conv{n}"][1:] for n in range(1, 12)]
    assert sizes == [(s, s) for s in (128, 64, 64, 32, 32, 16, 16, 8, 8, 4, 4)]
    assert all(shapes[f"conv{n}"][0] == 128 for n in range(1, 12))
    assert [module.out_features for module in net.head if isinstance(module, torch.nn.Linear)] == [512, 256, 128, 128]


NETWORKS = [
    ({"name": "luo2021"}, 2),
    ({"name": "gupta2019"}, 128),
    ({"name": "small"}, 2),
    ({"name": "small", "embedding_dim": 64, "widths": [32, 64, 128, 128]}, 64),
]


@pytest.mark.parametrize("image_size", [120, 64, 28])
@pytest.mark.parametrize("network, dim", NETWORKS, ids=lambda v: str(v.get("name")) if isinstance(v, dict) else None)
def test_output_shape_for_every_network(network, dim, image_size):
    if network["name"] == "gupta2019" and image_size == 28:
        with pytest.raises(InputError, match="gupta2019.*at least 32 pixels"):
            build_model(network, 2, image_size, normalize=True)
        return
    net = on_meta(network, 2, image_size)
    assert net(torch.empty(3, 2, image_size, image_size, device="meta")).shape == (3, dim)
    assert fill("network", network)["embedding_dim"] == dim  # the schema's default, as training reads it


@pytest.mark.parametrize("normalize", [True, False])
def test_normalize_puts_embeddings_on_the_unit_sphere(normalize):
    net = build_model({"name": "small", "embedding_dim": 8}, 1, 28, normalize=normalize).eval()
    norms = net(torch.randn(5, 1, 28, 28)).norm(dim=1)
    assert torch.allclose(norms, torch.ones(5)) == normalize


def test_features_are_pooled_block_outputs():
    net = build_model({"name": "luo2021"}, 1, 64, normalize=False).eval()
    _, features = net.forward_features(torch.randn(2, 1, 64, 64))
    assert {name: tuple(f.shape) for name, f in features.items()} == {
        "conv": (2, 64), "rb0": (2, 64), "rb1": (2, 128), "rb2": (2, 256)
    }  # fmt: skip


def test_unknown_network_name_or_option_is_an_input_error():
    with pytest.raises(InputError, match="network.name.*'resnet9000'"):
        build_model({"name": "resnet9000"}, 1, 48, normalize=False)
    with pytest.raises(InputError, match="network.depth"):
        build_model({"name": "small", "depth": 3}, 1, 48, normalize=False)
    with pytest.raises(InputError, match="network.model"):
        build_model({"name": "timm"}, 1, 48, normalize=False)


def test_timm_backbone_with_embedding_head():
    pytest.importorskip("timm")
    net = build_model({"name": "timm", "model": "resnet18", "embedding_dim": 16, "sigmoid": True}, 1, 64, True)
    embedding = net.eval()(torch.randn(2, 1, 64, 64))
    assert embedding.shape == (2, 16) and torch.allclose(embedding.norm(dim=1), torch.ones(2))
    with pytest.raises(InputError, match="network.model"):
        build_model({"name": "timm", "model": "no_such_model"}, 1, 64, True)
