"""Walking ONNX graphs with their control-flow bodies (Loop, Scan, If), for every module that rewrites,
counts or summarises nodes."""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in ``node``'s attributes (a Loop's or Scan's body, an If's branches), in order."""
    found = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            found.extend(attr.graphs)
    return found


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in it, depth first."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from all_graphs(sub)


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Put ``graph``'s nodes in an order where each comes after the producers of what it reads (bodies' outer
    references included), keeping the given order where it already is one.

    ONNX Runtime's FP16 converter appends the casts it inserts for float32 inputs at the end of the node list;
    ONNX Runtime does not mind, but ONNX requires a sorted graph: its checker and reference evaluator refuse one
    that is not, and its shape inference leaves the types of what the misplaced nodes feed unknown. Raises
    ValueError for a graph with a cycle."""
    import heapq

    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    needs: list[set[int]] = []
    for i, node in enumerate(nodes):
        names = set(node.input)
        for body in subgraphs(node):
            names |= {name for g in all_graphs(body) for n in g.node for name in n.input}
        needs.append({producer[n] for n in names if n in producer and producer[n] != i})
    users: dict[int, list[int]] = {}
    for i, deps in enumerate(needs):
        for d in deps:
            users.setdefault(d, []).append(i)
    waiting = [len(deps) for deps in needs]
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ValueError(f"graph {graph.name!r} has a cycle: {len(nodes) - len(order)} nodes unsorted")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
