"""The shape of the `transfer` package, as JSON: what issue 14 measures.

Reads the source as text (it imports nothing from `transfer`) and reports:
modules per folder, the depth of the module import graph (longest chain of
module-level imports, cycles collapsed), import cycles, function-local
imports, imports of another module's `_private` name, and the longest
functions with their parameter counts.

    python benchmarks/code_shape.py [--package transfer] [--output FILE]
"""

import argparse
import ast
import json
import pathlib
import sys
from collections import Counter


def _module_name(root, path):
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module, node, is_package):
    """The absolute module an ImportFrom names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(tree, module, is_package, modules):
    """(top-level imports, function-local imports, private cross imports)."""
    top, local, private, third_party = set(), set(), [], []

    def targets(node, is_local=False):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = _resolve(module, node, is_package)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.append(full if full in modules else base)
                if (
                    alias.name.startswith("_")
                    and not alias.name.startswith("__")
                    and base in modules
                    and base != module
                    and full not in modules
                ):
                    private.append(f"{module} <- {base}.{alias.name}")
        ours = [name for name in names if name.split(".")[0] == "transfer"]
        if is_local and not ours:
            # An optional third-party dependency imported where it is used.
            third_party.append(node.lineno)
        return ours

    def visit(node, depth):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found = targets(child, is_local=depth > 0)
                if depth == 0:
                    top.update(found)
                elif found:
                    local.update(found)
                    local_lines.append(child.lineno)
            nested = isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            if not isinstance(child, ast.If) or depth:
                visit(child, depth + nested)
            else:
                # `if TYPE_CHECKING:` and the like stay module level.
                visit(child, depth)

    local_lines = []
    visit(tree, 0)
    # `from transfer import resume` then `resume._stage_dirname(...)`.
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(module, node, is_package)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules and not alias.name.startswith("_"):
                    aliases[alias.asname or alias.name] = full
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and aliases[node.value.id] != module
        ):
            private.append(f"{module} <- {aliases[node.value.id]}.{node.attr}")
    return top, local, private, len(local_lines), len(third_party)


def _functions(tree, module):
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            names = [
                a.arg
                for a in args.posonlyargs + args.args + args.kwonlyargs
                if a.arg not in ("self", "cls")
            ]
            if args.vararg:
                names.append(args.vararg.arg)
            if args.kwarg:
                names.append(args.kwarg.arg)
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant)
            ):
                body = body[1:]
            code_lines = 0
            if body:
                code_lines = body[-1].end_lineno - body[0].lineno + 1
            found.append(
                {
                    "function": f"{module}.{node.name}",
                    "lines": code_lines,
                    "parameters": len(names),
                }
            )
    return found


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for v in graph:
        if v not in index:
            strong(v)
    return result


def _depth(graph, cycles):
    """Longest import chain, each cycle counted as one node."""
    owner = {m: m for m in graph}
    for component in cycles:
        for m in component:
            owner[m] = component[0]
    dag = {}
    for v, targets in graph.items():
        dag.setdefault(owner[v], set()).update(
            owner[t] for t in targets if owner[t] != owner[v]
        )
    memo = {}

    def longest(v):
        if v not in memo:
            memo[v] = 1 + max((longest(w) for w in dag.get(v, ())), default=0)
        return memo[v]

    return max((longest(v) for v in dag), default=0)


def measure(package_dir):
    root = pathlib.Path(package_dir).resolve()
    files = sorted(root.rglob("*.py"))
    modules = {_module_name(root, f): f for f in files}
    graph, full_graph, private, functions = {}, {}, [], []
    local_count = third_party_count = 0
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        top, local, priv, n_local, n_third = _imports(
            tree, module, is_package, modules
        )
        # The package __init__ re-exports; its edges would make every module
        # "depend" on its parent package. Keep only edges between modules.
        graph[module] = {
            t for t in top if t in modules and t != module and t != "transfer"
        }
        full_graph[module] = graph[module] | {
            t for t in local if t in modules and t != module and t != "transfer"
        }
        local_count += n_local
        third_party_count += n_third
        private.extend(priv)
        functions.extend(_functions(tree, module))
    per_folder = Counter(
        str(path.parent.relative_to(root.parent))
        for path in files
        if path.name != "__init__.py"
    )
    cycles = _cycles(graph)
    full_cycles = _cycles(full_graph)
    longest = sorted(functions, key=lambda f: -f["lines"])[:10]
    most_params = sorted(functions, key=lambda f: -f["parameters"])[:10]
    return {
        "modules": sum(per_folder.values()),
        "modules_per_folder": dict(sorted(per_folder.items())),
        "import_graph_depth": _depth(graph, cycles),
        "import_cycles": cycles,
        "import_graph_depth_with_local_imports": _depth(full_graph, full_cycles),
        "import_cycles_with_local_imports": full_cycles,
        "function_local_imports": local_count,
        "function_local_third_party_imports": third_party_count,
        "private_cross_module_imports": len(private),
        "private_cross_module_import_list": sorted(private),
        "functions_over_60_lines": sum(f["lines"] > 60 for f in functions),
        "functions_over_7_parameters": sum(
            f["parameters"] > 7 for f in functions
        ),
        "longest_functions": longest,
        "most_parameters": most_params,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="transfer")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    result = measure(args.package)
    text = json.dumps(result, indent=2)
    if args.output:
        pathlib.Path(args.output).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
