"""Count the imports that point from a lower layer of ``visiona`` to a higher one.

Layers, lowest first: ``yamux``; ``wire``; ``kit``; ``cluster`` (the one node-to-node
primitive the features run through); the other features (every other subpackage but
the agent, the client, the console and the entry points); the console; the
composition root and entry points (``app``, ``cli``, ``entry``, ``__main__``). With
``--cluster-on-top`` the cluster sits above the tunnel and deployments features
instead, as it did before issue 20 (it composed them): the layering the issue's
figure of 10 was counted with. The agent and the CLI client sit beside the server:
they may use ``yamux`` and ``wire`` only, so an import of theirs into ``kit`` or a
feature also counts. Every import is counted, including those under
``if TYPE_CHECKING`` and inside functions: each is a dependency a reader follows.

Also counts the import cycles (between modules) that pass through ``visiona.kit``.

Usage: ``python scripts/import_layers.py [--cluster-on-top] [SRC_DIR]`` (default:
this checkout, the directory that holds ``visiona/``). Prints both figures and every
offending import.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp

_ROOT = {"visiona.app", "visiona.cli", "visiona.entry", "visiona.__main__"}
_SIDE = ("visiona.agent", "visiona.client")


_LAYERS: dict[str, float] = {
    "visiona.yamux": 0,
    "visiona.wire": 1,
    "visiona.kit": 2,
    "visiona.cluster": 2.5,
    "visiona.console": 4,
    **dict.fromkeys(_ROOT, 5),
    **dict.fromkeys(("visiona", "visiona.malloc", *_SIDE), -1),
}
_KIT = 2


def layer(module: str, *, cluster_on_top: bool = False) -> float:
    """The layer of ``module`` (0 lowest); -1 for the package itself and side packages."""
    top = ".".join(module.split(".")[:2])
    if cluster_on_top and top == "visiona.cluster":
        return 3.5
    if cluster_on_top and top in {"visiona.tunnel", "visiona.deployments"}:
        return 3
    return _LAYERS.get(top, 3)


def violations(graph: grimp.ImportGraph, *, cluster_on_top: bool = False) -> list[tuple[str, str]]:
    """Every (importer, imported) pair that goes from a lower layer to a higher one."""
    found: list[tuple[str, str]] = []
    for importer in sorted(graph.modules):
        if not importer.startswith("visiona"):
            continue
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if not imported.startswith("visiona"):
                continue
            side = importer.startswith(_SIDE) and layer(imported) >= _KIT
            low = layer(importer, cluster_on_top=cluster_on_top)
            high = layer(imported, cluster_on_top=cluster_on_top)
            if side or (low >= 0 and high > low):
                found.append((importer, imported))
    return found


def kit_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """One shortest cycle per pair (kit module, module outside kit that kit imports)."""
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for module in sorted(graph.modules):
        if not module.startswith("visiona.kit"):
            continue
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported.startswith("visiona.kit") or not imported.startswith("visiona"):
                continue
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is None:
                continue
            cycle = [module, *back]
            key = frozenset(cycle)
            if key not in seen:
                seen.add(key)
                cycles.append(cycle)
    return cycles


def main(argv: list[str]) -> int:
    """Print the two counts for the checkout named in ``argv`` (or this one)."""
    args = argv[1:]
    on_top = "--cluster-on-top" in args
    paths = [a for a in args if not a.startswith("--")]
    src = Path(paths[0]) if paths else Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(src.resolve()))
    graph = grimp.build_graph("visiona", cache_dir=None)
    bad = violations(graph, cluster_on_top=on_top)
    cycles = kit_cycles(graph)
    lines = [f"upward: {importer} -> {imported}" for importer, imported in bad]
    lines += ["kit cycle: " + " -> ".join(cycle) for cycle in cycles]
    lines += [
        f"imports from a lower layer to a higher one: {len(bad)}",
        f"import cycles through visiona.kit: {len(cycles)}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
