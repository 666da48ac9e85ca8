"""Print the package's shape: lines per layer, imports between layers, longest functions.

Why: a refactoring's effect on the structure should be a measured figure, not an impression; this script makes
the figures reproducible (``python -m benchmarks.architecture_report``).
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = "nnunet_pdddpm"


def _layer(module_path: Path, root: Path) -> str:
    parts = module_path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else "(top)"


def _imported_layers(tree: ast.AST, module: str, root: Path) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level]
                names = [".".join(base + ([node.module] if node.module else []))]
                if not node.module:
                    names = [".".join(base + [alias.name]) for alias in node.names]
            elif node.module:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == PACKAGE and len(parts) > 1:
                found.add(parts[1] if (root / parts[1]).is_dir() else "(top)")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(PACKAGE), help="package folder (default: %(default)s)")
    parser.add_argument("--longest", type=int, default=12, help="how many functions to list (default: %(default)s)")
    args = parser.parse_args(argv)
    lines: dict[str, int] = defaultdict(int)
    files: dict[str, int] = defaultdict(int)
    graph: dict[str, set[str]] = defaultdict(set)
    functions: list[tuple[int, str]] = []
    for path in sorted(args.root.rglob("*.py")):
        text = path.read_text()
        layer = _layer(path, args.root)
        lines[layer] += len(text.splitlines())
        files[layer] += 1
        module = ".".join((PACKAGE,) + path.relative_to(args.root).with_suffix("").parts)
        tree = ast.parse(text)
        graph[layer] |= _imported_layers(tree, module, args.root) - {layer}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                functions.append((length, f"{path.relative_to(args.root)}:{node.lineno} {node.name}"))
    print("| layer | files | lines | imports layers |")
    print("| --- | ---: | ---: | --- |")
    for layer in sorted(lines):
        print(f"| {layer} | {files[layer]} | {lines[layer]} | {', '.join(sorted(graph[layer])) or '-'} |")
    print(f"| total | {sum(files.values())} | {sum(lines.values())} | |")
    print()
    print("| lines | longest functions |")
    print("| ---: | --- |")
    for length, name in sorted(functions, reverse=True)[: args.longest]:
        print(f"| {length} | {name} |")


if __name__ == "__main__":
    main()
