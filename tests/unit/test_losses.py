"""The losses against brute-force loops over explicit tuples and, where formulas coincide, pytorch-metric-learning."""

import inspect
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers as pml_reducers

from cytodml.errors import InputError
from cytodml.learn.losses import (
    LOSS_TYPES,
    NPairLoss,
    all_pairs_with_one_negative_per_class,
    build_loss,
)

DTYPE = torch.float64


def on_circle(angles_deg, dtype=DTYPE) -> torch.Tensor:
    angles = torch.tensor(angles_deg, dtype=dtype) * math.pi / 180
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def random_sphere(n, d, seed, dtype=DTYPE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=generator, dtype=dtype), dim=1)


def labels_of(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def dot(a, b) -> float:
    return float((a * b).sum())


def sq_dist(a, b) -> float:
    return float(((a - b) ** 2).sum())


# a batch of 12 on the unit sphere of R^3: four classes of three images, interleaved
BATCH = random_sphere(12, 3, seed=7)
BATCH_LABELS = torch.arange(12) % 4


# ------------------------------------------------------------------------------------------------- building from config


def test_every_loss_of_the_default_config_builds_with_the_papers_settings(repo_root):
    losses = yaml.safe_load((repo_root / "config.yaml").read_text())["losses"]
    built = {name: build_loss(spec, num_classes=5, embedding_dim=2, name=name) for name, spec in losses.items()}
    expected = {  # (normalize_embeddings, samples_per_class_min)
        "softmax": (False, 0),
        "contrastive": (False, 2),
        "triplet": (True, 2),
        "npair": (False, 2),
        "constellation": (True, 2),
    }
    for name, loss in built.items():
        assert (loss.normalize_embeddings, loss.samples_per_class_min) == expected[losses[name]["type"]], name
    assert built["constellation-k3"].k == 3
    # a loss's own train: keys are the trainer's (cytodml.config.loss_train), never a parameter of the loss
    assert build_loss({"type": "constellation", "k": 5, "train": {"epochs": 80}}, num_classes=8, embedding_dim=2).k == 5
    assert built["triplet"].margin == 1.5 and built["triplet"].mining == "semihard" and built["triplet"].squared
    assert [p.shape for p in built["softmax"].parameters()] == [torch.Size([5, 2]), torch.Size([5])]
    assert not list(built["triplet"].parameters())


def test_softmax_with_balanced_batches_asks_the_sampler_for_every_class():
    from cytodml.learn.samplers import ClassBalancedBatchSampler
    from cytodml.learn.trainer import resolve_samples_per_class

    loss = build_loss({"type": "softmax", "balanced_batches": True}, num_classes=3, embedding_dim=2)
    per_class = resolve_samples_per_class({"samples_per_class": 4}, loss)
    assert (
        per_class == 4
        and resolve_samples_per_class(
            {"samples_per_class": 4}, build_loss({"type": "softmax"}, num_classes=3, embedding_dim=2)
        )
        == 0
    )
    labels = torch.cat([torch.zeros(200), torch.ones(200), torch.full((5,), 2)]).long().numpy()  # class 2 is rare
    for batch in ClassBalancedBatchSampler(labels, 12, per_class, seed=0):
        assert torch.bincount(torch.as_tensor(labels[batch]), minlength=3).min() >= 4
    with pytest.raises(InputError, match="balanced_batches"):
        build_loss({"type": "softmax", "balanced_batches": "yes"}, num_classes=3, embedding_dim=2)


def loss_of(kind: str, **parameters):
    """A loss of ``kind`` as a config entry gives it: parameters left out take the schema's defaults."""
    return build_loss({"type": kind, **parameters}, num_classes=2, embedding_dim=2)


def test_the_schema_names_every_parameter_and_the_classes_keep_no_defaults(repo_root):
    """The schema's branch per loss type lists exactly the class's parameters (and ``train``, the trainer's keys for
    that loss), and only the schema holds defaults."""
    schema = yaml.safe_load((repo_root / "schemas" / "config.schema.yaml").read_text())
    per_type = {
        branch["if"]["properties"]["type"]["const"]: branch["then"] for branch in schema["$defs"]["loss"]["allOf"]
    }
    assert set(per_type) == set(LOSS_TYPES)
    for kind, then in per_type.items():
        parameters = {
            name: p for name, p in inspect.signature(LOSS_TYPES[kind]).parameters.items()
            if name not in ("num_classes", "embedding_dim")
        }  # fmt: skip
        assert set(then["properties"]) - {"type", "train"} == set(parameters), kind
        assert all(p.default is inspect.Parameter.empty for p in parameters.values()), kind


@pytest.mark.parametrize(
    "spec, key",
    [
        ({"type": "arcface"}, "losses.bad.type"),
        ({"margin": 1.0}, "losses.bad.type"),
        ({"type": "triplet", "marign": 1.0}, "losses.bad.marign"),
        ({"type": "softmax", "margin": 1.0}, "losses.bad.margin"),
        ({"type": "triplet", "mining": "hardest"}, "losses.bad.mining"),
        ({"type": "triplet", "margin": 0}, "losses.bad.margin"),
        ({"type": "triplet", "squared": "yes"}, "losses.bad.squared"),
        ({"type": "contrastive", "similar_margin": -0.1}, "losses.bad.similar_margin"),
        ({"type": "npair", "l2_reg": "0.002"}, "losses.bad.l2_reg"),
        ({"type": "constellation", "k": 0}, "losses.bad.k"),
        ({"type": "constellation", "k": "most"}, "losses.bad.k"),
        ({"type": "constellation", "pairs": "paper"}, "losses.bad.pairs"),
        ({"type": "pml"}, "losses.bad.loss"),
        ({"type": "pml", "loss": "NoSuchLoss"}, "losses.bad.loss: 'NoSuchLoss'"),
        ({"type": "pml", "loss": "DotProductSimilarity"}, "losses.bad.loss"),
        ({"type": "pml", "loss": "TripletMarginLoss", "miner": "NoSuchMiner"}, "losses.bad.miner: 'NoSuchMiner'"),
        ({"type": "pml", "loss": "TripletMarginLoss", "loss_kwargs": {"marign": 1}}, "losses.bad.loss_kwargs"),
        ({"type": "pml", "loss": "TripletMarginLoss", "loss_kwargs": [1]}, "losses.bad.loss_kwargs"),
    ],
)
def test_bad_entries_raise_input_error_naming_the_key(spec, key):
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        build_loss(spec, num_classes=3, embedding_dim=2, name="bad")


# -------------------------------------------------------------------------------------------------------------- softmax


def test_softmax_is_cross_entropy_of_its_head():
    loss = build_loss({"type": "softmax"}, num_classes=4, embedding_dim=3).double()
    expected = F.cross_entropy(BATCH @ loss.head.weight.T + loss.head.bias, BATCH_LABELS)
    torch.testing.assert_close(loss(BATCH, BATCH_LABELS), expected)
    torch.testing.assert_close(loss.logits(BATCH), loss.head(BATCH))


# ---------------------------------------------------------------------------------------------------------- contrastive


def test_contrastive_by_hand_with_pairs_the_batch_fixes():
    # class 0 at (+-0.3, 0), class 1 at (0, 0.4): one positive pair per class-0 anchor (d = 0.6, inside s1 = 0.9,
    # no loss) and every negative pair at d = 0.5, each costing (1.0 - 0.5)^2 = 0.25; pairs: 2 positive, 3 negative
    embeddings = torch.tensor([[-0.3, 0.0], [0.3, 0.0], [0.0, 0.4]], dtype=DTYPE)
    loss = loss_of("contrastive", similar_margin=0.9, dissimilar_margin=1.0)
    torch.testing.assert_close(loss(embeddings, labels_of(0, 0, 1)), torch.tensor(3 * 0.25 / 5, dtype=DTYPE))


def test_contrastive_pushes_pulls_by_the_two_margins_by_hand():
    # positive pairs 1.2 apart pay (1.2 - 0.9)^2 = 0.09; negatives 5 apart pay nothing; 4 positive + 4 negative pairs
    embeddings = torch.tensor([[0.0, 0.0], [1.2, 0.0], [0.0, 5.0], [0.0, 5.5]], dtype=DTYPE)
    loss = loss_of("contrastive")(embeddings, labels_of(0, 0, 1, 1))
    torch.testing.assert_close(loss, torch.tensor(2 * 0.09 / 8, dtype=DTYPE))


def test_contrastive_equals_a_loop_over_its_drawn_pairs():
    embeddings = random_sphere(12, 3, seed=3) * 1.3
    loss = loss_of("contrastive", similar_margin=0.4, dissimilar_margin=1.1)
    loss.generator = torch.Generator().manual_seed(11)
    anchor, other, y = loss.pairs(BATCH_LABELS)
    loss.generator.manual_seed(11)
    value = loss(embeddings, BATCH_LABELS)

    assert len(anchor) == 24 and int(y.sum()) == 12
    terms = []
    for a, o, similar in zip(anchor.tolist(), other.tolist(), y.tolist()):
        assert a != o and (BATCH_LABELS[a] == BATCH_LABELS[o]) == bool(similar)
        d = math.sqrt(sq_dist(embeddings[a], embeddings[o]))
        terms.append(max(0.0, d - 0.4) ** 2 if similar else max(0.0, 1.1 - d) ** 2)
    assert value.item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)


def test_contrastive_pairs_are_drawn_uniformly_and_reproducibly():
    loss = loss_of("contrastive")
    seen = set()
    for seed in range(200):
        torch.manual_seed(seed)
        anchor, other, y = loss.pairs(BATCH_LABELS)
        seen.add((int(other[(anchor == 0) & (y == 1)]), int(other[(anchor == 0) & (y == 0)])))
    # anchor 0 (class 0) has positives 4, 8 and negatives of classes 1-3: 2 x 9 possible pairings, all drawn
    assert seen == {(p, n) for p in (4, 8) for n in range(12) if n % 4 != 0}
    torch.manual_seed(5)
    first = loss(BATCH, BATCH_LABELS)
    torch.manual_seed(5)
    assert loss(BATCH, BATCH_LABELS).item() == first.item()


# -------------------------------------------------------------------------------------------------------------- triplet


def brute_force_triplets(distance, labels, margin, mining):
    """Triplets (a, p, n) as the paper words the mining, by loops."""
    n = len(labels)
    kept = []
    for a in range(n):
        positives = [p for p in range(n) if p != a and labels[p] == labels[a]]
        negatives = [q for q in range(n) if labels[q] != labels[a]]
        if mining == "hard":
            if positives and negatives:
                p = max(positives, key=lambda i: distance[a][i])
                q = min(negatives, key=lambda i: distance[a][i])
                kept.append((a, p, q))
            continue
        for p, q in itertools.product(positives, negatives):
            a_p, a_n = distance[a][p], distance[a][q]
            if mining == "all" or (a_p < a_n and a_n - a_p < margin):
                kept.append((a, p, q))
    return kept


@pytest.mark.parametrize("mining", ["semihard", "hard", "all"])
@pytest.mark.parametrize("squared", [True, False])
def test_triplet_equals_a_loop_over_explicit_triplets(mining, squared):
    margin = 0.8
    loss = loss_of("triplet", margin=margin, mining=mining, squared=squared)
    distance = [[sq_dist(x, y) if squared else math.sqrt(sq_dist(x, y)) for y in BATCH] for x in BATCH]
    labels = BATCH_LABELS.tolist()
    triplets = brute_force_triplets(distance, labels, margin, mining)
    assert triplets
    mined = loss.mine(loss.distances(BATCH), BATCH_LABELS)
    assert sorted(zip(*[t.tolist() for t in mined])) == sorted(triplets)
    expected = sum(max(0.0, distance[a][p] - distance[a][n] + margin) for a, p, n in triplets) / len(triplets)
    assert loss(BATCH, BATCH_LABELS).item() == pytest.approx(expected, rel=1e-10)


def chord2(degrees) -> float:
    """Squared distance of two points on the unit circle ``degrees`` apart."""
    return 2 - 2 * math.cos(math.radians(degrees))


def test_triplet_semihard_on_the_unit_circle_by_hand():
    # anchors 0 deg and 90 deg (class 0, a_p = chord2(90) = 2); negative at 200 deg: a_n = chord2(200) = 3.88 from the
    # first, chord2(110) = 2.68 from the second; the negative at 60 deg is nearer than the positive to both (hard)
    embeddings = on_circle([0, 90, 200, 60])
    labels = labels_of(0, 0, 1, 2)
    for margin, expected in [
        (2.5, {(0, 1, 2): chord2(90) - chord2(200) + 2.5, (1, 0, 2): chord2(90) - chord2(110) + 2.5}),
        (1.5, {(1, 0, 2): chord2(90) - chord2(110) + 1.5}),  # 3.88 - 2 exceeds the margin: easy, not semi-hard
    ]:
        loss = loss_of("triplet", margin=margin)
        mined = sorted(zip(*[t.tolist() for t in loss.mine(loss.distances(embeddings), labels)]))
        assert mined == sorted(expected)
        assert loss(embeddings, labels).item() == pytest.approx(sum(expected.values()) / len(expected), rel=1e-12)


def test_triplet_semihard_mining_matches_pml_triplet_margin_miner():
    embeddings = random_sphere(24, 4, seed=1)
    labels = torch.arange(24) % 5
    distance = pml_distances.LpDistance(normalize_embeddings=False, power=2)
    for margin in (0.3, 1.5):
        miner = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=distance)
        loss = loss_of("triplet", margin=margin)
        ours = sorted(zip(*[t.tolist() for t in loss.mine(loss.distances(embeddings), labels)]))
        assert ours and ours == sorted(zip(*[t.tolist() for t in miner(embeddings, labels)]))
        reference = pml_losses.TripletMarginLoss(margin=margin, distance=distance, reducer=pml_reducers.MeanReducer())
        torch.testing.assert_close(loss(embeddings, labels), reference(embeddings, labels, miner(embeddings, labels)))


def test_triplet_hard_mining_matches_pml_batch_hard_miner():
    embeddings = random_sphere(24, 4, seed=2)
    labels = labels_of(*([0] * 10 + [1] * 8 + [2] * 5 + [3]))  # class 3 has no positive: no anchor
    miner = pml_miners.BatchHardMiner(distance=pml_distances.LpDistance(normalize_embeddings=False, power=2))
    loss = loss_of("triplet", mining="hard")
    ours = sorted(zip(*[t.tolist() for t in loss.mine(loss.distances(embeddings), labels)]))
    assert len(ours) == 23 and ours == sorted(zip(*[t.tolist() for t in miner(embeddings, labels)]))


def test_triplet_all_matches_pml_triplet_margin_loss_averaged_over_all_triplets():
    embeddings = random_sphere(16, 3, seed=4)
    labels = torch.arange(16) % 3
    distance = pml_distances.LpDistance(normalize_embeddings=False, power=2)
    reference = pml_losses.TripletMarginLoss(margin=1.5, distance=distance, reducer=pml_reducers.MeanReducer())
    torch.testing.assert_close(loss_of("triplet", mining="all")(embeddings, labels), reference(embeddings, labels))


def test_triplet_without_mined_triplets_is_a_zero_that_backpropagates():
    embeddings = on_circle([0, 180, 10, 200]).requires_grad_()
    loss = loss_of("triplet", margin=1.5)(
        embeddings, labels_of(0, 1, 0, 1)
    )  # every negative farther by more than the margin
    assert loss.item() == 0
    loss.backward()
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


# ---------------------------------------------------------------------------------------------------------------- npair


def test_npair_equals_a_loop_over_the_first_two_images_of_each_class():
    embeddings = random_sphere(12, 3, seed=5) * 1.7
    labels = labels_of(2, 0, 2, 1, 0, 2, 3, 1, 0, 1, 4, 3)  # class 4 has a single image: no pair
    pairs = {2: (0, 2), 0: (1, 4), 1: (3, 7), 3: (6, 11)}
    anchor, positive = NPairLoss.pairs(labels)
    assert sorted(zip(anchor.tolist(), positive.tolist())) == sorted(pairs.values())
    loop = 0.0
    for i, (a, p) in pairs.items():
        loop += math.log(
            1
            + sum(
                math.exp(dot(embeddings[a], embeddings[q]) - dot(embeddings[a], embeddings[p]))
                for j, (_, q) in pairs.items()
                if j != i
            )
        )
    norms = sum(float(embeddings[k].pow(2).sum()) for pair in pairs.values() for k in pair) / 8
    value = loss_of("npair", l2_reg=0.01)(embeddings, labels)
    assert value.item() == pytest.approx(loop / 4 + 0.01 * norms, rel=1e-12)


def test_npair_matches_pml_npairs_loss_without_the_regulariser():
    embeddings = random_sphere(20, 4, seed=6) * 2
    labels = torch.randperm(20, generator=torch.Generator().manual_seed(0)) % 6
    reference = pml_losses.NPairsLoss(distance=pml_distances.DotProductSimilarity(normalize_embeddings=False))
    torch.testing.assert_close(loss_of("npair", l2_reg=0)(embeddings, labels), reference(embeddings, labels))


def test_npair_regulariser_on_the_unit_circle_adds_l2_reg():
    embeddings = on_circle([0, 10, 120, 130, 240, 250])
    labels = labels_of(0, 0, 1, 1, 2, 2)
    difference = loss_of("npair", l2_reg=0.5)(embeddings, labels) - loss_of("npair", l2_reg=0)(embeddings, labels)
    assert difference.item() == pytest.approx(0.5)


# -------------------------------------------------------------------------------------------------------- constellation


def constellation_by_loop(embeddings, tuples):
    """The constellation loss over explicit (anchor, positive, negatives) tuples, one term each."""
    terms = []
    for a, p, negatives in tuples:
        s_ap = dot(embeddings[a], embeddings[p])
        terms.append(math.log(1 + sum(math.exp(dot(embeddings[a], embeddings[n]) - s_ap) for n in negatives)))
    return sum(terms) / len(terms)


def test_constellation_with_all_negatives_equals_a_loop():
    labels = BATCH_LABELS[:8]  # two images per class: each anchor's positive is fixed
    embeddings = BATCH[:8]
    tuples = [(a, (a + 4) % 8, [n for n in range(8) if labels[n] != labels[a]]) for a in range(8)]
    expected = constellation_by_loop(embeddings, tuples)
    assert loss_of("constellation", k="all")(embeddings, labels).item() == pytest.approx(expected, rel=1e-12)
    # k at least the negatives an anchor has: all of them, whatever the draw
    assert loss_of("constellation", k=6)(embeddings, labels).item() == pytest.approx(expected, rel=1e-12)


def test_constellation_with_all_negatives_equals_pml_ntxent_at_temperature_one():
    # NT-Xent averages -log(e^{s_ap} / (e^{s_ap} + sum_n e^{s_an})) = log(1 + sum_n e^{s_an - s_ap}) over positive
    # pairs; with two images per class a positive pair is an anchor, so the two means coincide
    embeddings = random_sphere(10, 4, seed=8)
    labels = labels_of(0, 1, 2, 3, 4, 4, 3, 2, 1, 0)
    reference = pml_losses.NTXentLoss(
        temperature=1, distance=pml_distances.DotProductSimilarity(normalize_embeddings=False)
    )
    torch.testing.assert_close(loss_of("constellation", k="all")(embeddings, labels), reference(embeddings, labels))


def test_constellation_draws_k_distinct_negatives_at_random():
    # anchors 0 and 1 (class 0) each have the negatives 2, 3, 4 (classes 1-3, which have no positive, so no anchor)
    embeddings = on_circle([0, 40, 120, 200, 290])
    labels = labels_of(0, 0, 1, 2, 3)
    loss = loss_of("constellation", k=2)
    choices = {
        constellation_by_loop(embeddings, [(0, 1, first), (1, 0, second)])
        for first in itertools.combinations((2, 3, 4), 2)
        for second in itertools.combinations((2, 3, 4), 2)
    }
    assert len(choices) == 9
    seen = set()
    for seed in range(200):
        loss.generator = torch.Generator().manual_seed(seed)
        value = loss(embeddings, labels).item()
        match = [c for c in choices if c == pytest.approx(value, rel=1e-12)]
        assert len(match) == 1, value
        seen.add(match[0])
    assert seen == choices


@pytest.mark.parametrize("k", [3, 5, "all"])
def test_constellation_paper_pairs_equal_a_loop_over_every_positive_pair(k):
    # class 0 (images 1, 3, 5) has the pairs (1, 3), (1, 5), (3, 5); classes 1-3 one image each, the negatives of
    # every pair whatever the draw; per anchor instead, each of 1, 3, 5 would take one random positive
    embeddings = random_sphere(6, 3, seed=11)
    labels = labels_of(2, 0, 1, 0, 3, 0)
    tuples = [(a, p, [0, 2, 4]) for a, p in ((1, 3), (1, 5), (3, 5))]
    expected = constellation_by_loop(embeddings, tuples)
    assert loss_of("constellation", k=k, pairs="all")(embeddings, labels).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constellation_paper_pairs_equal_a_loop_over_the_drawn_tuples(dtype):
    embeddings = random_sphere(20, 4, seed=12, dtype=dtype)
    labels = torch.arange(20) % 5
    loss = loss_of("constellation", k=2, pairs="all")
    for seed in range(5):
        anchor, positive, negatives = all_pairs_with_one_negative_per_class(
            labels, 2, torch.Generator().manual_seed(seed)
        )
        loss.generator = torch.Generator().manual_seed(seed)
        tuples = zip(anchor.tolist(), positive.tolist(), negatives.tolist())
        expected = constellation_by_loop(embeddings.double(), tuples)
        assert loss(embeddings, labels).item() == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-12)


def test_constellation_paper_tuples_are_every_pair_with_negatives_of_distinct_classes_drawn_uniformly():
    labels = labels_of(0, 1, 0, 2, 1, 0, 3, 3, 2, 1, 0, 3, 2, 1, 3, 2)  # four images of each class, interleaved
    expected_pairs = [
        (i, j) for i, j in itertools.combinations(range(len(labels)), 2) if labels[i] == labels[j]
    ]  # 4 classes x 4 * 3 / 2 = 24 pairs
    draws = 400
    chosen = torch.zeros(len(expected_pairs), len(labels))
    generator = torch.Generator().manual_seed(0)
    for _ in range(draws):
        anchor, positive, negatives = all_pairs_with_one_negative_per_class(labels, 2, generator)
        assert sorted(zip(anchor.tolist(), positive.tolist())) == expected_pairs
        order = [expected_pairs.index(pair) for pair in zip(anchor.tolist(), positive.tolist())]
        negative_labels = labels[negatives]
        assert negatives.shape == (24, 2)
        assert (negative_labels != labels[anchor][:, None]).all()  # never the anchor's class
        assert (negative_labels[:, 0] != negative_labels[:, 1]).all()  # K distinct classes
        chosen[torch.tensor(order)[:, None], negatives] += 1
    # each of the 3 other classes with probability 2/3, each of its 4 images then 1/4: 1/6 per negative image
    frequency = chosen / draws
    own = labels[torch.tensor(expected_pairs)[:, 0]][:, None] == labels[None, :]
    assert (frequency[own] == 0).all()
    assert frequency[~own].min() > 1 / 6 - 0.08 and frequency[~own].max() < 1 / 6 + 0.08


@pytest.mark.parametrize(
    ("k", "samples_per_class", "num_classes", "fits"),
    [
        (3, 4, 8, True),  # 4^3 = 64
        (3, 5, 8, False),  # 5^3 = 125: the constellation paper's batch of 40 with 8 classes
        (5, 2, 8, True),  # 2^5 = 32
        (7, 2, 8, False),  # 2^7 = 128
        ("all", 4, 4, True),  # K = 3 other classes: 64
        ("all", 2, 8, False),  # K = 7: 128
        (5, 9, 3, True),  # K = 2, as many as the other classes: 81
        (5, 10, 3, False),  # 100 is not under 100
    ],
)
def test_constellation_paper_pairs_keep_spc_to_the_k_under_100(k, samples_per_class, num_classes, fits):
    loss = loss_of("constellation", k=k, pairs="all")
    if fits:
        loss.check_batch(samples_per_class, num_classes)
    else:
        with pytest.raises(InputError, match=r"train\.samples_per_class: .*spc\^K = .*eq\. 5"):
            loss.check_batch(samples_per_class, num_classes)
    loss_of("constellation", k=k, pairs="per_anchor").check_batch(samples_per_class, num_classes)  # no limit there


def test_the_trainer_rejects_spc_to_the_k_of_100_or_more_before_training():
    from cytodml.learn.trainer import prepare_run

    images = torch.randint(0, 1000, (24, 1, 16, 16), generator=torch.Generator().manual_seed(0)).numpy()
    images = images.astype("uint16")
    labels = (torch.arange(24) % 4).numpy()
    kwargs = {
        "network": {"name": "small", "embedding_dim": 4, "widths": [8, 16]},
        "loss_spec": {"type": "constellation", "k": 3, "pairs": "all"},
        "class_names": ["a", "b", "c", "d"],
        "channel_names": ["brightfield"],
        "seed": 0,
        "checkpoint_dir": None,
    }
    with pytest.raises(InputError, match=r"train\.samples_per_class: 5 .*spc\^K = 125"):
        prepare_run(images, labels, images, labels, train_spec={"batch_size": 20, "samples_per_class": 5}, **kwargs)
    assert prepare_run(images, labels, images, labels, train_spec={"batch_size": 20, "samples_per_class": 4}, **kwargs)


# ----------------------------------------------------------------------------------------------------------------- pml


def test_pml_multi_similarity_with_its_miner_equals_pml_itself():
    spec = {
        "type": "pml",
        "loss": "MultiSimilarityLoss",
        "loss_kwargs": {"alpha": 2, "beta": 40},
        "miner": "MultiSimilarityMiner",
        "miner_kwargs": {"epsilon": 0.2},
    }
    loss = build_loss(spec, num_classes=4, embedding_dim=3)
    assert loss.normalize_embeddings and loss.samples_per_class_min == 2
    miner = pml_miners.MultiSimilarityMiner(epsilon=0.2)
    expected = pml_losses.MultiSimilarityLoss(alpha=2, beta=40)(BATCH, BATCH_LABELS, miner(BATCH, BATCH_LABELS))
    torch.testing.assert_close(loss(BATCH, BATCH_LABELS), expected)
    assert not build_loss({**spec, "normalize": False}, 4, 3).normalize_embeddings


def test_pml_proxy_loss_gets_the_sizes_and_exposes_its_parameters():
    loss = build_loss({"type": "pml", "loss": "ProxyAnchorLoss"}, num_classes=4, embedding_dim=3)
    assert [p.shape for p in loss.parameters()] == [torch.Size([4, 3])]


# ------------------------------------------------------------------------------------------------------- all the losses

ALL_SPECS = [
    {"type": "softmax"},
    {"type": "contrastive"},
    {"type": "triplet"},
    {"type": "triplet", "mining": "hard", "squared": False},
    {"type": "triplet", "mining": "all", "squared": False},
    {"type": "npair"},
    {"type": "constellation", "k": 3},
    {"type": "constellation", "k": "all"},
    {"type": "constellation", "k": 3, "pairs": "all"},
    {"type": "constellation", "k": "all", "pairs": "all"},
    {"type": "pml", "loss": "MultiSimilarityLoss", "miner": "MultiSimilarityMiner"},
    {"type": "pml", "loss": "ContrastiveLoss"},
]


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda spec: "-".join(str(v) for v in spec.values()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_are_finite_also_for_identical_embeddings(spec, dtype):
    torch.manual_seed(0)
    labels = torch.arange(16) % 4
    loss = build_loss(spec, num_classes=4, embedding_dim=3).to(dtype)
    spread = random_sphere(16, 3, seed=9, dtype=dtype)
    identical = F.normalize(torch.ones(16, 3, dtype=dtype), dim=1)
    pairs = torch.cat([spread[:8], spread[:8]])  # each image twice: zero distances inside the batch
    for embeddings in (spread, identical, pairs):
        embeddings = embeddings.clone().requires_grad_()
        value = loss(embeddings, labels)
        value.backward()
        assert value.dtype == dtype and value.ndim == 0 and torch.isfinite(value)
        assert torch.isfinite(embeddings.grad).all()


@pytest.mark.parametrize("spec", ALL_SPECS[2:10], ids=lambda spec: "-".join(str(v) for v in spec.values()))
def test_a_batch_without_positives_gives_a_zero_that_backpropagates(spec):
    embeddings = random_sphere(4, 3, seed=10).requires_grad_()
    value = build_loss(spec, num_classes=4, embedding_dim=3)(embeddings, labels_of(0, 1, 2, 3))
    value.backward()
    assert value.item() == 0 and torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_contrastive_on_a_single_image_gives_a_zero_that_backpropagates():
    embeddings = random_sphere(1, 3, seed=10).requires_grad_()
    value = loss_of("contrastive")(embeddings, labels_of(0))
    value.backward()
    assert value.item() == 0 and torch.equal(embeddings.grad, torch.zeros_like(embeddings))
