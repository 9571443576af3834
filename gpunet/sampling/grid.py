"""The layer grid: every layer configuration of a search space, numbered, for a vectorised latency estimate.

The paper (3.2) estimates a network's latency as the sum of its layers' latencies from the latency table, for
millions of sampled networks. :class:`LayerGrid` numbers the layer keys a space can produce and keeps, per
stage, a dense array from the stage's configuration cell to key numbers, so that the layers of ``n``
networks are found with array arithmetic and one gather (no Python loop per network).
:class:`LatencyEstimator` binds a grid to a :class:`~gpunet.latency.LatencyTable`.

Layer shapes come from :func:`gpunet.arch.stage_layers` and :func:`gpunet.arch.head_layer`, the same
derivation that :meth:`gpunet.arch.Architecture.layer_specs` uses: called once per stage on the grid's cells
to make the keys, and once per stage on the columns of the sampled vectors to look them up.

A stage whose block type is searched (``gpunet-x``: fused IRB or IRB; conv or space-to-depth stem) keeps one
row of key numbers per block choice; its choices share their shape rule, so the cell is found once and the
block digit picks the row.

Shapes: ``vectors`` is an ``n x d`` integer array (``d`` = :attr:`SearchSpace.vector_length`: 41 in Table 2
order, plus the space's block digits; values not indices); latencies are ``n`` float64 arrays in ms.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from ..arch import ACTIVATIONS, BLOCK_TYPES, NUM_STAGES, LayerSpec, head_layer, stage_layers
from ..errors import SpaceError
from ..latency.errors import LatencyError, MissingLayersError
from ..latency.estimate import FEATURE_TYPES, feature_type_index
from ..latency.keys import LatencyTarget, LayerKey, key_text, text_digest
from ..space import SearchSpace

if TYPE_CHECKING:  # pragma: no cover
    from ..latency.estimate import Calibration
    from ..latency.table import LatencyTable

#: Columns of :meth:`LayerGrid.layer_ids`: the stem, the first layer of stages 1-7, the repeated layer of
#: stages 1-7 (layers 2.. of a stage share one configuration), the head.
NUM_COLUMNS = 1 + 2 * (NUM_STAGES - 1) + 1
HEAD_COLUMN = NUM_COLUMNS - 1
#: Networks per step of :meth:`LayerGrid.estimate` (keeps the ``n x 16`` temporaries in cache).
CHUNK = 1 << 16
#: The fields of a layer that pick its cell in a stage's dense index; type, stride and classes are fixed per stage.
CELL_FIELDS: tuple[str, ...] = ("input channels", "input size", "filters", "kernel", "expansion", "SE", "activation")


def _cell_values(spec: LayerSpec) -> tuple[Any, ...]:
    """A spec's values of :data:`CELL_FIELDS` (scalars or arrays)."""
    _, c, h, _ = spec.input_shape
    return (c, h, spec.out_chs, spec.kernel, spec.expansion, spec.se, spec.act)


def _stage_inputs(space: SearchSpace, s: int, digit: Callable[[int, str], Any]) -> dict[str, Any]:
    """Stage ``s``'s configuration as :meth:`SearchSpace.decode` reads it, where ``digit(stage, attr)`` gives a
    digit's allowed values (grid construction) or its column of the vectors (lookup)."""
    if s == 0:  # the stem: filters are encoded, kernel and activation fixed by the space (Table 2)
        return dict(filters=digit(0, "filters"), kernel=space.stem_kernel, expansion=1, se=0,
                    act=ACTIVATIONS.index(space.stem_act), layers=1)
    encoded = {d.attr for d in space.digits if d.stage == s}
    return dict(
        filters=digit(0 if s == 1 else s, "filters"),  # stage 1 shares stage 0's filters
        kernel=digit(s, "kernel"),
        expansion=digit(s, "expansion") if "expansion" in encoded else 1,
        se=digit(s, "se") if "se" in encoded else 0,
        act=digit(s, "act"),
        layers=digit(s, "layers"),
    )


@dataclass
class _CellIndex:
    """The dense index of one column group's layer configurations, over :data:`CELL_FIELDS`.

    Attributes:
        axes: the sorted values of each cell field.
        radix: strides of the mixed-radix cell number.
        first: key number of the stage's first layer (or the head) per block choice and cell, a
            ``blocks x cells`` array (-1: unreachable).
        repeat: the same for the stage's repeated layer (-1: none).
    """

    axes: list[np.ndarray]
    radix: np.ndarray
    first: np.ndarray
    repeat: np.ndarray

    @classmethod
    def over(cls, spec: LayerSpec, blocks: int = 1) -> "_CellIndex":
        """An empty index whose axes hold every value of ``spec``'s cell fields (arrays over the grid's cells),
        for ``blocks`` block choices."""
        axes = [np.unique(np.asarray(x, dtype=np.int64)) for x in _cell_values(spec)]
        shape = tuple(len(a) for a in axes)
        radix = np.cumprod((shape[1:] + (1,))[::-1])[::-1].astype(np.int64)
        size = (blocks, int(np.prod(shape)))
        return cls(axes, radix, np.full(size, -1, dtype=np.int64), np.full(size, -1, dtype=np.int64))

    def cells(self, spec: LayerSpec, where: str) -> np.ndarray:
        """Cell numbers of ``spec``'s layers (arrays, or scalars that broadcast).

        Raises:
            SpaceError: a value outside the grid, named ``<where> <field>`` (``resolution`` for the stem's size).
        """
        cell: Any = 0
        for axis, x, r, name in zip(self.axes, _cell_values(spec), self.radix, CELL_FIELDS):
            x = np.asarray(x)
            idx = np.minimum(np.searchsorted(axis, x), len(axis) - 1)
            bad = axis[idx] != x
            if bad.any():
                field = "resolution" if where == "stage 0" and name == "input size" else f"{where} {name}"
                raise SpaceError(field, int(np.broadcast_to(x, bad.shape)[bad].flat[0]), tuple(axis.tolist()))
            cell = cell + idx * r
        return cell


def _key_rows(spec: LayerSpec, n: int) -> Iterator[tuple[Any, ...]]:
    """``(type, C, H, W, out_chs, kernel, stride, expansion, se, act, num_classes)`` of each of ``n`` cells."""
    _, c, h, w = spec.input_shape
    columns = [np.broadcast_to(np.asarray(x), (n,)).tolist() for x in
               (c, h, w, spec.out_chs, spec.kernel, spec.stride, spec.expansion, spec.se, spec.act, spec.num_classes)]
    return ((spec.type, *row) for row in zip(*columns))


class LayerGrid:
    """Every layer configuration that the networks of ``space`` can contain, for one latency target.

    The grid numbers the unique :class:`~gpunet.latency.keys.LayerKey` s of the space (``0 .. len(grid)-1``)
    and keeps, per stage, a dense array from the stage's configuration cell (input channels, input size,
    filters, kernel, expansion, SE, activation) to key numbers. :meth:`layer_ids` then turns an ``n x 41``
    array of vectors into an ``n x 16`` array of key numbers and an ``n x 16`` array of how often each
    occurs, with a few numpy operations per stage (paper 3.2's table lookup, vectorised).

    Key numbers follow a fixed order (stem, then each stage's block choices, each with its cells with first
    and repeated layer, then the head; cells in row-major order of the sorted cell fields), so a space and
    target always give the same grid.

    Args:
        space: the search space.
        target: backend, device, precision and batch size of the keys.

    Attributes:
        keys_text: the text of every key, by key number.
        digests: the digest of every key, by key number (``numpy`` array of str).
        types: the calibration feature type index (into :data:`gpunet.latency.estimate.FEATURE_TYPES`) of every key.
    """

    def __init__(self, space: SearchSpace, target: LatencyTarget) -> None:
        self.space, self.target = space, target
        self._ids: dict[str, int] = {}
        self._args: list[tuple[Any, ...]] = []
        self.keys_text: list[str] = []
        self._col = {(d.stage, d.attr): d.index for d in space.digits}
        self._build()
        self.digests = np.asarray(list(self._ids), dtype=object)
        self.types = np.asarray([feature_type_index(a[0]) for a in self._args], dtype=np.int8)

    # --- construction --------------------------------------------------------------------------
    def _key_id(self, typ: str, c: int, h: int, w: int, out: int, k: int, s: int, e: int, se: int, act: int,
                cls: int) -> int:
        t = self.target
        name = ACTIVATIONS[act]
        text = key_text(typ, t.batch_size, c, h, w, out, k, s, e, se, name, cls, t.backend, t.device, t.precision)
        digest = text_digest(text)
        found = self._ids.get(digest)
        if found is None:
            found = self._ids[digest] = len(self._args)
            self._args.append((typ, c, h, w, out, k, s, e, se, name, cls))
            self.keys_text.append(text)
        return found

    def _build(self) -> None:
        space = self.space
        allowed = {(d.stage, d.attr): np.asarray(sorted(d.values), dtype=np.int64) for d in space.digits}
        chans = np.asarray([space.in_chans], dtype=np.int64)
        sizes = np.asarray(sorted(space.resolution), dtype=np.int64)
        self._stages: list[_CellIndex] = []
        for s in range(NUM_STAGES):
            rng = space.stages[s]
            inputs = _stage_inputs(space, s, lambda stage, attr: allowed[(stage, attr)])
            layers = np.asarray(inputs.pop("layers"))
            axes = [chans, sizes] + [np.atleast_1d(inputs[a]) for a in ("filters", "kernel", "expansion", "se", "act")]
            mesh = [m.ravel() for m in np.meshgrid(*axes, indexing="ij")]
            first, _ = stage_layers(rng.block, rng.stride, *mesh, stage=s)
            valid = mesh[0] == mesh[2] if s == 1 else np.ones(len(mesh[0]), dtype=bool)  # stage 1: in = out channels
            index = _CellIndex.over(first, len(rng.blocks))
            cells = index.cells(first, f"stage {s}")[valid].tolist()
            n = len(valid)
            with_first, with_repeat = layers.max() >= 1, layers.max() >= 2
            for b, block in enumerate(rng.blocks):
                first_b, repeat_b = stage_layers(block, rng.stride, *mesh, stage=s)
                rows = zip(_key_rows(first_b, n), _key_rows(repeat_b, n), valid.tolist())
                cell_rows = ((f, r) for f, r, ok in rows if ok)
                for cell, (f, r) in zip(cells, cell_rows):  # key numbers in cell order: first, then repeated layer
                    if with_first:
                        index.first[b, cell] = self._key_id(*f)
                    if with_repeat:
                        index.repeat[b, cell] = self._key_id(*r)
            self._stages.append(index)
            _, out_chans, out_sizes, _ = first.output_shape
            reached = (np.unique(np.asarray(out_chans)[valid]), np.unique(np.asarray(out_sizes)[valid]))
            if 0 in layers:  # a stage that may be skipped passes its input through as well
                chans, sizes = np.union1d(chans, reached[0]), np.union1d(sizes, reached[1])
            else:
                chans, sizes = reached
        mesh = [m.ravel() for m in np.meshgrid(chans, sizes, indexing="ij")]
        head = head_layer(mesh[0], mesh[1], space.head_channels, ACTIVATIONS.index(space.head_act), space.num_classes)
        self._head = _CellIndex.over(head)
        for cell, row in zip(self._head.cells(head, "head").tolist(), _key_rows(head, len(mesh[0]))):
            self._head.first[0, cell] = self._key_id(*row)

    # --- keys ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._args)

    def key(self, i: int) -> LayerKey:
        """The :class:`LayerKey` of key number ``i``."""
        typ, c, h, w, out, k, s, e, se, act, cls = self._args[int(i)]
        t = self.target
        return LayerKey(typ, (t.batch_size, c, h, w), out, k, s, e, bool(se), act, cls, t.backend, t.device, t.precision)

    def keys(self, ids: Iterable[int] | None = None) -> list[LayerKey]:
        """The keys of the given numbers (default: all, in number order)."""
        return [self.key(i) for i in (range(len(self)) if ids is None else ids)]

    # --- vectorised lookup ---------------------------------------------------------------------------
    def layer_ids(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Key numbers and multiplicities of the layers of ``n`` networks.

        Args:
            vectors: an ``n x d`` integer array of valid vectors of this grid's space (``d`` = its vector length).

        Returns:
            ``(ids, counts)``: two ``n x 16`` arrays (int64, int32). Column 0 is the stem, 1-7 the first
            layer of stages 1-7, 8-14 their repeated layer, 15 the head. Network ``i`` consists of layer
            ``ids[i, j]`` taken ``counts[i, j]`` times; where ``counts`` is 0, ``ids`` is ``len(self)``
            (a sentinel for a zero latency).

        Raises:
            SpaceError: a digit value that is not in the space (names the stage/attribute and the allowed values).
        """
        v = np.asarray(vectors, dtype=np.int64)
        if v.ndim != 2 or v.shape[1] != self.space.vector_length:
            raise SpaceError("vectors", v.shape, f"an n x {self.space.vector_length} array")
        n = v.shape[0]
        ids = np.empty((n, NUM_COLUMNS), dtype=np.int64)
        counts = np.zeros((n, NUM_COLUMNS), dtype=np.int32)
        col = self._col
        space = self.space
        chans: Any = space.in_chans
        size = v[:, col[(None, "resolution")]]
        for s, index in enumerate(self._stages):
            rng = space.stages[s]
            inputs = _stage_inputs(space, s, lambda stage, attr: v[:, col[(stage, attr)]])
            layers = inputs.pop("layers")
            first, _ = stage_layers(rng.block, rng.stride, chans, size, **inputs, stage=s)
            cell = index.cells(first, f"stage {s}")
            choice = self._block_choice(v, s)
            has = np.broadcast_to(np.asarray(layers) > 0, (n,))
            counts[:, s] = has
            ids[:, s] = index.first[choice, cell]
            if s > 0:  # the stem is one layer; stages 1-7 may repeat theirs
                counts[:, NUM_STAGES - 1 + s] = np.maximum(layers - 1, 0)
                ids[:, NUM_STAGES - 1 + s] = index.repeat[choice, cell]
            _, out_chans, out_size, _ = first.output_shape
            chans, size = np.where(has, out_chans, chans), np.where(has, out_size, size)
        head = head_layer(chans, size, space.head_channels, ACTIVATIONS.index(space.head_act), space.num_classes)
        ids[:, HEAD_COLUMN] = self._head.first[0, self._head.cells(head, "head")]
        counts[:, HEAD_COLUMN] = 1
        ids[counts == 0] = len(self)
        return ids, counts

    def _block_choice(self, v: np.ndarray, s: int) -> Any:
        """Row of stage ``s``'s cell index per network: the position of its block digit's value among the
        stage's choices (0 when the block type is not searched).

        Raises:
            SpaceError: a block digit outside the stage's choices.
        """
        column = self._col.get((s, "block"))
        if column is None:
            return 0
        codes = np.asarray([BLOCK_TYPES.index(b) for b in self.space.stages[s].blocks], dtype=np.int64)
        x = v[:, column]
        choice = np.minimum(np.searchsorted(codes, x), len(codes) - 1)
        bad = codes[choice] != x
        if bad.any():
            raise SpaceError(f"stage {s} block", int(x[bad][0]), tuple(codes.tolist()))
        return choice

    def needed_ids(self, vectors: np.ndarray) -> np.ndarray:
        """Sorted unique key numbers that the networks of ``vectors`` contain."""
        ids, counts = self.layer_ids(vectors)
        return np.unique(ids[counts > 0])

    def values_from(self, medians: dict[str, float]) -> np.ndarray:
        """Per-key latency array (ms, length ``len(self) + 1``; NaN where missing, 0 for the sentinel)."""
        out = np.fromiter((medians.get(d, np.nan) for d in self.digests), dtype=np.float64, count=len(self))
        return np.append(out, 0.0)

    def estimate(self, vectors: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Sum of layer latencies of ``n`` networks: ``(values[ids] * counts).sum(1)``, an ``n`` array (ms).

        ``values`` comes from :meth:`values_from`; a network with a missing layer gets NaN.
        """
        v = np.asarray(vectors)
        out = np.empty(len(v))
        for start in range(0, len(v), CHUNK):
            ids, counts = self.layer_ids(v[start : start + CHUNK])
            out[start : start + len(ids)] = (values[ids] * counts).sum(axis=1)
        return out

    def features(self, vectors: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Calibration features of ``n`` networks, an ``n x 6`` array: total ms, ms of conv (space-to-depth
        stems included), fused-IRB, IRB and head layers, number of layers (see :mod:`gpunet.latency.estimate`)."""
        ids, counts = self.layer_ids(vectors)
        lat = values[ids] * counts
        types = np.append(self.types, -1)[ids]
        out = np.empty((len(ids), 6))
        out[:, 0] = lat.sum(axis=1)
        for t in range(len(FEATURE_TYPES)):
            out[:, 1 + t] = np.where(types == t, lat, 0.0).sum(axis=1)
        out[:, 5] = counts.sum(axis=1)
        return out


@functools.lru_cache(maxsize=8)
def layer_grid(space: SearchSpace, target: LatencyTarget) -> LayerGrid:
    """The :class:`LayerGrid` of ``(space, target)``, built once per process and then shared (read-only).

    Building one takes about a second for the ``gpunet`` preset (133k keys); controllers that plan and
    estimate repeatedly should get grids from here.
    """
    return LayerGrid(space, target)


class LatencyEstimator:
    """The table estimate of many networks at once: a :class:`LayerGrid` with the table's values loaded.

    Args:
        space: the search space of the vectors.
        table: the latency table (read once, at construction; call :meth:`reload` after new entries).
        target: backend/device/precision/batch size of the entries to use.
        calibration: optional :class:`~gpunet.latency.estimate.Calibration` applied by :meth:`estimate`
            when ``calibrated=True``.
        grid: a grid for ``(space, target)``; default: the shared one of :func:`layer_grid`.
    """

    def __init__(self, space: SearchSpace, table: "LatencyTable | dict[str, float]", target: LatencyTarget, *,
                 calibration: "Calibration | None" = None, grid: LayerGrid | None = None) -> None:
        self.space, self.table, self.target = space, table, target
        self.grid = grid if grid is not None else layer_grid(space, target)
        self.calibration = calibration
        self.reload()

    def reload(self) -> None:
        medians = self.table if isinstance(self.table, dict) else self.table.medians(self.target)
        self.values = self.grid.values_from(medians)

    def missing_keys(self, vectors: np.ndarray) -> list[LayerKey]:
        """Keys the networks of ``vectors`` need that the table lacks (in key-number order)."""
        ids = self.grid.needed_ids(vectors)
        return self.grid.keys(ids[np.isnan(self.values[ids])])

    def estimate(self, vectors: np.ndarray, *, calibrated: bool = False, allow_missing: bool = False) -> np.ndarray:
        """Estimated latency (ms) of ``n`` networks, an ``n`` float64 array (paper 3.2: sum of layer latencies).

        Args:
            vectors: ``n x d`` integer array (``d`` = the space's vector length).
            calibrated: apply the calibration (raises :class:`~gpunet.latency.LatencyError` when there is none).
            allow_missing: return NaN for networks with a missing layer instead of raising.

        Raises:
            MissingLayersError: a layer is not in the table (and ``allow_missing`` is false).
        """
        if calibrated and self.calibration is None:
            raise LatencyError("calibrated", True, "a calibration (fit one with `gpunet latency validate`)")
        if calibrated:
            feats = self.grid.features(vectors, self.values)
            est = self.calibration.apply(feats)  # type: ignore[union-attr]
        else:
            est = self.grid.estimate(vectors, self.values)
        if not allow_missing and np.isnan(est).any():
            raise MissingLayersError(self.missing_keys(np.asarray(vectors)[np.isnan(est)][:1000]))
        return est
