#!/usr/bin/env python3
"""Reports import cycles between the top-level modules of one crate (scripts/check.sh).

A top-level module is `src/X.rs` or `src/X/` (with everything below it). Module A depends on B
when a file of A names `crate::B` — in a `use` (also inside `crate::{B::…, …}` groups) or inline
in code. Comments are ignored; `lib.rs` and `main.rs` (the wiring of the crate root and the
binary) are not modules. Exits 1 and prints each cycle, with the files that make its edges.

    scripts/module_cycles.py agent/ctld/src
"""

import re
import sys
from pathlib import Path

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def group_heads(text: str, start: int) -> list[str]:
    """The first identifier of each item of the `{…}` group opening at text[start]."""
    depth, item, heads = 0, "", []
    for ch in text[start:]:
        if ch == "{":
            depth += 1
            if depth == 1:
                continue
        elif ch == "}":
            depth -= 1
            if depth == 0:
                break
        if depth == 1 and ch == ",":
            heads.append(item)
            item = ""
        elif depth >= 1:
            item += ch
    heads.append(item)
    names = []
    for head in heads:
        match = IDENT.search(head)
        if match:
            names.append(match.group(0))
    return names


def references(text: str) -> set[str]:
    names = set()
    for match in re.finditer(r"\bcrate\s*::\s*(\{|[A-Za-z_][A-Za-z0-9_]*)", text):
        if match.group(1) == "{":
            names.update(group_heads(text, match.start(1)))
        else:
            names.add(match.group(1))
    return names


def modules(src: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(src.iterdir()):
        if path.is_file() and path.suffix == ".rs" and path.stem not in ("lib", "main"):
            found.setdefault(path.stem, []).append(path)
        elif path.is_dir() and path.name != "bin":
            found.setdefault(path.name, []).extend(sorted(path.rglob("*.rs")))
    return found


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "agent/ctld/src")
    mods = modules(src)
    edges: dict[str, dict[str, set[str]]] = {m: {} for m in mods}
    for module, files in mods.items():
        for path in files:
            for name in references(strip_comments(path.read_text())):
                if name in mods and name != module:
                    edges[module].setdefault(name, set()).add(str(path))

    # Tarjan's strongly connected components; any component of two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)

    for component in components:
        print("import cycle between modules of " + str(src) + ": " + ", ".join(component))
        members = set(component)
        for module in component:
            for succ, files in sorted(edges[module].items()):
                if succ in members:
                    print(f"  {module} -> {succ} ({', '.join(sorted(files))})")
    if not components:
        print(f"{len(mods)} modules, {sum(len(e) for e in edges.values())} edges, no cycle")
    return 1 if components else 0


if __name__ == "__main__":
    sys.exit(main())
