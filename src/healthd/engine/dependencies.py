"""``depends_on`` across workloads: which dependencies are not configured, and which close a
cycle. Pure, so it is tested on plain dicts; ``workloads.py`` runs it at every load and reload.

A cycle (a -> b -> a) would hold the restarts of its members forever once they are all
unhealthy: each waits for another to recover first. So a dependency that closes a cycle (the
two workloads are in the same strongly connected component) never holds a restart; it is
reported instead. Dependencies leading out of a cycle still hold as usual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class DependencyReport:
    # workload -> the dependencies that are ignored because they close a cycle with it
    cyclic: dict[str, frozenset[str]] = field(default_factory=dict)
    cycles: list[list[str]] = field(default_factory=list)  # each cycle's members, sorted
    missing: dict[str, list[str]] = field(default_factory=dict)  # workload -> unknown names

    def warnings(self) -> list[str]:
        """The report for people (``healthd validate``): not errors, as a workload may be
        added later and a cycle is defused, but each one switches a hold off."""
        lines = [
            f"{name}: depends_on {', '.join(unknown)}: not configured, so it holds no restart "
            "until a workload of that name exists"
            for name, unknown in sorted(self.missing.items())
        ]
        lines += [
            f"{', '.join(cycle)}: depend on each other in a cycle, so depends_on between them "
            "never holds a restart"
            for cycle in self.cycles
        ]
        return lines


def review(graph: Mapping[str, Sequence[str]]) -> DependencyReport:
    """``graph``: every configured workload -> its ``depends_on`` (empty when none)."""
    report = DependencyReport()
    for name, deps in graph.items():
        unknown = [d for d in deps if d not in graph]
        if unknown:
            report.missing[name] = unknown
    for component in _components(graph):
        members = set(component)
        if len(members) == 1:
            continue  # a workload cannot depend on itself (the loader refuses it)
        report.cycles.append(sorted(members))
        for name in members:
            closing = frozenset(d for d in graph[name] if d in members)
            if closing:
                report.cyclic[name] = closing
    report.cycles.sort()
    return report


def _components(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, without recursion (a chain of thousands of
    workloads must not hit Python's recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, edge = work.pop()
            if edge == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            deps = [d for d in graph[node] if d in graph]
            if edge < len(deps):
                work.append((node, edge + 1))
                nxt = deps[edge]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found
