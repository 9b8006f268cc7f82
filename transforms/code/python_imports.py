"""Python imports inside one repository: module names from its package structure, imports
read with ``ast``, resolved the way Python 3 resolves them.

**Packages.** A folder is a package when it holds ``__init__.py`` (or ``__init__.pyi``), empty
or not: an empty ``__init__.py`` carries structure, not text, and the repository reader keeps
it for that reason. A repository whose root holds ``__init__.py`` is itself the package named
``root_name`` (the stdlib's ``json`` folder: ``json/decoder.py`` is ``json.decoder``).

**Module names.** A file's name is its path from the folder above its top-most package
ancestor, that folder being a *root* (the repository root, ``src/``, ``lib/``...); folders
without ``__init__.py`` between packages are namespace portions and count
(``src/flask/sansio/app.py`` is ``flask.sansio.app`` although ``sansio/`` has no
``__init__.py``). A file with no package above it is a top-level module of its own folder
(``setup.py`` is ``setup``, ``tests/helpers.py`` is ``helpers``); the folders above such a root
are namespace packages too (PEP 420: ``examples/web/app.py`` is also ``web.app`` seen from
``examples/``, and ``examples.web.app`` from the root). Where the file's nearest
folder that is not a package differs from its root (``sansio/`` above), the file also gets the
name ``python script.py`` and pytest give it from that folder, for files in the same folder only.

**Absolute imports** (Python 3): a name is looked up first among the files seen from the
importer's own folder when that folder is not a package (a script's siblings), then among
those seen from a root, then among the top-level modules of other folders, never for a
standard-library name. So ``import subprocess`` inside a package that holds ``subprocess.py``
reaches the standard library, not the package's file (asyncio), ``import http`` in a test is
not some folder's ``http.py``, and ``import yaml`` in pyyaml's tests is ``lib/yaml``, not an
example's ``yaml.py``. Among equals the file nearest to the importer wins.

**Imports.** ``import a.b.c`` depends on the longest of ``a.b.c``, ``a.b``, ``a`` that is a file
here. ``from a.b import c`` depends on the module ``a.b.c`` when ``c`` is a submodule, on
``a.b`` when ``c`` is a name defined there (each imported name decides for itself). Importing a
submodule gives no edge to its package's ``__init__.py``, which Python runs first: an
``__init__.py`` usually imports its own submodules, so that edge would put most packages on
one import cycle and lose the order inside it. Relative imports resolve by folders (``from ..
import typing`` in ``flask/sansio/app.py`` looks in ``flask/``), which also holds for
namespace portions and loose files. Imports anywhere in a file count (inside functions,
``if TYPE_CHECKING:``); a ``.pyi`` stub prefers stubs, a ``.py`` file modules.

A file ``ast`` cannot parse (Python 2, a syntax error) falls back to a line scan with
triple-quoted strings blanked, and counts as unparsed; a notebook's ``%magic`` and ``!shell``
lines are commented out first. ``ast`` costs ~1.2 s of CPU for 13 standard-library packages
(470 files, 6.4 MB), ~10x the line scan; only statements are walked, never expressions.
"""

from __future__ import annotations

import ast
import posixpath
import re
import sys
import warnings
from collections import defaultdict

SOURCE = (".py", ".pyi")  # importable; notebooks import, but nothing imports them
_INIT = ("__init__.py", "__init__.pyi")
_STDLIB = frozenset(sys.stdlib_module_names)

_PY_IMPORT = re.compile(r"^[ \t]*import[ \t]+([\w. \t,]+)", re.M)
_TRIPLE = re.compile(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'')
_PY_FROM = re.compile(
    r"^[ \t]*from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]*(?:\(([^)]*)\)|([\w \t,*]+(?:\\\n[\w \t,*]*)*))",
    re.M,
)
_MAGIC = re.compile(r"^([ \t]*[%!?])", re.M)  # IPython magics and shell escapes in notebooks

_BLOCKS = ("body", "orelse", "finalbody", "handlers", "cases")  # where statements nest
# Of each node type a statement list can hold (statements, except handlers, match cases), the
# fields of _BLOCKS it has, in that order; types without any (most statements) are absent:
# one dict lookup a statement instead of five getattr (the walk took ~40% of ast's time)
_NESTED = {
    cls: fields
    for cls in vars(ast).values()
    if isinstance(cls, type) and issubclass(cls, (ast.stmt, ast.excepthandler, ast.match_case))
    for fields in [tuple(f for f in _BLOCKS if f in cls._fields)]
    if fields
}
Import = tuple[int, str, list[str]]  # (level, module, imported names); level 0 = absolute


def scan_imports(text: str) -> tuple[list[Import], bool]:
    """The fallback: a line scan after blanking triple-quoted strings. ``clean`` is False when
    a triple-quoted string is left open."""
    code = _TRIPLE.sub('""', text)
    clean = '"""' not in code and "'''" not in code
    out: list[Import] = []
    for m in _PY_IMPORT.finditer(code):
        for name in m.group(1).split(","):
            words = name.split()
            if words and re.fullmatch(r"[\w.]+", words[0]):
                out.append((0, words[0], []))
    for m in _PY_FROM.finditer(code):
        mod = m.group(1)
        level = len(mod) - len(mod.lstrip("."))
        body = re.sub(r"#[^\n]*", "", m.group(2) or m.group(3) or "")
        names = [n for n in re.split(r"[,\s\\]+", body) if n]
        kept, skip = [], False
        for n in names:  # drop "as alias" pairs
            if skip:
                skip = False
            elif n == "as":
                skip = True
            else:
                kept.append(n)
        out.append((level, mod.lstrip("."), kept))
    return out, clean


def python_imports(text: str, notebook: bool = False) -> tuple[list[Import], bool]:
    """``([(level, module, names)], parsed)``: every import statement of a file, from ``ast``;
    ``parsed`` is False when ``ast`` failed and the line scan answered."""
    if "import" not in text:
        return [], True
    source = _MAGIC.sub(r"#\1", text) if notebook else text
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes in old files: SyntaxWarning
            tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        imports, _ = scan_imports(text)
        return imports, False
    out: list[Import] = []
    stack = [tree.body]
    while stack:  # statements only: an import is never inside an expression
        for node in stack.pop():
            kind = type(node)
            if kind is ast.Import:
                out.extend((0, alias.name, []) for alias in node.names)
            elif kind is ast.ImportFrom:
                out.append((node.level, node.module or "", [a.name for a in node.names]))
            elif kind in _NESTED:
                stack.extend(block for f in _NESTED[kind] if (block := getattr(node, f)))
    return out, True


def _folders_up(folder: str) -> list[str]:
    """``"a/b/c"`` -> ``["a/b/c", "a/b", "a", ""]``."""
    out = [folder]
    while folder:
        folder = posixpath.dirname(folder)
        out.append(folder)
    return out


class PythonModules:
    """Module names of a repository's Python files, and import resolution over them.

    ``nearest(candidates, importer)`` picks one file among several of the same name (the one
    sharing the longest folder prefix with the importer, then path order)."""

    def __init__(self, files: list[str], root_name: str, nearest):
        self.files = files
        self.index = {f: i for i, f in enumerate(files)}
        self.nearest = nearest
        self.packages = {posixpath.dirname(f) for f in files if posixpath.basename(f) in _INIT}
        # name -> [(root folder it is seen from (None: above the repository), file, local)]
        self.names: dict[str, list[tuple[str | None, int, bool]]] = defaultdict(list)
        self.basedir: dict[int, str | None] = {}  # None: every folder above is a package
        root_package = "" in self.packages
        # Where Python 3 code of this repository is imported from: the folder above each
        # top-level package (the root, src/, lib/...), or above the root when it is a package.
        self.roots = {None} if root_package else {""}
        self.roots |= {
            posixpath.dirname(d)
            for d in self.packages
            if d and posixpath.dirname(d) not in self.packages
        }
        for i, f in enumerate(files):
            if not f.endswith(SOURCE + (".ipynb",)):
                continue
            ups = _folders_up(posixpath.dirname(f))
            base = next((d for d in ups if d not in self.packages), None)
            self.basedir[i] = base
            if not f.endswith(SOURCE):
                continue
            tops = [d for d in ups if d in self.packages]
            if not tops:
                root = base
            elif tops[-1] == "":
                root = None
            else:
                root = posixpath.dirname(tops[-1])
            qualified = self._name(f, root, root_name if root_package else "")
            if qualified:
                self.names[qualified].append((root, i, False))
            if base != root:  # a namespace gap: the script folder's own name for the file
                self.names[self._name(f, base, "")].append((base, i, True))
            if root:  # PEP 420: the folders above make namespace packages (examples.web.app)
                for above in _folders_up(posixpath.dirname(root)):
                    self.names[self._name(f, above, "")].append((above, i, False))

    @staticmethod
    def _name(f: str, root: str | None, prefix: str) -> str:
        """Dotted name of ``f`` seen from folder ``root`` (None: the repository root is the
        package ``prefix``; ``""`` and no prefix: the root is a plain folder)."""
        rel = f if root is None or root == "" else f[len(root) + 1 :]
        parts = posixpath.splitext(rel)[0].split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if root is None and prefix:
            parts = [prefix, *parts]
        return ".".join(parts)

    def module(self, name: str, importer: int) -> int | None:
        """The file an absolute import of ``name`` in file ``importer`` reaches: one seen from
        the importer's own folder on ``sys.path`` first (a script's siblings), then one seen
        from a root of the repository's packages, then a top-level module of any other
        folder (``tests/helpers.py`` for ``tests/unit/test_x.py``)."""
        cands = self.names.get(name)
        if not cands:
            return None
        base = self.basedir[importer]
        stub = self.files[importer].endswith(".pyi")  # a stub reads stubs, a module modules
        for tier in (
            [i for root, i, _ in cands if root == base],
            [i for root, i, local in cands if not local and root in self.roots],
            [] if name.split(".")[0] in _STDLIB else [i for _, i, local in cands if not local],
        ):
            if importer in tier:
                return importer  # the file names itself ("from . import box" in box.py)
            tier = [c for c in tier if self.files[c].endswith(".pyi") == stub] or tier
            j = self.nearest(tier, importer)
            if j is not None:
                return j
        return None

    def longest(self, name: str, importer: int) -> int | None:
        """The file of ``a.b.c``, else of ``a.b``, else of ``a``."""
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            j = self.module(".".join(parts[:k]), importer)
            if j is not None:
                return j
        return None

    def _file_at(self, folder: str, dotted: str, importer: int) -> int | None:
        """The module file at ``folder/dotted`` (``x.py``, ``x/__init__.py``, stubs after)."""
        rel = posixpath.join(folder, *dotted.split(".")) if dotted else folder
        stub_first = self.files[importer].endswith(".pyi")
        cands = [rel + ".py", rel + "/__init__.py", rel + ".pyi", rel + "/__init__.pyi"]
        if not dotted:
            cands = cands[1::2]  # the folder itself: only its __init__
        for cand in sorted(cands, key=lambda c: c.endswith(".py") if stub_first else False):
            j = self.index.get(cand.lstrip("/"))
            if j is not None:
                return j  # possibly the importer itself: found, and no edge
        return None

    def _relative(self, i: int, level: int, module: str, names: list[str]) -> set[int]:
        folder = posixpath.dirname(self.files[i])
        for _ in range(level - 1):
            if not folder:
                return set()  # above the repository: nothing of ours
            folder = posixpath.dirname(folder)
        deps, whole = set(), "*" in names or not names
        for name in names:
            if name != "*":
                j = self._file_at(folder, f"{module}.{name}" if module else name, i)
                whole |= j is None  # a name defined in the module, not a submodule
                if j is not None:
                    deps.add(j)
        if whole:
            parts = module.split(".") if module else []
            for k in range(len(parts), -1, -1):  # from .a.b import X: a/b.py, else a.py, ...
                j = self._file_at(folder, ".".join(parts[:k]), i)
                if j is not None:
                    deps.add(j)
                    break
        return deps

    def dependencies(self, i: int, text: str) -> tuple[set[int], bool]:
        """The files file ``i`` imports, and whether ``ast`` parsed it."""
        imports, parsed = python_imports(text, notebook=self.files[i].endswith(".ipynb"))
        deps: set[int] = set()
        for level, module, names in imports:
            if level:
                deps |= self._relative(i, level, module, names)
                continue
            whole = "*" in names or not names
            for name in names:
                if name != "*":
                    j = self.module(f"{module}.{name}", i)
                    whole |= j is None
                    if j is not None:
                        deps.add(j)
            if whole:
                j = self.longest(module, i)
                if j is not None:
                    deps.add(j)
        deps.discard(i)
        return deps, parsed
