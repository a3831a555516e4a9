r"""Generalist + specialists (Hinton, Vinyals & Dean 2015, section 5).

A *generalist* is trained on all ``C`` classes. Each *specialist* ``m`` looks after a subset
``S_m`` of classes that the generalist confuses: it predicts ``|S_m| + 1`` classes, the members
of ``S_m`` in their order and one *dustbin* class (the last) for everything else. At inference
the generalist decides which specialists to ask, and one distribution ``q`` over all classes is
found that agrees with all of them. The pieces, in the order a run uses them:

* Which subsets (section 5.3). The covariance of the generalist's predicted probabilities over a
  set of examples,

      Cov_ij = E[p_i p_j] - E[p_i] E[p_j],

  is clustered with k-means on its columns (each scaled to unit variance): classes that are
  predicted together have similar columns. :func:`prediction_covariance`, :func:`kmeans`,
  :func:`find_confusable_subsets`.
* Dustbin mapping: ``M_m`` is the 0/1 matrix (C, |S_m|+1) sending class ``S_m[i]`` to slot ``i``
  and every other class to the dustbin slot ``|S_m|``; a distribution ``p`` over C classes maps to
  ``p M_m`` (the dustbin gets the mass outside ``S_m``). :func:`dustbin_map`,
  :func:`dustbin_labels`, :func:`dustbin_probs`.
* Training set (section 5.2): half from ``S_m``, half at random from the rest, relabeled.
  :func:`specialist_training_set`, :func:`specialist_splits`; the logit correction for that
  oversampling, :func:`dustbin_logit_offset`.
* Initialization (section 5.2: specialists start from the generalist's weights):
  :func:`init_specialist`.
* Soft targets (section 6.1: the generalist's soft targets keep a specialist trained on a
  small biased set from overfitting): :class:`DustbinTeacher`.
* Inference (section 5.4): with ``A_k`` the specialists whose subset meets the generalist's
  ``k`` most probable classes, minimize over ``q``

      J(q) = KL(p_g || q) + sum_{m in A_k} KL(p_m || q M_m)

  :func:`active_specialists`, :func:`combination_objective`, :func:`combine_specialists`,
  :class:`SpecialistEnsemble`.

Reference: G. Hinton, O. Vinyals, J. Dean (2015), "Distilling the Knowledge in a Neural
Network", arXiv:1503.02531.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.data.tensors import DataSplits, TensorData
from distill.taps import Taps
from distill.teachers import FrozenTeacher, Targets

__all__ = [
    "DustbinTeacher",
    "TappedDustbinTeacher",
    "SpecialistEnsemble",
    "active_specialists",
    "combination_objective",
    "combine_specialists",
    "dustbin_labels",
    "dustbin_log_probs",
    "dustbin_logit_offset",
    "dustbin_map",
    "dustbin_maps",
    "dustbin_probs",
    "find_confusable_subsets",
    "init_specialist",
    "kmeans",
    "prediction_covariance",
    "specialist_splits",
    "specialist_training_set",
    "subset_mask",
]


# --------------------------------------------------------------------------- finding subsets


def prediction_covariance(probs: Tensor) -> Tensor:
    """``Cov_ij = E[p_i p_j] - E[p_i] E[p_j]`` (C, C) of predicted probabilities ``probs`` (N, C).

    The unbiased estimate (divided by N - 1), in float64.
    """
    if probs.dim() != 2 or probs.shape[0] < 2:
        raise ValueError(f"prediction_covariance needs probabilities of shape (N >= 2, C), got {tuple(probs.shape)}")
    p = probs.double()
    centered = p - p.mean(0, keepdim=True)
    return centered.T @ centered / (p.shape[0] - 1)


def kmeans(points: Tensor, k: int, *, seed: int = 0, restarts: int = 100, max_iter: int = 100) -> Tensor:
    """Cluster the rows of ``points`` (N, D) into ``k`` clusters; returns labels (N,) in ``[0, k)``.

    Lloyd's algorithm minimizing ``sum_i ||x_i - mu_{label_i}||^2``, from k-means++ seeds
    (Arthur & Vassilvitskii 2007), ``restarts`` runs batched in one tensor (memory
    ``restarts * N * k``); the run with the lowest sum of squares wins. Seeded: the same inputs
    and seed give the same labels. Clusters are numbered in order of their first member. A
    cluster that loses all its points keeps its centre.
    """
    n, _ = points.shape
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k must be in [1, {n}] for {n} points, got {k}")
    x = points.double()
    x_sq = x.pow(2).sum(-1)[None, :, None]  # (1, N, 1)
    g = torch.Generator().manual_seed(seed)

    def sq_dist(centres: Tensor) -> Tensor:  # centres (R, k', D) -> (R, N, k')
        cross = torch.einsum("nd,rkd->rnk", x, centres)
        return (x_sq - 2 * cross + centres.pow(2).sum(-1)[:, None, :]).clamp_min(0)

    first = torch.randint(n, (restarts,), generator=g).to(x.device)
    centres = x[first].unsqueeze(1)  # (R, 1, D)
    for _ in range(1, k):  # k-means++: the next seed with probability proportional to D(x)^2
        d2 = sq_dist(centres).min(-1).values.cpu()
        weights = torch.where(d2.sum(-1, keepdim=True) > 0, d2, torch.ones_like(d2))
        pick = torch.multinomial(weights, 1, generator=g).to(x.device)  # (R, 1)
        centres = torch.cat([centres, x[pick]], dim=1)
    labels = sq_dist(centres).argmin(-1)
    for _ in range(max_iter):
        onehot = F.one_hot(labels, k).to(x.dtype)  # (R, N, k)
        counts = onehot.sum(1).unsqueeze(-1)  # (R, k, 1)
        centres = torch.where(counts > 0, onehot.transpose(1, 2) @ x / counts.clamp_min(1), centres)
        new_labels = sq_dist(centres).argmin(-1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    inertia = sq_dist(centres).gather(-1, labels.unsqueeze(-1)).sum((1, 2))
    best = labels[int(inertia.argmin())].tolist()
    order: dict[int, int] = {}
    for c in best:
        order.setdefault(c, len(order))
    return torch.tensor([order[c] for c in best], dtype=torch.long)


def _correlation(cov: Tensor) -> Tensor:
    """``Cov_ij / (sigma_i sigma_j)``: the correlation matrix of a covariance matrix."""
    std = cov.diagonal().clamp_min(1e-30).sqrt()
    return cov / (std[:, None] * std[None, :])


def _mean_off_diagonal(corr: Tensor, subset: Sequence[int]) -> float:
    idx = torch.as_tensor(list(subset))
    block = corr[idx][:, idx]
    n = len(subset)
    return float((block.sum() - block.diagonal().sum()) / (n * (n - 1)))


def find_confusable_subsets(
    probs: Tensor,
    num_subsets: int,
    *,
    seed: int = 0,
    max_size: int | None = None,
    restarts: int = 100,
) -> list[list[int]]:
    """Up to ``num_subsets`` disjoint sets of classes that the generalist confuses, from its
    predicted probabilities ``probs`` (N, C) on held-out examples (Hinton et al. 2015, 5.3).

    The columns of the covariance matrix (:func:`prediction_covariance`), each scaled to unit
    variance (i.e. the correlation matrix ``Cov_ij / (sigma_i sigma_j)``), are clustered with
    :func:`kmeans`: classes that are predicted together have similar columns. The scaling
    matters: the raw diagonal ``Cov_ii = Var p_i`` varies several-fold between classes the
    generalist is sure of and classes it is not (0.055 to 0.087 for a CNN on Fashion-MNIST) and
    dominates the distances, so raw columns cluster classes by how confidently they are predicted.

    Which clusters become specialists. A cluster is *useful* when

    - it has at least 2 classes: a lone class has no confusable partner, its specialist would be
      a one-vs-rest detector, which the generalist already is;
    - it has at most ``max_size`` classes (default ``C // 2``): a specialist for most classes is a
      second generalist with a thin dustbin;
    - its classes are confused more than most: their mean pairwise correlation is above the mean
      plus one standard deviation of the correlations of all pairs of distinct classes. Two
      classes that are never confused have a correlation of about ``-1 / (C - 1)`` (exactly, for
      balanced one-hot predictions), and most pairs are near it; the rule drops the clusters of
      leftover classes that k-means also forms. A CNN on Fashion-MNIST: pairs -0.110 +- 0.043,
      threshold -0.068; {trouser, dress, bag} -0.112 and {sandal, sneaker, ankle boot} -0.090
      are dropped, {T-shirt/top, pullover, coat, shirt} -0.037, {T-shirt/top, shirt} +0.072 and
      {pullover, coat} -0.006 are kept. The threshold adapts to the generalist: for a 97% CNN on
      digits, pairs are at about -0.111 +- 0.009, and a pair at -0.09 already stands out.

    k-means is run with ``k = max(num_subsets, 2), ..., C - 1`` clusters and stops at the first
    ``k`` that yields ``num_subsets`` useful clusters; if it yields more, the most
    correlated are kept. If no ``k`` yields enough, the useful clusters of the ``k`` that yielded
    the most are returned: fewer than asked (possibly none), never a useless one.

    Returns subsets sorted by mean pairwise correlation (most confusable first), each in
    ascending class order.
    """
    if probs.dim() != 2:
        raise ValueError(f"find_confusable_subsets needs probabilities of shape (N, C), got {tuple(probs.shape)}")
    num_classes = probs.shape[1]
    if num_classes < 3:
        raise ValueError(f"specialists need at least 3 classes (2 in a subset plus a dustbin), got {num_classes}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    max_size = num_classes // 2 if max_size is None else max_size
    if max_size < 2:
        raise ValueError(f"max_size must be >= 2 (a subset needs two classes), got {max_size}")
    corr = _correlation(prediction_covariance(probs))
    pairs = corr[~torch.eye(num_classes, dtype=torch.bool, device=corr.device)]
    threshold = float(pairs.mean() + pairs.std())
    best: list[list[int]] = []
    for k in range(min(max(num_subsets, 2), num_classes - 1), num_classes):
        labels = kmeans(corr, k, seed=seed, restarts=restarts)
        clusters = [torch.nonzero(labels == c).flatten().tolist() for c in range(k)]
        useful = [c for c in clusters if 2 <= len(c) <= max_size and _mean_off_diagonal(corr, c) > threshold]
        if len(useful) > len(best):
            best = useful
        if len(best) >= num_subsets:
            break
    best.sort(key=lambda s: (-_mean_off_diagonal(corr, s), s))
    return best[:num_subsets]


# --------------------------------------------------------------------------- dustbin mapping


def _check_subset(subset: Sequence[int], num_classes: int) -> list[int]:
    subset = [int(c) for c in subset]
    if not subset:
        raise ValueError("a specialist's subset must hold at least one class")
    if len(set(subset)) != len(subset):
        raise ValueError(f"subset {subset} lists a class twice")
    if min(subset) < 0 or max(subset) >= num_classes:
        raise ValueError(f"subset {subset} has a class outside [0, {num_classes})")
    if len(subset) >= num_classes:
        raise ValueError(f"subset {subset} holds every class, which leaves nothing for the dustbin")
    return subset


def dustbin_map(subset: Sequence[int], num_classes: int, device: torch.device | str | None = None) -> Tensor:
    """``M`` (C, |S|+1): ``M[S[i], i] = 1`` and ``M[c, |S|] = 1`` for every class ``c`` not in ``S``."""
    subset = _check_subset(subset, num_classes)
    slot = torch.full((num_classes,), len(subset), dtype=torch.long)
    slot[torch.as_tensor(subset)] = torch.arange(len(subset))
    return F.one_hot(slot, len(subset) + 1).float().to(device)


def dustbin_maps(subsets: Sequence[Sequence[int]], num_classes: int,
                 device: torch.device | str | None = None) -> Tensor:
    """:func:`dustbin_map` of each subset, zero-padded to (K, C, L), ``L = max |S_m| + 1``.

    Specialist ``m`` uses slots ``0..|S_m|`` (its dustbin is slot ``|S_m|``, as in its own
    output); slots after that are empty (all-zero columns).
    """
    width = max(len(s) for s in subsets) + 1
    maps = [F.pad(dustbin_map(s, num_classes), (0, width - len(s) - 1)) for s in subsets]
    return torch.stack(maps).to(device)


def subset_mask(subsets: Sequence[Sequence[int]], num_classes: int,
                device: torch.device | str | None = None) -> Tensor:
    """(K, C) bool: ``mask[m, c]`` is True when class ``c`` is in ``subsets[m]``."""
    mask = torch.zeros(len(subsets), num_classes, dtype=torch.bool)
    for m, s in enumerate(subsets):
        mask[m, torch.as_tensor(_check_subset(s, num_classes))] = True
    return mask.to(device)


def dustbin_labels(labels: Tensor, subset: Sequence[int], num_classes: int) -> Tensor:
    """Class indices in ``[0, C)`` -> ``i`` for ``S[i]``, ``|S|`` (the dustbin) for the rest."""
    subset = _check_subset(subset, num_classes)
    slot = torch.full((num_classes,), len(subset), dtype=torch.long, device=labels.device)
    slot[torch.as_tensor(subset, device=labels.device)] = torch.arange(len(subset), device=labels.device)
    return slot[labels]


def dustbin_probs(probs: Tensor, subset: Sequence[int]) -> Tensor:
    """A distribution over C classes (..., C) -> over ``S ∪ {dustbin}`` (..., |S|+1): ``p M``.

    Subset classes keep their probabilities in subset order; the dustbin gets the sum of all
    the others, so the result sums to 1 when ``probs`` does.
    """
    return probs @ dustbin_map(subset, probs.shape[-1], probs.device).to(probs.dtype)


def dustbin_log_probs(log_probs: Tensor, subset: Sequence[int]) -> Tensor:
    """``log(p M)`` (..., |S|+1) from log-probabilities (..., C), without leaving log space: the
    subset's log-probabilities in subset order, then the log-sum-exp of all the others."""
    subset = _check_subset(subset, log_probs.shape[-1])
    outside = torch.ones(log_probs.shape[-1], dtype=torch.bool, device=log_probs.device)
    outside[torch.as_tensor(subset, device=log_probs.device)] = False
    dustbin = torch.logsumexp(log_probs[..., outside], dim=-1, keepdim=True)
    return torch.cat([log_probs[..., subset], dustbin], dim=-1)


# --------------------------------------------------------------------------- training a specialist


def specialist_training_set(data: TensorData, subset: Sequence[int], num_classes: int, *, seed: int = 0) -> TensorData:
    """Every example of ``data`` whose class is in ``subset``, plus as many drawn at random
    (seeded, without replacement) from the others, labeled with :func:`dustbin_labels`.

    Hinton et al. (2015), 5.2: half of a specialist's training examples come from its subset, half
    are sampled at random from the rest of the training set. When the rest has fewer examples than
    the subset, all of it is used. The examples keep their order in ``data``.
    """
    subset = _check_subset(subset, num_classes)
    inside = torch.isin(data.y, torch.as_tensor(subset, device=data.y.device))
    outside = torch.nonzero(~inside).flatten().cpu()
    n_in = int(inside.sum())
    if n_in == 0:
        raise ValueError(f"no example of classes {subset} in this data: a specialist cannot learn them")
    g = torch.Generator().manual_seed(seed)
    drawn = outside[torch.randperm(outside.numel(), generator=g)[:n_in]]
    keep = inside.clone()
    keep[drawn.to(keep.device)] = True
    index = torch.nonzero(keep).flatten()
    return TensorData(data.x[index], dustbin_labels(data.y[index], subset, num_classes))


def specialist_splits(data: DataSplits, subset: Sequence[int], *, seed: int = 0) -> DataSplits:
    """``data`` as specialist ``subset`` sees it: classes ``S ∪ {dustbin}`` (|S|+1 of them).

    Train and validation: :func:`specialist_training_set` of each split (half subset, half rest;
    seeds ``seed`` and ``seed + 1``; an empty split, or one without the subset's classes, stays
    empty). Test: every test example, relabeled. Normalization statistics are unchanged.
    """
    subset = _check_subset(subset, data.num_classes)

    def half_half(split: TensorData, split_seed: int) -> TensorData:
        if not bool(torch.isin(split.y, torch.as_tensor(subset, device=split.y.device)).any()):
            return TensorData(split.x[:0], split.y[:0])
        return specialist_training_set(split, subset, data.num_classes, seed=split_seed)

    names = tuple(data.class_names[c] for c in subset) + ("dustbin",)
    return DataSplits(
        name=f"{data.name} specialist ({', '.join(names[:-1])} + dustbin)",
        train=half_half(data.train, seed),
        val=half_half(data.val, seed + 1),
        test=TensorData(data.test.x, dustbin_labels(data.test.y, subset, data.num_classes)),
        num_classes=len(subset) + 1,
        class_names=names,
        mean=data.mean,
        std=data.std,
    )


def dustbin_logit_offset(natural_labels: Tensor, subset: Sequence[int], training_labels: Tensor) -> float:
    """``log`` of the factor by which ``subset`` is oversampled relative to the dustbin.

    Hinton et al. (2015), 5.2 correct for the biased training set by adding to the dustbin's
    logit the log of the proportion by which the subset was oversampled. With ``N_in, N_out``
    the counts of subset / other classes in the natural (full training) labels and
    ``n_in, n_out`` those in the specialist's training set (``training_labels``, dustbin-labeled):

        offset = log( (n_in / N_in) / (n_out / N_out) )

    i.e. Bayes' rule for a change of class prior, up to a constant shared by all logits.
    """
    subset = list(subset)
    big_in = int(torch.isin(natural_labels, torch.as_tensor(subset, device=natural_labels.device)).sum())
    big_out = natural_labels.numel() - big_in
    small_out = int((training_labels == len(subset)).sum())
    small_in = training_labels.numel() - small_out
    if min(big_in, big_out, small_in, small_out) == 0:
        raise ValueError("dustbin_logit_offset needs examples both inside and outside the subset in both label sets")
    return math.log((small_in / big_in) / (small_out / big_out))


def _classifier_inputs(model: nn.Module, head: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """What ``head`` (``model``'s classifier) receives for inputs ``x`` (eval mode, no graph), in float64."""
    features: list[Tensor] = []
    handle = head.register_forward_hook(lambda module, args, out: features.append(args[0].double()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                model(x[i : i + batch_size])
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(features)


@torch.no_grad()
def init_specialist(generalist: nn.Module, subset: Sequence[int], inputs: Tensor | None = None) -> nn.Module:
    """A copy of ``generalist`` whose ``classifier`` predicts ``S ∪ {dustbin}`` (|S|+1 outputs).

    Subset rows (weights and bias) are copied, so the specialist starts with exactly the
    generalist's logits for the subset classes. The dustbin should start with the generalist's
    mass outside ``S``, i.e. the logit

        z_dustbin = log sum_{c not in S} exp(z_c),

    which is not linear in the classifier's input ``h``. With ``inputs`` (e.g. a few thousand of
    the specialist's training images), the dustbin row ``(w, b)`` is the least-squares fit of
    ``w.h + b`` to that log-sum-exp over their features (a ridge of 1e-6 relative keeps it
    defined for dead units), so the specialist starts from nearly the generalist's own
    predictions over ``S ∪ {dustbin}``. Without ``inputs`` it is the first-order (Taylor)
    expansion around equal outside logits, ``mean_{c not in S} z_c + log n`` (``n = C - |S|``):
    weight = mean of the other rows, bias = their mean + log n. That is a lower bound (Jensen),
    far too low when one outside class dominates, as it does for a confident generalist, so the
    specialist then starts by misclassifying most dustbin examples. The copy trains: gradients
    on, train mode.
    """
    head = getattr(generalist, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"init_specialist needs a model whose last layer is an nn.Linear named `classifier`; "
                        f"{type(generalist).__name__}.classifier is {type(head).__name__}")
    num_classes = head.out_features
    subset = _check_subset(subset, num_classes)
    rest = [c for c in range(num_classes) if c not in set(subset)]
    has_bias = head.bias is not None
    if inputs is None:
        weight = head.weight[rest].mean(0)
        bias = head.bias[rest].mean() + math.log(len(rest)) if has_bias else None
    else:
        h = _classifier_inputs(generalist, head, inputs)  # (N, D)
        target = torch.logsumexp(F.linear(h, head.weight.double(), head.bias.double() if has_bias else None)[:, rest],
                                 dim=-1)
        design = torch.cat([h, torch.ones_like(h[:, :1])], dim=1) if has_bias else h
        gram = design.T @ design
        ridge = 1e-6 * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype,
                                                                             device=gram.device)
        solution = torch.linalg.solve(gram + ridge, design.T @ target)
        weight, bias = (solution[:-1], solution[-1]) if has_bias else (solution, None)
    specialist = copy.deepcopy(generalist)
    new = nn.Linear(head.in_features, len(subset) + 1, bias=has_bias, device=head.weight.device,
                    dtype=head.weight.dtype)
    new.weight.copy_(torch.cat([head.weight[subset], weight.reshape(1, -1).to(head.weight.dtype)]))
    if bias is not None:  # exactly when has_bias
        new.bias.copy_(torch.cat([head.bias[subset], bias.reshape(1).to(head.bias.dtype)]))
    specialist.classifier = new
    setattr(specialist, "num_classes", len(subset) + 1)  # a plain attribute, which nn.Module's typing cannot name
    return specialist.requires_grad_(True).train()


class DustbinTeacher:
    """The generalist's targets for one specialist: its log-probabilities over ``S ∪ {dustbin}``.

    A :class:`~distill.teachers.Teacher` giving ``Targets(logits=log(p_g M))`` (the generalist's
    distribution merged into ``S ∪ {dustbin}`` at temperature 1, :func:`dustbin_log_probs`); the
    distillation loss softens them at its temperature, ``softmax(log(p_g M) / T)``. Hinton et al.
    (2015), 6.1: soft targets from the generalist keep a specialist, trained on a small and biased
    set, from overfitting.

    Merging first matters. Softening first, ``softmax(z_g / T) M``, gives the dustbin the
    logit ``T log sum_{c not in S} exp(z_c / T)``, which exceeds the right one,
    ``log sum_{c not in S} exp(z_c)``, by up to ``(T - 1) log n`` for ``n`` outside classes: a
    specialist matching it would over-predict the dustbin at temperature 1 (on digits, T = 2:
    training accuracy on its own half/half set fell from 94% to 90% instead of rising).

    The generalist is frozen (eval mode, no gradients), as in :class:`~distill.teachers.FrozenTeacher`.
    """

    def __init__(self, generalist: nn.Module, subset: Sequence[int]) -> None:
        self.frozen = FrozenTeacher(generalist)
        self.subset = [int(c) for c in subset]

    def __call__(self, x: Tensor, index: Tensor | None = None) -> Targets:
        logits = self.frozen(x).logits
        assert logits is not None
        return Targets(logits=dustbin_log_probs(F.log_softmax(logits.float(), dim=-1), self.subset))

    def __repr__(self) -> str:
        return f"DustbinTeacher(subset={self.subset})"


class TappedDustbinTeacher(DustbinTeacher):
    """A :class:`DustbinTeacher` that is also the live generalist, for methods that read the teacher's
    intermediate features (AT, FitNets, ...): the engine sizes their connectors from ``model`` (the
    generalist, whose layers the specialist shares: :func:`init_specialist` copies it) and taps its
    ``features`` (:meth:`with_features`); the logits are the same merged log-probabilities."""

    def __init__(self, generalist: nn.Module, subset: Sequence[int], features: dict[str, str] | None = None) -> None:
        super().__init__(generalist, subset)
        self.model = self.frozen.model
        if features:
            self.frozen = FrozenTeacher(self.model, features)

    @property
    def taps(self) -> Taps | None:
        return self.frozen.taps

    def with_features(self, features: dict[str, str]) -> TappedDustbinTeacher:
        """The same generalist and subset, also returning the tapped ``features``."""
        return TappedDustbinTeacher(self.model, self.subset, features)

    def __call__(self, x: Tensor, index: Tensor | None = None) -> Targets:
        targets = self.frozen(x)
        assert targets.logits is not None
        return Targets(logits=dustbin_log_probs(F.log_softmax(targets.logits.float(), dim=-1), self.subset),
                       features=targets.features)

    def __repr__(self) -> str:
        return f"TappedDustbinTeacher(subset={self.subset})"


# --------------------------------------------------------------------------- inference


def active_specialists(generalist_probs: Tensor, mask: Tensor, top_classes: int) -> Tensor:
    """(B, K) bool: specialist ``m`` is consulted on example ``b`` when its subset (``mask``,
    (K, C)) contains one of the ``top_classes`` most probable classes of ``generalist_probs``
    (B, C) (or log-probabilities: only their order matters). Hinton et al. (2015), 5.4, step 1."""
    k = min(top_classes, generalist_probs.shape[-1])
    top = generalist_probs.topk(k, dim=-1).indices  # (B, k)
    return mask[:, top].any(-1).T  # mask[:, top]: (K, B, k)


def _xlogy_sum(p: Tensor, log_q: Tensor) -> Tensor:
    """``sum p (log p - log q)`` over the last dim, with ``0 log 0 = 0`` and ``p = 0`` slots ignored."""
    present = p > 0
    terms = torch.where(present, p * (torch.log(torch.where(present, p, 1.0)) - log_q), 0.0)
    return terms.sum(-1)


def combination_objective(
    log_q: Tensor,
    generalist_probs: Tensor,
    specialist_probs: Tensor,
    maps: Tensor,
    active: Tensor,
) -> Tensor:
    r"""``J(q) = KL(p_g || q) + sum_{m in A} KL(p_m || q M_m)`` per example, (B,).

    ``log_q``, ``generalist_probs``: (B, C); ``specialist_probs``: (B, K, L), specialist ``m``'s
    distribution over ``S_m ∪ {dustbin}`` in slots ``0..|S_m|`` (zero elsewhere); ``maps``:
    (K, C, L) from :func:`dustbin_maps`; ``active``: (B, K) bool, the set ``A``.
    """
    log_qm = torch.log(torch.einsum("bc,kcl->bkl", log_q.exp(), maps.to(log_q.dtype)).clamp_min(1e-300))
    kl_m = _xlogy_sum(specialist_probs.to(log_q.dtype), log_qm)  # (B, K)
    return _xlogy_sum(generalist_probs.to(log_q.dtype), log_q) + (kl_m * active).sum(-1)


def combine_specialists(
    generalist_log_probs: Tensor,
    specialist_probs: Tensor,
    maps: Tensor,
    active: Tensor,
    *,
    steps: int = 100,
    lr: float = 0.5,
) -> Tensor:
    r"""``log q`` (B, C) minimizing :func:`combination_objective` (Hinton et al. 2015, 5.4, step 2).

    Gradient descent on the logits ``z`` of ``q = softmax(z)``, from ``z = log p_g``, batched
    over examples and specialists. The gradient, in closed form (so it also runs under
    ``torch.inference_mode``):

        dJ/dz = (1 + |A|) q - p_g - sum_{m in A} r_m,    r_{m,c} = q_c p_{m,l(c)} / (q M_m)_{l(c)}

    where ``l(c)`` is the slot of class ``c`` in specialist ``m`` (its own index or the dustbin):
    ``r_m`` spreads each of ``p_m``'s slot masses over the classes of that slot in proportion to
    ``q``. The step is ``lr / (1 + |A|)`` times the gradient (dividing ``J`` by its number of
    terms leaves the minimizer unchanged and makes one ``lr`` suit any number of specialists).
    ``J`` is strictly convex in ``q`` (``p_g > 0``), so its only stationary point is the
    minimum. Rows with no active specialist return ``generalist_log_probs`` exactly.

    Shapes as in :func:`combination_objective`; ``generalist_log_probs`` are log-probabilities
    (e.g. ``log_softmax`` of the generalist's logits).
    """
    if steps < 0 or lr <= 0:
        raise ValueError(f"combine_specialists needs steps >= 0 and lr > 0, got steps={steps}, lr={lr}")
    dtype = torch.float64 if generalist_log_probs.dtype == torch.float64 else torch.float32
    log_pg = generalist_log_probs.to(dtype)
    p_g = log_pg.exp()
    maps = maps.to(dtype)
    weights = active.to(dtype).unsqueeze(-1) * specialist_probs.to(dtype)  # (B, K, L): inactive -> 0
    n_terms = 1.0 + active.to(dtype).sum(-1, keepdim=True)  # (B, 1)
    tiny = torch.finfo(dtype).tiny
    z = log_pg.clone()
    for _ in range(steps):
        q = z.exp()
        q_m = torch.einsum("bc,kcl->bkl", q, maps)
        r = q * torch.einsum("bkl,kcl->bc", weights / q_m.clamp_min(tiny), maps)  # sum over active m of r_m
        grad = n_terms * q - p_g - r
        z = torch.log_softmax(z - (lr / n_terms) * grad, dim=-1)
    return torch.where(active.any(-1, keepdim=True), z, log_pg).to(generalist_log_probs.dtype)


class SpecialistEnsemble(nn.Module):
    """A generalist and its specialists as one model: ``forward(x)`` returns ``log q`` (B, C).

    Per batch (Hinton et al. 2015, 5.4): run the generalist; find each example's active
    specialists (subset meets its ``top_classes`` most probable classes); run each specialist
    on the examples that need it only; combine with :func:`combine_specialists`. ``log q`` is a
    valid input to ``cross_entropy``/``argmax``, so :func:`distill.engine.evaluate` and
    :func:`distill.report.model_report` work on it like on any classifier.

    ``dustbin_offsets`` (one per specialist, default 0) are added to the specialists' dustbin
    logits before their softmax: :func:`dustbin_logit_offset` undoes the oversampling of the
    subset in their training sets.
    """

    # buffers, registered in __init__
    maps: Tensor
    mask: Tensor
    dustbin_offsets: Tensor

    def __init__(
        self,
        generalist: nn.Module,
        specialists: Sequence[nn.Module],
        subsets: Sequence[Sequence[int]],
        num_classes: int,
        *,
        top_classes: int = 2,
        steps: int = 100,
        lr: float = 0.5,
        dustbin_offsets: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if len(specialists) != len(subsets) or not subsets:
            raise ValueError(f"one subset per specialist: got {len(specialists)} specialists, {len(subsets)} subsets")
        if top_classes < 1:
            raise ValueError(f"top_classes must be >= 1, got {top_classes}")
        self.generalist = generalist
        self.specialists = nn.ModuleList(specialists)
        self.subsets = [_check_subset(s, num_classes) for s in subsets]
        self.num_classes = num_classes
        self.top_classes = top_classes
        self.steps = steps
        self.lr = lr
        offsets = [0.0] * len(subsets) if dustbin_offsets is None else [float(o) for o in dustbin_offsets]
        if len(offsets) != len(subsets):
            raise ValueError(f"dustbin_offsets has {len(offsets)} entries for {len(subsets)} specialists")
        self.register_buffer("maps", dustbin_maps(self.subsets, num_classes), persistent=False)
        self.register_buffer("mask", subset_mask(self.subsets, num_classes), persistent=False)
        self.register_buffer("dustbin_offsets", torch.tensor(offsets), persistent=False)

    def consulted(self, generalist_log_probs: Tensor) -> Tensor:
        """(B, K) bool: which specialists each example consults (:func:`active_specialists`)."""
        return active_specialists(generalist_log_probs, self.mask, self.top_classes)

    def forward(self, x: Tensor) -> Tensor:
        log_pg = F.log_softmax(self.generalist(x).float(), dim=-1)
        active = self.consulted(log_pg)
        probs = log_pg.new_zeros(x.shape[0], len(self.subsets), self.maps.shape[-1])
        for m, (specialist, subset) in enumerate(zip(self.specialists, self.subsets)):
            rows = torch.nonzero(active[:, m]).flatten()
            if rows.numel() == 0:
                continue
            logits = specialist(x[rows]).float()
            offset = F.pad(self.dustbin_offsets[m : m + 1], (len(subset), 0))  # (0, ..., 0, offset_m)
            probs[rows, m, : len(subset) + 1] = F.softmax(logits + offset, dim=-1)
        return combine_specialists(log_pg, probs, self.maps, active, steps=self.steps, lr=self.lr)
