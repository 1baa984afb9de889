"""Walking ONNX graphs with their control-flow bodies (Loop, Scan, If), for every module that rewrites,
counts or summarises nodes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np
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


def fold_fixed_ifs(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], fixed: Iterable[str]
) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with every main-graph If whose condition depends only on the inputs named in ``fixed`` (given
    one value for the whole run with ``--input-values``), initializers and constants replaced by the branch that
    condition takes, repeated until none is left (branches may hold such Ifs too); and a note per If resolved.

    The condition is computed by ONNX Runtime on ``feeds`` (any feeds: only the fixed inputs reach it). A branch
    whose tensor names collide with the graph's is left where it is. For analysis (FLOPs, quantization coverage):
    shapes inside If bodies cannot be measured by running the graph, and with the deciding value fixed the If
    computes what its branch does. The artifacts keep the If, so every precision takes the same inputs."""
    from common.ort_session import cpu_session

    fixed = set(fixed)
    notes: list[str] = []
    if not fixed:
        return model, notes
    model = _copy(model)
    for _ in range(16):  # nested Ifs surface one level per pass; a bound in case a graph nests without end
        graph = model.graph
        decidable = [n for n in graph.node if n.op_type == "If" and _depends_only_on(graph, n.input[0], fixed)]
        if not decidable:
            break
        probe = _copy(model)
        present = {o.name for o in probe.graph.output}
        for node in decidable:
            if node.input[0] not in present:
                probe.graph.output.add().name = node.input[0]
        names = [o.name for o in probe.graph.output]
        inputs = {i.name for i in graph.input}
        run = cpu_session(probe, optimize=False).run(None, {k: v for k, v in feeds.items() if k in inputs})
        values = dict(zip(names, run, strict=True))
        folded = 0
        for node in decidable:
            taken = "then_branch" if bool(np.asarray(values[node.input[0]]).reshape(-1)[0]) else "else_branch"
            branch = next(a.g for a in node.attribute if a.name == taken)
            if _inline(graph, node, branch):
                notes.append(
                    f"If {node.name or node.output[0]} resolved to its {taken} by the fixed value of "
                    f"{', '.join(sorted(_sources(graph, node.input[0]) & fixed)) or 'its constants'}"
                )
                folded += 1
        if not folded:
            break
    return model, notes


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _sources(graph: onnx.GraphProto, tensor: str) -> set[str]:
    """The graph inputs that ``tensor`` depends on, through node inputs and the outer names of subgraphs."""
    producers, inputs = _producers(graph), {i.name for i in graph.input}
    seen, todo, found = {tensor}, [tensor], set()
    while todo:
        name = todo.pop()
        if name in inputs:
            found.add(name)
        node = producers.get(name)
        if node is None:
            continue
        for parent in [*node.input, *(n for g in _subgraphs(node) for n in _outer_names(g))]:
            if parent and parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return found


def _depends_only_on(graph: onnx.GraphProto, tensor: str, fixed: set[str]) -> bool:
    """Whether ``tensor`` depends on no graph input outside ``fixed`` (and on at least one of them, or on
    constants alone)."""
    return _sources(graph, tensor) <= fixed


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH] + [
        g for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for g in a.graphs
    ]


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from the scopes around it."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {out for node in graph.node for out in node.output}
    used = {name for node in graph.node for name in node.input if name}
    used |= {o.name for o in graph.output}
    for node in graph.node:
        for sub in _subgraphs(node):
            used |= _outer_names(sub)
    return used - defined


def _inline(graph: onnx.GraphProto, node: onnx.NodeProto, branch: onnx.GraphProto) -> bool:
    """Replace If ``node`` of ``graph`` by ``branch``'s initializers and nodes, and an Identity from each branch
    output to the If's output; False (and nothing changed) where a branch name is already taken in ``graph``."""
    taken = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    taken |= {out for n in graph.node for out in n.output if n is not node}
    mine = {t.name for t in branch.initializer} | {out for n in branch.node for out in n.output}
    if mine & taken or len(branch.output) != len(node.output):
        return False
    index = list(graph.node).index(node)
    replacement = list(branch.node) + [
        onnx.helper.make_node("Identity", [b.name], [out], name=f"{node.name or out}/{b.name}")
        for b, out in zip(branch.output, node.output, strict=True)
        if out
    ]
    graph.initializer.extend(branch.initializer)
    del graph.node[index]
    for offset, new in enumerate(replacement):
        graph.node.insert(index + offset, new)
    return True


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
