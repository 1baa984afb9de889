"""Two-layer GCN (Kipf & Welling 2017) on a Cora-sized citation graph, with sparse aggregation over edges.

Table I batch 1 (one graph). Cora: 2,708 nodes, 1,433 bag-of-words features, 7 classes, 5,278 undirected
citation links given as 10,556 directed edges; hidden size 16, no bias, ReLU between the layers, Glorot
weights, as in the Kipf & Welling code (dropout only trains). Each layer is H' = D^-1/2 (A + I) D^-1/2 H W
with the renormalisation of the paper, and the propagation runs over the edge list, never as a dense
2,708 x 2,708 product: self loops are appended to the edges, each edge's weight is deg(src)^-1/2 deg(dst)^-1/2
with degrees counted over the targets, and a layer gathers the rows of H W at the edge sources, scales them and
sums them per target. The edges are ordered by target (an argsort, ONNX TopK), so that each node's incoming
edges form one contiguous segment; a segment's sum is the difference of a running sum (ONNX CumSum) at its two
ends (``segment_sums`` says why not a scatter-add), and the degrees are the segment lengths. The normalisation
is computed inside the graph from the ``edges`` input, so any valid edge list can be fed.

Inputs: ``features`` (batch, nodes, features) float32, row-normalised binary bag-of-words as the code's
preprocess_features makes them, and ``edges`` (batch, 2, E) int64, row 0 the source and row 1 the target
of each directed edge, both directions of every undirected link present. Output: per-node class logits
(batch, nodes, classes). The features are a dense input here, as the catalogue's inputs are dense arrays;
the original code multiplies a sparse feature matrix (about 1.3% non-zero on Cora).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from models import InputSpec, ModelSpec

# Mean non-zero words per Cora paper (49,216 non-zeros over 2,708 nodes), as a fraction of the vocabulary.
WORDS_PER_NODE = 49216 / 2708


def inputs(cfg: Mapping[str, Any]) -> list[InputSpec]:
    """``features`` (batch, nodes, features) float32 in [0, 1] and ``edges`` (batch, 2, edges) int64 node ids."""
    return [
        InputSpec("features", ("batch", cfg["nodes"], cfg["features"]), "float32", 0.0, 1.0),
        InputSpec("edges", ("batch", 2, cfg["edges"]), "int64", 0, cfg["nodes"]),
    ]


def random_graph(nodes: int, edges: int, rng: np.random.Generator) -> np.ndarray:
    """A random undirected simple graph as a (2, edges) directed edge list: ``edges / 2`` distinct node pairs,
    no self loops, each pair present in both directions, in random order."""
    if edges % 2:
        raise ValueError(f"an undirected edge list has an even number of directed edges, got {edges}")
    links = edges // 2
    if links > nodes * (nodes - 1) // 2:
        raise ValueError(f"{nodes} nodes have at most {nodes * (nodes - 1) // 2} distinct links, asked for {links}")
    codes = np.empty(0, dtype=np.int64)
    while len(codes) < links:
        a = rng.integers(0, nodes, size=2 * links)
        b = rng.integers(0, nodes, size=2 * links)
        keep = a != b
        pairs = np.minimum(a, b)[keep] * nodes + np.maximum(a, b)[keep]
        codes = np.unique(np.concatenate([codes, pairs]))
    codes = rng.permutation(codes)[:links]
    low, high = codes // nodes, codes % nodes
    directed = np.stack([np.concatenate([low, high]), np.concatenate([high, low])])
    return directed[:, rng.permutation(edges)]


def sampler(cfg: Mapping[str, Any], batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One graph per sample: Cora-like sparse binary features, row-normalised (each node has about 18 words,
    at least one), and a random simple undirected graph with ``cfg["edges"]`` directed edges."""
    nodes, width = cfg["nodes"], cfg["features"]
    words = rng.random((batch, nodes, width)) < min(1.0, WORDS_PER_NODE / width)
    empty = ~words.any(axis=-1)
    words[empty, rng.integers(0, width, size=int(empty.sum()))] = True
    features = (words / words.sum(axis=-1, keepdims=True)).astype(np.float32)
    edges = np.stack([random_graph(nodes, cfg["edges"], rng) for _ in range(batch)])
    return {"features": features, "edges": edges}


@functools.cache
def _layers() -> dict[str, type]:
    """The GCN layers, defined on first use so that importing this module never loads Keras."""
    import keras
    import tensorflow as tf

    class NormalizedEdges(keras.layers.Layer):
        """edges (batch, 2, E) -> the edge list with self loops, ordered by target, and its segments.

        Returns (sources, weights), each (batch * (E + N),) in target order, and (starts, ends), each
        (batch * N,): the edges into node i are positions starts[i]..ends[i] - 1 of that order. Node ids are
        offset by ``b * N`` for graph b, so the graphs of a batch share one flat node axis. weight =
        deg(src)^-1/2 deg(dst)^-1/2 with deg counted over the targets, self loop included.

        The order is an argsort of target * 2 + (1 for a real edge, 0 for a self loop): every node has its
        self loop, so it owns a segment, its self loop comes first in it, and segment i starts where the
        self loop (E + i in graph b's edge list) lands; it ends where segment i + 1 starts. Degrees are the
        segment lengths. Everything has a static shape and nothing is written twice (see ``segment_sums``).
        """

        def __init__(self, nodes: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.nodes = nodes

        def call(self, edges: Any) -> Any:
            batch = tf.shape(edges, out_type=tf.int64)[0]
            per_graph = edges.shape[2] + self.nodes
            loops = tf.broadcast_to(tf.range(self.nodes, dtype=tf.int64), (batch, self.nodes))
            graph_ids = tf.range(batch, dtype=tf.int64)[:, tf.newaxis]
            offsets = graph_ids * self.nodes
            sources = tf.reshape(tf.concat([edges[:, 0], loops], axis=1) + offsets, [-1])
            targets = tf.reshape(tf.concat([edges[:, 1], loops], axis=1) + offsets, [-1])
            is_edge = tf.reshape(tf.concat([tf.ones_like(edges[:, 0]), tf.zeros_like(loops)], axis=1), [-1])
            order = radix_argsort(targets * 2 + is_edge)
            # The inverse permutation (every position written once), then each self loop's place in the order.
            total = tf.shape(order, tf.int64)
            place = tf.scatter_nd(order[:, tf.newaxis], tf.range(total[0]), total)
            loop_ids = graph_ids * per_graph + edges.shape[2] + tf.range(self.nodes, dtype=tf.int64)
            starts = tf.gather(place, tf.reshape(loop_ids, [-1]))
            ends = tf.concat([starts[1:], total], axis=0)
            inv_sqrt = tf.math.rsqrt(tf.cast(ends - starts, "float32"))
            sources, targets = tf.gather(sources, order), tf.gather(targets, order)
            return sources, tf.gather(inv_sqrt, sources) * tf.gather(inv_sqrt, targets), starts, ends

    class GraphConvolution(keras.layers.Layer):
        """(H (batch, N, F), sources, weights, starts, ends) -> D^-1/2 (A + I) D^-1/2 H W, (batch, N, units)."""

        def __init__(self, units: int, activation: Any = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.units, self.activation = units, activation

        def build(self, input_shape: Any) -> None:
            self.kernel = self.add_weight(
                shape=(input_shape[0][-1], self.units), initializer="glorot_uniform", name="kernel"
            )

        def call(self, inputs: Any) -> Any:
            h, sources, weights, starts, ends = inputs
            nodes = h.shape[1]
            # H W first (the narrow side), then propagate the units-wide rows along the edges.
            projected = tf.reshape(tf.matmul(h, self.kernel), [-1, self.units])
            messages = tf.gather(projected, sources) * weights[:, tf.newaxis]
            out = tf.reshape(segment_sums(messages, starts, ends), [-1, nodes, self.units])
            return out if self.activation is None else self.activation(out)

    return {"NormalizedEdges": NormalizedEdges, "GraphConvolution": GraphConvolution}


def radix_argsort(keys: Any) -> Any:
    """A stable ascending argsort (int64) of non-negative int64 ``keys`` below 2**30, as three stable sorts by
    10-bit digits, least significant first.

    tf2onnx sorts through ONNX TopK on a float copy of the keys (ONNX Runtime has no integer TopK), and the
    FP16 converter makes that copy float16, which holds integers exactly only up to 2048: a one-pass sort of
    the GCN's keys (up to 2 * 2708 + 1) came out of order in FP16 and 25% of the node classes changed,
    measured. Digits below 1024 are exact in float16; TopK breaks ties by index, so each pass is stable.
    """
    import tensorflow as tf

    order = tf.range(tf.size(keys, out_type=tf.int64))
    for place in (1, 1024, 1024**2):
        # Integer division and remainder: ONNX's bitwise ops need opset 18.
        digits = tf.math.floormod(tf.math.floordiv(tf.gather(keys, order), place), 1024)
        order = tf.gather(order, tf.argsort(digits, stable=True))
    return order


def segment_sums(values: Any, starts: Any, ends: Any) -> Any:
    """Sums of the rows ``values[starts[i]:ends[i]]`` for every i, from one running sum (ONNX CumSum).

    The plain spellings of a scatter-add over edges export badly. tf.tensor_scatter_nd_add becomes one ONNX
    ScatterND with reduction "add", which ONNX Runtime 1.32 computes wrongly on more than one intra-op
    thread (concurrent adds to one row are lost: logits off by up to 15% of their scale here, measured) and
    has no float16 kernel. tf.math.unsorted_segment_sum becomes a gather into a (nodes, largest in-degree)
    table whose size depends on the edge values, so neither the memory nor the FLOP count is fixed by the
    shapes. Contiguous segments of edges ordered by target need neither: a cumulative sum with a zero row in
    front, read at the segment ends minus at the starts. The running sum is kept in float64: in float32 the
    difference of two running sums over 13k rows (positive ones after the ReLU) lost 1e-4 of the logits'
    scale against a dense float64 computation, measured; in float64 the result is as exact as summing each
    segment directly.
    """
    import tensorflow as tf

    running = tf.cumsum(tf.cast(values, tf.float64), axis=0)
    running = tf.concat([tf.zeros_like(running[:1]), running], axis=0)
    return tf.cast(tf.gather(running, ends) - tf.gather(running, starts), values.dtype)


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """A seeded Keras GCN: (features, edges) -> ``logits`` (batch, nodes, classes)."""
    import keras

    layers = _layers()
    keras.utils.set_random_seed(seed)
    features = keras.Input((cfg["nodes"], cfg["features"]), dtype="float32", name="features")
    edges = keras.Input((2, cfg["edges"]), dtype="int64", name="edges")
    graph = layers["NormalizedEdges"](cfg["nodes"], name="normalized_edges")(edges)
    hidden = layers["GraphConvolution"](cfg["hidden"], keras.activations.relu, name="graph_convolution_1")(
        [features, *graph]
    )
    logits = layers["GraphConvolution"](cfg["classes"], name="graph_convolution_2")([hidden, *graph])
    return keras.Model([features, edges], logits, name="gcn")


SPECS = [
    ModelSpec(
        name="gcn",
        category="recommendation",
        framework="tensorflow",
        task="classification",
        paper_model="GCN",
        paper_batch=1,
        summary="two-layer GCN, Cora sizes (2708 nodes, 1433 features, 10556 edges), hidden 16, 7 classes",
        configs={
            "full": {"nodes": 2708, "features": 1433, "edges": 10556, "hidden": 16, "classes": 7},
            "tiny": {"nodes": 12, "features": 20, "edges": 24, "hidden": 4, "classes": 3},
        },
        inputs=inputs,
        outputs=("logits",),
        build=build,
        sampler=sampler,
    )
]
