"""KernelGraph: a networkx DAG with one node per kernel; edges carry the tensors passed between kernels."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from kt.ir.problems import GemmProblem, TensorType


@dataclass(frozen=True)
class KernelNode:
    name: str
    problem: GemmProblem
    inputs: tuple[str, ...]  # tensor names: graph inputs or other kernels' outputs
    output: str

    @property
    def family(self) -> str:
        return self.problem.family


class KernelGraph:
    """The kernels one op runs, in dependency order, with the op's inputs and outputs."""

    def __init__(self, inputs: dict[str, TensorType], nodes: list[KernelNode], outputs: tuple[str, ...]):
        self.inputs = dict(inputs)
        self.outputs = tuple(outputs)
        self.graph = nx.DiGraph()
        producers: dict[str, str] = {}
        for node in nodes:
            self.graph.add_node(node.name, kernel=node)
            for tensor in node.inputs:
                if tensor in producers:
                    self.graph.add_edge(producers[tensor], node.name, tensor=tensor)
                elif tensor not in self.inputs:
                    raise ValueError(f"kernel {node.name} reads {tensor!r}, which nothing produces")
            producers[node.output] = node.name
        missing = [name for name in self.outputs if name not in producers]
        if missing:
            raise ValueError(f"graph outputs {missing} are produced by no kernel")
        if not nx.is_directed_acyclic_graph(self.graph):
            raise ValueError("a kernel graph must be acyclic")

    @property
    def kernels(self) -> list[KernelNode]:
        return [self.graph.nodes[name]["kernel"] for name in nx.topological_sort(self.graph)]

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    def __str__(self) -> str:
        """A jaxpr-like listing: the inputs, one line per kernel in order, and the outputs."""
        args = " ".join(f"{name}:{t}" for name, t in self.inputs.items())
        lines = [f"{{ lambda {args} ."]
        for node in self.kernels:
            lines.append(
                f"    {node.output}:{node.problem.out_type()} = {node.problem} {' '.join(node.inputs)}"
            )
        lines.append(f"  in ({', '.join(self.outputs)}) }}")
        return "\n".join(lines)
