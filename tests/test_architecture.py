"""The package's shape: imports flow cli → commands → library, no import cycles, docs links resolve,
and no tracked text file names a path on the machine it was written on."""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "normfree"
APP = ("normfree.cli", "normfree.commands", "normfree.__main__")
"""The application layer: it may import the library; nothing in the library may import it."""


def _module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """normfree module → the normfree modules it imports, at any depth in the file (function-level
    imports count: they run too; imports under ``if TYPE_CHECKING:`` never run and do not count).
    ``from pkg import name`` points at ``pkg.name`` when that is a
    module, else at ``pkg``. Importing ``a.b.c`` also runs the ``__init__`` of package ``a.b``, so
    that is an edge too (except to the root package and to the module's own packages)."""
    files = {_module_name(p, root.parent): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == "normfree")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                if module.split(".")[0] != "normfree":
                    continue
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.add(sub if sub in files else module)
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        packages = {".".join(t.split(".")[:i]) for t in targets for i in range(2, t.count(".") + 1)}
        graph[name] = (targets | {p for p in packages if p in files and p not in own}) - {name}
    return graph


def _is_app(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in APP)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a closed path of module names, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt) and nxt in graph:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_library_never_imports_cli_or_commands():
    graph = import_graph()
    upward = sorted(f"{m} imports {t}" for m, ts in graph.items() if not _is_app(m)
                    for t in ts if _is_app(t))
    assert not upward, "library modules import the application layer:\n" + "\n".join(upward)


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_the_checks_catch_what_they_guard(tmp_path):
    """The graph and the cycle search on a small package with an upward import and a lazy cycle."""
    pkg = tmp_path / "normfree"
    (pkg / "commands").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "commands" / "__init__.py").write_text("")
    (pkg / "commands" / "spp.py").write_text("")
    (pkg / "lib.py").write_text("def f():\n    from .commands.spp import g\n    from . import other\n")
    (pkg / "other.py").write_text("from .lib import f\n")
    graph = import_graph(pkg)
    assert graph["normfree.lib"] == {"normfree.commands.spp", "normfree.commands", "normfree.other"}
    assert graph["normfree.commands.spp"] == set()  # its own package's __init__ is not an edge
    assert any(_is_app(t) for t in graph["normfree.lib"])
    assert find_cycle(graph) in (["normfree.lib", "normfree.other", "normfree.lib"],
                                 ["normfree.other", "normfree.lib", "normfree.other"])
    graph["normfree.other"] = set()
    assert find_cycle(graph) is None


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.decode().split("\0") if p]


MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|tmp)/")
PATH_ALLOW = ("benchmarks/cifar10_nf_vs_bn/logs",)
"""Committed logs whose paths are kept as recorded (the benchmark's own README explains them)."""


def test_no_absolute_machine_paths_in_tracked_files():
    hits = []
    for path in _tracked_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(PATH_ALLOW) or rel == "tests/test_architecture.py" or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary (images, fixtures)
        hits += [f"{rel}:{i}: {line.strip()[:100]}" for i, line in enumerate(text.splitlines(), 1)
                 if MACHINE_PATH.search(line)]
    assert not hits, "absolute machine paths:\n" + "\n".join(hits)


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
LINK_ALLOW = {("benchmarks/cifar10_nf_vs_bn/README.md", "results.md")}
"""Links to files a running benchmark writes when it finishes (``summarize.py``)."""


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings (outside code fences): lower case, punctuation
    dropped, spaces to hyphens, ``-1``, ``-2`` … on repeats."""
    anchors: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*?)\s*#*$", line)):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchor, n = slug, 0
            while anchor in anchors:
                n += 1
                anchor = f"{slug}-{n}"
            anchors.add(anchor)
    return anchors


def test_heading_anchors_follow_github():
    text = "# Results: `top1` (TTA)\n```bash\n# not a heading\n```\n## Results: top1 TTA\n### What × BN FLOPs\n"
    assert heading_anchors(text) == {"results-top1-tta", "results-top1-tta-1", "what--bn-flops"}


def test_relative_links_in_docs_resolve():
    """Every relative link in the docs names a file that exists and, with a ``#fragment`` into Markdown,
    a heading that file has."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("benchmarks/*/README.md")),
            ROOT / "tests" / "fixtures" / "README.md"]
    broken = []
    for doc in docs:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target) or (doc.relative_to(ROOT).as_posix(), target) in LINK_ALLOW:
                continue  # URLs, mail
            name, _, fragment = target.partition("#")
            path = doc.parent / name if name else doc
            if not path.exists():
                broken.append(f"{doc.relative_to(ROOT)} → {target}")
            elif fragment and path.suffix == ".md" and fragment not in heading_anchors(path.read_text()):
                broken.append(f"{doc.relative_to(ROOT)} → {target} (no such heading)")
    assert not broken, "broken relative links:\n" + "\n".join(broken)
