"""The losses of the four source studies, and any pytorch-metric-learning loss, built from a config entry.

Every loss is a ``torch.nn.Module`` called as ``loss(embeddings, labels)`` on one batch (``embeddings`` B x D,
``labels`` B integer class labels) and returns a scalar. Two attributes tell the trainer what the loss needs:

- ``normalize_embeddings``: the network L2-normalises its output onto the unit sphere (the model does it in ``forward``,
  so the embeddings written later are the ones the loss saw); the loss itself never normalises.
- ``samples_per_class_min``: the images of each class a batch must hold for the loss to see positives
  (0: plain shuffled batches do).

Tuples are formed within the batch ("online"). Random choices (contrastive pairs, constellation negatives) draw from
``loss.generator`` when set, else from torch's global generator, which the trainer seeds.
"""

import importlib
import inspect
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cytodml.config import check_negative_combinations, checked
from cytodml.errors import InputError

__all__ = [
    "LOSS_TYPES",
    "ConstellationLoss",
    "ContrastiveLoss",
    "MetricLoss",
    "NoFineTuning",
    "NPairLoss",
    "PMLLoss",
    "SoftmaxLoss",
    "TripletLoss",
    "build_loss",
]

MINING = ("semihard", "hard", "all")


class MetricLoss(nn.Module):
    """Base class: checks the batch, then hands it to ``compute_loss``."""

    normalize_embeddings: bool = False
    samples_per_class_min: int = 2
    generator: torch.Generator | None = None
    #: False for the one loss that trains nothing (:class:`NoFineTuning`): the trainer runs no epoch
    trains: bool = True

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if embeddings.ndim != 2 or labels.ndim != 1 or len(labels) != len(embeddings):
            raise ValueError(
                f"expected embeddings B x D and labels B, got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
            )
        return self.compute_loss(embeddings, labels)

    def compute_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def check_batch(self, samples_per_class: int, num_classes: int) -> None:
        """Raise InputError naming the config key where batches with ``samples_per_class`` images of each of
        ``num_classes`` classes do not suit the loss; the trainer asks before training. Here any batch suits."""


# ---------------------------------------------------------------------------------------------------- building blocks


def squared_distances(embeddings: Tensor) -> Tensor:
    """B x B squared Euclidean distances; clamped at 0 against round-off, exactly 0 on the diagonal."""
    gram = embeddings @ embeddings.T
    norms = gram.diagonal()
    squared = (norms[:, None] + norms[None, :] - 2 * gram).clamp_min(0)
    return squared * (1 - torch.eye(len(embeddings), dtype=squared.dtype, device=squared.device))


def safe_sqrt(squared: Tensor) -> Tensor:
    """sqrt with a zero (not NaN) gradient where the argument is 0, i.e. for coincident embeddings."""
    positive = squared > 0
    return torch.where(positive, torch.where(positive, squared, torch.ones_like(squared)).sqrt(), 0.0)


def class_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(positive, negative) B x B boolean masks: same class but another image; another class."""
    same = labels[:, None] == labels[None, :]
    other_image = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & other_image, ~same


def random_columns(mask: Tensor, k: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Per row, ``k`` distinct columns drawn uniformly among the True entries of ``mask``.

    Returns (columns B x k, valid B x k); ``valid`` is False where the row has fewer than ``k`` True entries.
    """
    scores = torch.rand(mask.shape, device=mask.device, generator=generator)
    scores = scores.masked_fill(~mask, -1.0)
    top, columns = scores.topk(min(k, mask.shape[1]), dim=1)
    return columns, top >= 0


def zero_loss(embeddings: Tensor) -> Tensor:
    """A zero that stays connected to the graph, so ``backward`` works on a batch without tuples."""
    return embeddings.sum() * 0


def log1p_sum_exp(logits: Tensor, valid: Tensor) -> Tensor:
    """Row-wise log(1 + sum_j exp(logits_j)) over the valid entries, computed stably as a logsumexp."""
    logits = logits.masked_fill(~valid, float("-inf"))
    return torch.logsumexp(torch.cat([torch.zeros_like(logits[:, :1]), logits], dim=1), dim=1)


def _check_number(name: str, value, minimum: float, exclusive: bool = False) -> float:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or value < minimum or (exclusive and value == minimum):
        bound = f"> {minimum}" if exclusive else f">= {minimum}"
        raise InputError(f"{name}: expected a number {bound}, got {value!r}")
    return float(value)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name}: expected true or false, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------------- the losses


class SoftmaxLoss(MetricLoss):
    """Cross-entropy of a linear classification head: the conventional classification baseline.

    L = -(1/B) sum_i log softmax(W f_i + b)_{y_i}, with the head ``nn.Linear(embedding_dim, num_classes)`` trained
    with the network. The embedding is the network output, the penultimate layer of the softmax net, so the baseline
    Luo et al. (RSC Adv 2021) and Gupta et al. (CVPR-W 2019) compare against goes through the same classifiers.
    ``balanced_batches`` draws every batch with ``train.samples_per_class`` images of each class, as the metric losses
    do, instead of shuffling: the "cross-entropy with balanced batches" baseline of Gupta et al. (their Table 4), where
    a rare class would otherwise be absent from most batches.
    """

    def __init__(self, num_classes: int, embedding_dim: int, balanced_batches: bool):
        super().__init__()
        self.head = nn.Linear(embedding_dim, num_classes)
        self.samples_per_class_min = 1 if _check_bool("balanced_batches", balanced_batches) else 0

    def logits(self, embeddings: Tensor) -> Tensor:
        return self.head(embeddings)

    def compute_loss(self, embeddings, labels):
        return F.cross_entropy(self.logits(embeddings), labels)


class ContrastiveLoss(MetricLoss):
    """Contrastive loss with two margins on pairs drawn on the fly (Luo et al., RSC Adv 2021, 11:17603).

    For each anchor in the batch one random positive (another image of its class) and one random negative (an image
    of another class) are drawn; with d the Euclidean distance of a pair and h(x) = max(0, x),

        L = mean over pairs [ y h(d - s1)^2 + (1 - y) h(s2 - d)^2 ],

    y = 1 for a positive pair. Similar pairs are pulled inside ``similar_margin`` s1 = 0.9, dissimilar pairs pushed
    beyond ``dissimilar_margin`` s2 = 1.0. The latent space is plain Euclidean (the paper's 2-D latent): no
    normalisation.
    """

    def __init__(self, similar_margin: float, dissimilar_margin: float):
        super().__init__()
        self.similar_margin = _check_number("similar_margin", similar_margin, 0)
        self.dissimilar_margin = _check_number("dissimilar_margin", dissimilar_margin, 0)

    def pairs(self, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(anchor, other, y) index tensors: each anchor's random positive (y = 1) and random negative (y = 0)."""
        positive_mask, negative_mask = class_masks(labels)
        anchors, others, ys = [], [], []
        for mask, y in ((positive_mask, 1), (negative_mask, 0)):
            column, valid = random_columns(mask, 1, self.generator)
            valid = valid[:, 0]
            anchors.append(torch.nonzero(valid)[:, 0])
            others.append(column[valid, 0])
            ys.append(torch.full_like(anchors[-1], y))
        return torch.cat(anchors), torch.cat(others), torch.cat(ys)

    def compute_loss(self, embeddings, labels):
        anchor, other, y = self.pairs(labels)
        if len(anchor) == 0:
            return zero_loss(embeddings)
        d = safe_sqrt((embeddings[anchor] - embeddings[other]).pow(2).sum(dim=1))
        similar = F.relu(d - self.similar_margin).pow(2)
        dissimilar = F.relu(self.dissimilar_margin - d).pow(2)
        return torch.where(y == 1, similar, dissimilar).mean()


class TripletLoss(MetricLoss):
    """Triplet loss with online mining (Gupta et al., CVPR-W 2019, after Schroff et al., CVPR 2015).

    With a_p, a_n the (squared, by default) Euclidean distances anchor-positive and anchor-negative and
    h(x) = max(0, x),

        L = mean over mined triplets of h(a_p - a_n + margin).

    ``mining``: ``semihard`` keeps the triplets with a_p < a_n and a_n - a_p < margin (Gupta et al.); ``hard`` keeps,
    per anchor, its farthest positive and nearest negative (batch-hard, Hermans et al. 2017; the constellation paper's
    triplet baseline); ``all`` keeps every valid triplet. Gupta et al. put the embeddings on the unit sphere
    (``normalize``) and use margin 1.5, so squared distances lie in [0, 4]. A batch where nothing is mined gives 0.
    """

    def __init__(self, margin: float, mining: str, squared: bool, normalize: bool):
        super().__init__()
        if mining not in MINING:
            raise InputError(f"mining: expected one of {', '.join(MINING)}, got {mining!r}")
        self.margin = _check_number("margin", margin, 0, exclusive=True)
        self.mining = mining
        self.squared = _check_bool("squared", squared)
        self.normalize_embeddings = _check_bool("normalize", normalize)

    def distances(self, embeddings: Tensor) -> Tensor:
        squared = squared_distances(embeddings)
        return squared if self.squared else safe_sqrt(squared)

    def mine(self, distances: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(anchor, positive, negative) index tensors of the triplets the mining strategy keeps."""
        positive_mask, negative_mask = class_masks(labels)
        if self.mining == "hard":
            hardest_positive = distances.masked_fill(~positive_mask, float("-inf")).argmax(dim=1)
            hardest_negative = distances.masked_fill(~negative_mask, float("inf")).argmin(dim=1)
            anchor = torch.nonzero(positive_mask.any(dim=1) & negative_mask.any(dim=1))[:, 0]
            return anchor, hardest_positive[anchor], hardest_negative[anchor]
        keep = positive_mask[:, :, None] & negative_mask[:, None, :]
        if self.mining == "semihard":
            a_p, a_n = distances[:, :, None], distances[:, None, :]
            keep &= (a_p < a_n) & (a_n - a_p < self.margin)
        return torch.unbind(torch.nonzero(keep), dim=1)

    def compute_loss(self, embeddings, labels):
        distances = self.distances(embeddings)
        with torch.no_grad():
            anchor, positive, negative = self.mine(distances, labels)
        if len(anchor) == 0:
            return zero_loss(embeddings)
        return F.relu(distances[anchor, positive] - distances[anchor, negative] + self.margin).mean()


class NPairLoss(MetricLoss):
    """Multi-class N-pair loss (Sohn, NeurIPS 2016).

    The batch is read as N pairs (anchor f_i, positive f+_i), one per class: the first two images of each class in
    batch order (classes with one image are left out). With dot-product similarities,

        L = (1/N) sum_i log(1 + sum_{j != i} exp(f_i.f+_j - f_i.f+_i)) + l2_reg * mean ||f||^2,

    the mean running over the 2N paired embeddings. Sohn keeps the embeddings off the sphere and bounds their norm
    with this regulariser instead (``l2_reg`` 0.002, as the TensorFlow ``npairs_loss`` default).
    """

    def __init__(self, l2_reg: float):
        super().__init__()
        self.l2_reg = _check_number("l2_reg", l2_reg, 0)

    @staticmethod
    def pairs(labels: Tensor) -> tuple[Tensor, Tensor]:
        """(anchor, positive) indices: the first and second image of each class with two, in class order."""
        order = torch.argsort(labels, stable=True)
        ranked = labels[order]
        starts = torch.ones_like(ranked, dtype=torch.bool)
        starts[1:] = ranked[1:] != ranked[:-1]
        position = torch.arange(len(labels), device=labels.device)
        rank = position - torch.cummax(torch.where(starts, position, 0), dim=0).values
        second = torch.nonzero(rank == 1)[:, 0]
        return order[second - 1], order[second]

    def compute_loss(self, embeddings, labels):
        anchor, positive = self.pairs(labels)
        if len(anchor) == 0:
            return zero_loss(embeddings)
        anchors, positives = embeddings[anchor], embeddings[positive]
        # log(1 + sum_{j != i} exp(s_ij - s_ii)) = -log softmax(s_i)_i: a cross-entropy with target i
        similarities = anchors @ positives.T
        targets = torch.arange(len(anchor), device=embeddings.device)
        regulariser = torch.cat([anchors, positives]).pow(2).sum(dim=1).mean()
        return F.cross_entropy(similarities, targets) + self.l2_reg * regulariser


CONSTELLATION_PAIRS = ("per_anchor", "all")


def all_pairs_with_one_negative_per_class(
    labels: Tensor, k: int | str, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The constellation paper's tuples: every positive pair of each class, with negatives of K distinct classes.

    Returns (anchor P, positive P, negatives P x K): the P pairs (i, j), i < j in batch order, of images of one class
    (spc(spc - 1)/2 for a class with spc images in the batch), i the anchor; per pair, K of the other classes in the
    batch drawn without replacement (all of them for ``k = "all"`` or where there are fewer than K) and one image of
    each drawn uniformly.
    """
    classes, codes, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    positive_mask, _ = class_masks(labels)
    anchor, positive = torch.nonzero(positive_mask.triu(diagonal=1), as_tuple=True)
    others = len(classes) - 1
    k = others if k == "all" else min(k, others)
    class_scores = torch.rand((len(anchor), len(classes)), device=labels.device, generator=generator)
    class_scores[torch.arange(len(anchor), device=labels.device), codes[anchor]] = -1.0  # never the anchor's class
    negative_class = class_scores.topk(k, dim=1).indices
    by_class = torch.argsort(codes, stable=True)  # image indices grouped by class, in the order of ``classes``
    first = torch.cumsum(counts, dim=0) - counts
    size = counts[negative_class]
    draw = torch.rand(negative_class.shape, device=labels.device, generator=generator)
    offset = (draw * size).long().clamp_max(size - 1)  # uniform in [0, size); the clamp guards float rounding
    return anchor, positive, by_class[first[negative_class] + offset]


class ConstellationLoss(MetricLoss):
    """Constellation loss (Medela & Picon, J Pathol Inform 2020, 11:38).

    For N tuples of an anchor f_a, a positive f_p of its class and K negatives f_n1..f_nK of other classes, with
    dot-product similarities on the unit sphere (the embeddings are L2-normalised, as in the paper),

        L = (1/N) sum over tuples log(1 + sum_{j=1..K} exp(f_a.f_nj - f_a.f_p)).

    ``pairs`` says how the batch is read as tuples:

    - ``all``, the paper's construction: every positive pair, spc(spc - 1)/2 per class with spc images in the batch,
      the earlier image in batch order the anchor; per pair K negatives, one image from each of K other classes of
      the batch, classes and images drawn at random (:func:`all_pairs_with_one_negative_per_class`); ``k: all`` takes
      one image of every other class. The paper keeps spc^K < 100 (its eq. 5) for spc = ``train.samples_per_class``;
      :meth:`check_batch` enforces it before training.
    - ``per_anchor``: each image with another of its class in the batch is an anchor, with one random positive and K
      random negatives of any other classes (drawn without replacement); ``k: all`` uses every negative.

    A tuple with fewer than K negatives in the batch uses all it has.
    """

    normalize_embeddings = True

    def __init__(self, k: int | str, pairs: str):
        super().__init__()
        if k != "all" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise InputError(f"k: expected a positive integer or 'all', got {k!r}")
        if pairs not in CONSTELLATION_PAIRS:
            raise InputError(f"pairs: expected one of {', '.join(CONSTELLATION_PAIRS)}, got {pairs!r}")
        self.k = k
        self.pairs = pairs

    def check_batch(self, samples_per_class: int, num_classes: int) -> None:
        """With ``pairs: all``, spc^K < 100 (Medela & Picon, eq. 5), spc = samples_per_class, K = min(k, classes - 1)."""
        if self.pairs == "all":
            check_negative_combinations(samples_per_class, self.k, num_classes, "train.samples_per_class")

    def compute_loss(self, embeddings, labels):
        similarities = embeddings @ embeddings.T
        if self.pairs == "all":
            return self._all_pairs_loss(similarities, labels)
        return self._per_anchor_loss(similarities, labels)

    def _all_pairs_loss(self, similarities: Tensor, labels: Tensor) -> Tensor:
        anchor, positive, negatives = all_pairs_with_one_negative_per_class(labels, self.k, self.generator)
        if negatives.numel() == 0:
            return zero_loss(similarities)
        logits = similarities[anchor[:, None], negatives] - similarities[anchor, positive][:, None]
        return log1p_sum_exp(logits, torch.ones_like(logits, dtype=torch.bool)).mean()

    def _per_anchor_loss(self, similarities: Tensor, labels: Tensor) -> Tensor:
        positive_mask, negative_mask = class_masks(labels)
        positive, has_positive = random_columns(positive_mask, 1, self.generator)
        if self.k == "all":
            s_an, valid = similarities, negative_mask
        else:
            negatives, valid = random_columns(negative_mask, self.k, self.generator)
            s_an = similarities.gather(1, negatives)
        anchor = has_positive[:, 0] & valid.any(dim=1)
        if not anchor.any():
            return zero_loss(similarities)
        s_ap = similarities.gather(1, positive)
        return log1p_sum_exp((s_an - s_ap)[anchor], valid[anchor]).mean()


class PMLLoss(MetricLoss):
    """Any loss of pytorch-metric-learning, with an optional miner, both named by class.

    ``loss`` / ``miner`` name classes in ``pytorch_metric_learning.losses`` / ``.miners``, built with ``loss_kwargs``
    / ``miner_kwargs``; ``num_classes`` and ``embedding_size`` are filled in for losses that take them (proxy and
    classifier losses, whose parameters the trainer then optimises).
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        loss: str,
        loss_kwargs: Mapping,
        miner: str | None,
        miner_kwargs: Mapping,
        normalize: bool,
    ):
        super().__init__()
        self.normalize_embeddings = _check_bool("normalize", normalize)
        sizes = {"num_classes": num_classes, "embedding_size": embedding_dim}
        # imported here: pytorch-metric-learning takes seconds to import, and only this loss type needs it
        self.loss = _build_pml(
            "loss", importlib.import_module("pytorch_metric_learning.losses"), loss, loss_kwargs, sizes
        )
        miners = importlib.import_module("pytorch_metric_learning.miners") if miner is not None else None
        self.miner = None if miner is None else _build_pml("miner", miners, miner, miner_kwargs, {})

    def compute_loss(self, embeddings, labels):
        indices_tuple = None if self.miner is None else self.miner(embeddings, labels)
        return self.loss(embeddings, labels, indices_tuple)


def _build_pml(kind: str, module, name, kwargs: Mapping, sizes: dict) -> nn.Module:
    cls = getattr(module, name, None) if isinstance(name, str) else None
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise InputError(f"{kind}: {name!r} is not a class in {module.__name__}")
    if not isinstance(kwargs, Mapping) or not all(isinstance(key, str) for key in kwargs):
        raise InputError(f"{kind}_kwargs: expected a mapping of parameter names, got {kwargs!r}")
    accepted = inspect.signature(cls).parameters
    kwargs = {**{key: value for key, value in sizes.items() if key in accepted}, **kwargs}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as error:
        raise InputError(f"{kind}_kwargs: {name}({kwargs}) failed: {error}") from error


class NoFineTuning(MetricLoss):
    """No training at all: the network stays as ``network.init`` leaves it, labels serve only the classifiers.

    The baseline of self-supervised pretraining (:mod:`cytodml.learn.pretrain`): kNN and the other classifiers on the
    pretrained embedding, L2-normalised because the pretraining compared views by cosine similarity, so that what
    fine-tuning adds is measured against what the unlabelled images alone gave.
    """

    normalize_embeddings = True
    samples_per_class_min = 0
    trains = False

    def __init__(self):
        super().__init__()

    def compute_loss(self, embeddings, labels):
        raise RuntimeError("loss type none trains nothing; the trainer runs no epoch with it")


# ------------------------------------------------------------------------------------------------------- the registry

LOSS_TYPES: dict[str, type[MetricLoss]] = {
    "softmax": SoftmaxLoss,
    "contrastive": ContrastiveLoss,
    "triplet": TripletLoss,
    "npair": NPairLoss,
    "constellation": ConstellationLoss,
    "pml": PMLLoss,
    "none": NoFineTuning,
}


def build_loss(spec: dict, num_classes: int, embedding_dim: int, *, name: str | None = None) -> MetricLoss:
    """The loss a config entry describes, e.g. ``{type: constellation, k: 3}``; parameters it leaves out take the
    config schema's defaults (the loss classes keep none of their own).

    ``name`` is the entry's key under ``losses:``, used in error messages (``losses.<name>.<parameter>``). An unknown
    type, an unknown or missing parameter, or a bad value raises ``InputError`` naming the key.
    """
    where = f"losses.{name}" if name is not None else "losses.<entry>"
    spec = checked("loss", spec, where)
    cls = LOSS_TYPES[spec["type"]]
    # train: is the loss's share of the trainer's settings (cytodml.config.loss_train), not a parameter of the loss
    parameters = {key: value for key, value in spec.items() if key not in ("type", "train")}
    accepted = inspect.signature(cls).parameters
    sizes = {"num_classes": num_classes, "embedding_dim": embedding_dim}
    try:
        return cls(**{key: value for key, value in sizes.items() if key in accepted}, **parameters)
    except InputError as error:
        raise InputError(f"{where}.{error}") from error
