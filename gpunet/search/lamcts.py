"""LA-MCTS: Latent Action Monte Carlo Tree Search over learned partitions of the search space.

Wang, Fonseca & Tian, "Learning Search Space Partition for Black-box Optimization using Monte Carlo Tree
Search", NeurIPS 2020; the searcher the GPUNet paper chose (its section 3.3.1). Every ask:

1. **Rebuild the tree** from all completed observations (:func:`build_tree`): a node holding more than
   ``leaf_size`` samples (:func:`default_leaf_size`: 20 as in the reference, fewer for small budgets) is split by k-means (k = 2) on ``(x, f(x))``; an SVM (RBF kernel, ``gamma="auto"``,
   as in the reference code) learns the boundary on ``x``, and the node's samples go to the "good" child (the
   cluster with the higher mean f) or the "bad" one by the SVM's prediction, so that a node's samples are exactly
   the ones inside its region. A node the SVM cannot split stays a leaf, and so does one whose split would leave
   a child fewer than ``min_child`` samples (:func:`default_min_child`: a GP's worth, the initial design's size,
   at most the leaf size; the reference splits whatever the children's sizes).
2. **Select a leaf** by UCB from the root (:func:`select_path`): each child scores
   ``mean f + 2 Cp sqrt(2 sqrt(n_parent) / n_child)`` (the reference code's form), with ``Cp = cp * (max f -
   min f)``, i.e. the exploration constant is scaled to the observed f (the paper advises 1-10 % of f).
3. **Sample in the region** of the leaf (the intersection of the SVM decisions along the path): BO (a GP fitted
   on all observations, up to ``max_gp_points``, and qLogEI over candidates restricted to the region: Sobol
   points and perturbations of the region's ``LOCAL_CENTERS`` (5) best samples, ``bo``'s design, so that on an
   unsplit tree ``lamcts-bo`` is ``bo``; refined by gradient ascent on continuous spaces when the result stays in
   the region) for ``lamcts-bo``, or a TuRBO trust region around the
   leaf's best point, intersected with the region, for ``lamcts-turbo``. Every candidate lies in the region
   (on pools too). When the region holds fewer than ``min_region_candidates`` (:data:`MIN_REGION_CANDIDATES`,
   32) unused candidates, the ask widens it to the parent node's region, and so on up to the root (the whole
   space), so that the acquisition has a real choice; each such fallback is counted in
   :attr:`LamctsSearcher.region_fallbacks` and described in :attr:`LamctsSearcher.last_region_fallback`, both
   kept in the searcher state. (The reference code falls back to uniform random samples, and only when its
   rejection sampling finds nothing in the region.)
4. The initial design is a scrambled Sobol sequence (the reference used a Latin hypercube).

scikit-learn provides k-means and the SVM; the GP, the candidate sets and the trust region come from
:mod:`.gp`, :mod:`.candidates` and :mod:`.turbo`.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import Option, positive_float, positive_int
from .bo import LOCAL_CENTERS, ModelSearcher
from .candidates import LOCAL_SIGMAS, candidates
from .gp import select_training
from .turbo import TrustRegionMixin, trust_region, update_turbo_state

logger = logging.getLogger(__name__)

#: Samples a leaf may hold before it is split (LA-MCTS reference default: 20).
LEAF_SIZE = 20
#: With a known budget the default leaf size is this fraction of it, within ``[MIN_LEAF_SIZE, LEAF_SIZE]``.
LEAF_FRACTION = 0.2
#: The smallest default leaf size: a node of three samples can then be split.
MIN_LEAF_SIZE = 2
#: Exploration constant as a fraction of the observed range of f (paper: 1-10 % of f).
CP = 0.1
#: An ask widens the selected region to its parent's while it holds fewer unused candidates than this (the
#: default of the ``min_region_candidates`` option). Why: on the NAS-Bench-201 tier pool, restricting the
#: candidates to leaf regions of a few pool members cost 4 of 10 seeds the tier's best architecture (they had all
#: reached it when small regions were padded with pool members from outside them; benchmarks/README.md), and a
#: region of a handful of candidates leaves the acquisition no choice. 32 is the count below which the old code
#: padded; 1 is the strict behaviour (widen only an empty region). Measured with 32 (same problem, 10 seeds,
#: 100 evaluations): 9 of 10 seeds reach the tier's best, against 6 of 10 with 1 (both before ``min_child`` and the
#: five local centres; with them, 7 of 10: benchmarks/README.md, third pass).
MIN_REGION_CANDIDATES = 32
#: Depth limit of the tree (a guard; with leaf_size 20 it is reached only past ~20 million samples).
MAX_DEPTH = 20


def default_leaf_size(budget: int | None) -> int:
    """The leaf size used when the ``leaf_size`` option is not set: ``LEAF_SIZE`` (20) without a budget, else
    ``int(LEAF_FRACTION * budget)`` clipped to ``[MIN_LEAF_SIZE, LEAF_SIZE]``.

    Why: a tree built from ``n`` samples splits only when ``n > leaf_size``. With the reference's 20 and the demo's
    budget of 6 evaluations per tier it never splits, and LA-MCTS is plain BO under another name. A fifth of the
    budget lets the tree split after a fifth of the evaluations and grow to a depth of about ``log2(5)``, 2 to 3,
    by the end; from a budget of 100 on it is the reference's 20 (budget 6: 2, splitting from the third sample
    on; budget 50: 10). A tenth of the budget was tried first: on the pool-free NAS-Bench-201 problem
    ``nb201-mnas:cifar100:pixel_litert:0.3`` (5 seeds, 100 evaluations) leaf size 10 ended at a median regret of
    1.31 where the reference's 20 had ended at 1.0 (that run before the categorical neighbours of
    :mod:`.candidates`, so the two differ in more than the leaf size; benchmarks/README.md).
    """
    if budget is None:
        return LEAF_SIZE
    return int(min(LEAF_SIZE, max(MIN_LEAF_SIZE, int(LEAF_FRACTION * budget))))


def default_min_child(n_init: int, leaf_size: int) -> int:
    """The fewest samples each child of a split must hold when the ``min_child`` option is not set:
    ``min(n_init, leaf_size)``, at least 1.

    Why: the reference LA-MCTS splits every node of more than ``leaf_size`` samples, however unequal the two
    k-means clusters are, so a node of 11 samples can get a child of 1 or 2. That child's region is an SVM
    boundary learned from a couple of points, and its mean, the exploitation term of the UCB (step 2), rests on
    them too; with the exploration term large for a small child, the UCB then sends asks into such a region, away
    from the incumbent. The searcher's own rule for how many samples a GP needs before its proposals are trusted is
    the initial design, ``n_init`` (:func:`~gpunet.search.bo.default_n_init`), so a split is kept only when both
    children hold that many: a "GP's worth". Capped at ``leaf_size`` so that a node of twice the leaf size can
    always be split, which keeps the tree splitting at small budgets (the demo's budget 6: leaf size 2, initial
    design 3, children of at least 2). Budget 50 on NAS-Bench-201's 6 x 5 space: 10 (leaf size 10, n_init 12);
    budget 100: 12 (leaf size 20). ``min_child=1`` is the reference's rule.
    """
    return max(1, min(int(n_init), int(leaf_size)))


@dataclass
class Node:
    """A node of the partition tree: the indices of its samples, their mean f, and for an inner node the SVM
    that sends a point to ``children[0]`` (good, label 1) or ``children[1]`` (bad, label 0)."""

    idx: np.ndarray
    mean: float
    depth: int = 0
    svm: Any = None
    children: list["Node"] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.idx)


def split_node(X: np.ndarray, y_scaled: np.ndarray, y: np.ndarray, node: Node, seed: int) -> tuple[Any, np.ndarray] | None:
    """Learn the split of one node: k-means (k = 2) on ``(x, f)``, an SVM on ``x``.

    Args:
        X: An `n x D` array of all features; y_scaled: an `n` array of f scaled to ``[0, 1]``; y: an `n` array of f.

    Returns:
        ``(svm, good_mask)`` with ``good_mask`` a boolean array over ``node.idx``, or None if not splittable.
    """
    from sklearn.cluster import KMeans
    from sklearn.svm import SVC

    Xn, yn = X[node.idx], y_scaled[node.idx]
    data = np.concatenate([Xn, yn[:, None]], axis=1)
    labels = KMeans(n_clusters=2, n_init=3, random_state=seed).fit_predict(data)
    if len(set(labels.tolist())) < 2:
        return None
    good_cluster = int(np.mean(y[node.idx][labels == 1]) > np.mean(y[node.idx][labels == 0]))
    target = (labels == good_cluster).astype(int)
    svm = SVC(kernel="rbf", gamma="auto")
    svm.fit(Xn, target)
    good = svm.predict(Xn) == 1
    if good.all() or not good.any():
        return None
    return svm, good


def build_tree(X: np.ndarray, y: np.ndarray, leaf_size: int, seed: int, min_child: int = 1) -> Node:
    """Build the partition tree over all observations (step 1 of the module docstring).

    Args:
        X: An `n x D` array of features; y: An `n` array of values (maximised).
        leaf_size: A node of more samples than this is split (if k-means and the SVM can split it).
        min_child: A split that leaves either child fewer samples than this is not made; the node stays a leaf
            (1: the reference's rule; the searcher's default is :func:`default_min_child`).
    """
    span = float(np.ptp(y)) if len(y) else 0.0
    y_scaled = (y - y.min()) / span if span > 0 else np.zeros_like(y)
    root = Node(np.arange(len(y)), float(np.mean(y)) if len(y) else 0.0)
    stack = [root]
    while stack:
        node = stack.pop()
        if node.n <= leaf_size or node.depth >= MAX_DEPTH:
            continue
        result = split_node(X, y_scaled, y, node, seed)
        if result is None:
            continue
        svm, good = result
        if min(int(good.sum()), int((~good).sum())) < min_child:
            continue
        node.svm = svm
        kids = [node.idx[good], node.idx[~good]]
        node.children = [Node(k, float(np.mean(y[k])), node.depth + 1) for k in kids]
        stack.extend(node.children)
    return root


def select_path(root: Node, cp: float, rng: np.random.Generator) -> list[tuple[Node, int]]:
    """UCB descent from the root to a leaf (step 2). Returns ``(node, child index)`` pairs; ties break at random."""
    path: list[tuple[Node, int]] = []
    node = root
    while node.children:
        ucb = np.array([c.mean + 2.0 * cp * np.sqrt(2.0 * np.sqrt(node.n) / c.n) for c in node.children])
        best = np.flatnonzero(ucb == ucb.max())
        choice = int(best[rng.integers(len(best))])
        path.append((node, choice))
        node = node.children[choice]
    return path


def in_region(path: list[tuple[Node, int]], Z: np.ndarray) -> np.ndarray:
    """Whether each row of ``Z`` (an `m x D` array) lies in the region the path leads to: a boolean `m` array."""
    ok = np.ones(len(Z), dtype=bool)
    for node, choice in path:
        if not ok.any():
            break
        want = 1 if choice == 0 else 0
        ok[ok] = node.svm.predict(Z[ok]) == want
    return ok


def leaf_of(root: Node, path: list[tuple[Node, int]]) -> Node:
    return path[-1][0].children[path[-1][1]] if path else root


class LamctsSearcher(ModelSearcher):
    """LA-MCTS with BO in the selected region (``lamcts-bo``, the default searcher of the system).

    ``leaf_size`` and ``min_child`` (the options, or their defaults from the budget and the initial design:
    :func:`default_leaf_size`, :func:`default_min_child`) are attributes too. Attributes besides
    :class:`~gpunet.search.bo.ModelSearcher`'s (both kept in the state dict):
        region_fallbacks: how many asks found fewer than ``min_region_candidates`` unused candidates in the
            selected leaf's region and searched an ancestor's region instead (module docstring, step 3).
        last_region_fallback: ``{"ask", "selected_depth", "used_depth", "selected_candidates"}`` of the latest
            fallback (depths count SVM decisions from the root, ``used_depth`` 0 being the whole space;
            ``selected_candidates``: the unused candidates found in the selected leaf's region), or None.
    """

    name = "lamcts-bo"
    OPTIONS = {
        **ModelSearcher.OPTIONS,
        "leaf_size": Option(None, lambda v: None if v is None else positive_int(v),
                            "samples a leaf may hold before it is split (default: from the budget, see default_leaf_size)"),
        "min_child": Option(None, lambda v: None if v is None else positive_int(v),
                            "fewest samples each child of a split must hold (default: see default_min_child)"),
        "cp": Option(CP, positive_float, "exploration constant as a fraction of the observed range of f"),
        "min_region_candidates": Option(MIN_REGION_CANDIDATES, positive_int, "unused candidates a region must hold, "
                                        "else the ask widens it to the parent's (1: only when it holds none)"),
    }

    def _post_init(self) -> None:
        super()._post_init()
        leaf = self.options["leaf_size"]
        self.leaf_size = leaf if leaf is not None else default_leaf_size(self.options["budget"])
        child = self.options["min_child"]
        self.min_child = child if child is not None else default_min_child(self.n_init, self.leaf_size)
        self.region_fallbacks = 0
        self.last_region_fallback: dict[str, int] | None = None

    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "region_fallbacks": self.region_fallbacks,
                "last_region_fallback": self.last_region_fallback}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        super()._load_extra_state(extra)
        self.region_fallbacks = int(extra.get("region_fallbacks", 0))
        self.last_region_fallback = extra.get("last_region_fallback")

    def _tree(self, X, y, rng):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = build_tree(X, y, self.leaf_size, int(rng.integers(2**31)), self.min_child)
        span = float(np.ptp(y)) or 1.0
        path = select_path(root, self.options["cp"] * span, rng)
        return root, path

    def _region_candidates(self, rng, root, path, lb, ub, centers_of, local_sigma=None):
        """Candidates in the box ``[lb, ub]`` and the region of ``path``; if that region holds fewer than
        ``min_region_candidates`` unused ones, those of the longest prefix of the path whose region holds enough
        (the empty prefix, the whole space, is taken whatever it holds), recording the fallback.

        Args:
            centers_of: Node -> a `c x D` array of the points to perturb around (see :func:`.candidates`).

        Returns:
            ``(Z, pts, node, region)``: the candidates, the node whose region they lie in, and that region (a
            function of an `m x D` array, or None for the whole space).
        """
        need = self.options["min_region_candidates"]
        found = 0
        for depth in range(len(path), -1, -1):
            sub = path[:depth]
            node = leaf_of(root, sub)
            region = (lambda Z, sub=sub: in_region(sub, Z)) if sub else None
            Z, pts = candidates(self, rng, lb, ub, centers_of(node), self.options["max_candidates"],
                                region=region, local_sigma=local_sigma)
            if depth == len(path):
                found = len(Z)
            if len(Z) >= need:
                break
        if depth < len(path):
            self.region_fallbacks += 1
            self.last_region_fallback = {"ask": self._asks - 1, "selected_depth": len(path), "used_depth": depth,
                                         "selected_candidates": found}
            logger.info("%s ask %d: %d unused candidates in the selected leaf's region (depth %d), fewer than %d; "
                        "searching the region at depth %d instead", self.name, self._asks - 1, found, len(path), need,
                        depth)
        return Z, pts, node, region

    def _model_propose(self, n, rng, X, y, Xpend):
        root, path = self._tree(X, y, rng)
        seed = int(rng.integers(2**31))
        D = self.space.num_features

        def centers_of(node):
            order = np.argsort(-y[node.idx], kind="stable")
            return X[node.idx[order[:LOCAL_CENTERS]]]

        Z, pts, node, region = self._region_candidates(rng, root, path, np.zeros(D), np.ones(D), centers_of, LOCAL_SIGMAS)
        if len(Z) == 0:
            return []
        best_in_node = X[node.idx[np.argmax(y[node.idx])]]
        idx = select_training(X, y, self.options["max_gp_points"], center=best_in_node if len(y) > self.options["max_gp_points"] else None)
        model, yw = self._fit(X[idx], y[idx], seed)
        return self._choose(X[idx], yw, Xpend, Z, pts, n, seed, model, np.zeros(D), np.ones(D), region)


class LamctsTurboSearcher(TrustRegionMixin, LamctsSearcher):
    """LA-MCTS with a TuRBO-1 trust region in the selected region (``lamcts-turbo``).

    One trust-region state (length, counters; :class:`~gpunet.search.turbo.TurboState`) is kept across asks; the
    region is centred on the best sample of the selected leaf and intersected with the leaf's region (or an
    ancestor's, when the leaf's holds too few candidates; see :class:`LamctsSearcher`).
    """

    name = "lamcts-turbo"

    def _on_tell(self, trial):
        state = update_turbo_state(self.turbo, float(trial.value), len(self._tell_order))
        # a restart here only resets the trust region; the tree keeps every observation
        self.turbo = dataclasses.replace(state, epoch_start=0) if state.restarts != self.turbo.restarts else state

    def _model_propose(self, n, rng, X, y, Xpend):
        root, path = self._tree(X, y, rng)
        leaf = leaf_of(root, path)
        seed = int(rng.integers(2**31))
        center = X[leaf.idx[int(np.argmax(y[leaf.idx]))]]
        idx = select_training(X, y, self.options["max_gp_points"], center=center)
        model, yw = self._fit(X[idx], y[idx], seed)
        lb, ub = trust_region(center, model, self.turbo.length)
        Z, pts, _, region = self._region_candidates(rng, root, path, lb, ub, lambda node: center[None, :])
        if len(Z) == 0:
            return []
        return self._choose(X[idx], yw, Xpend, Z, pts, n, seed, model, lb, ub, region)
