"""Import extraction and dependency order on small hand-made repositories with known answers."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_cli_end_to_end import _ast_import_edges, _on_a_cycle_together
from transforms.code.dependencies import dependency_edges
from transforms.code.ordering import cycle_members, order_files, strongly_connected
from transforms.inputs.reading import ReadSettings
from transforms.inputs.repository import read_repository


def ordered(repo: dict[str, str], root_name: str = "") -> tuple[list[str], set[tuple[str, str]]]:
    files = sorted(repo)
    texts = [repo[f] for f in files]
    edges, _ = dependency_edges(files, texts, root_name)
    return [files[i] for i in order_files(files, edges)], {(files[a], files[b]) for a, b in edges}


def test_python_package_absolute_relative_and_from_imports():
    repo = {
        "setup.py": "import pkg\n",
        "pkg/__init__.py": "from .core import run\nfrom . import util\n",
        "pkg/core.py": "from pkg.util import helper\nimport os\n",
        "pkg/util.py": "import json\n'''\nimport pkg.core  # inside a string: ast ignores it\n'''\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/deep.py": "from ..core import run\nfrom ...outside import x\n",
        "tests/test_core.py": "from pkg import core\n",
    }
    order, edges = ordered(repo)
    assert edges == {
        ("setup.py", "pkg/__init__.py"),
        ("pkg/__init__.py", "pkg/core.py"),
        ("pkg/__init__.py", "pkg/util.py"),
        ("pkg/core.py", "pkg/util.py"),
        ("pkg/sub/deep.py", "pkg/core.py"),
        ("tests/test_core.py", "pkg/core.py"),
    }
    assert order == [
        "pkg/sub/__init__.py",
        "pkg/util.py",
        "pkg/core.py",
        "pkg/__init__.py",
        "pkg/sub/deep.py",
        "setup.py",
        "tests/test_core.py",
    ]


def test_python_root_folder_is_the_package():
    # The stdlib's json package given as a repository: "from json import scanner" is internal.
    repo = {
        "__init__.py": "from .decoder import JSONDecoder\n",
        "decoder.py": "from json import scanner\n",
        "scanner.py": "import re\n",
    }
    order, _ = ordered(repo, root_name="json")
    assert order == ["scanner.py", "decoder.py", "__init__.py"]


def test_empty_init_files_make_nested_packages_and_tests_a_package():
    # Issue 17, class 1: every __init__.py here is empty, yet it decides the module names.
    repo = {
        "src/web/__init__.py": "",
        "src/web/http.py": "from http import client\n",  # the stdlib's http, not this file
        "src/web/middleware/__init__.py": "",
        "src/web/middleware/shared_data.py": "from ..http import parse_date\n",
        "src/web/app.py": "from .middleware.shared_data import SharedData\n",
        "src/web/sub/__init__.py": "",
        "src/web/sub/tests/__init__.py": "",
        "src/web/sub/tests/helper.py": "X = 1\n",
        "src/web/sub/check.py": "from web.sub.tests import helper\n",
        "tests/__init__.py": "",
        "tests/server/__init__.py": "",
        "tests/server/server.py": "import web.app\n",
        "tests/test_app.py": "from tests.server.server import Server\nimport http\n",
    }
    order, edges = ordered(repo)
    assert edges == {
        ("src/web/middleware/shared_data.py", "src/web/http.py"),
        ("src/web/app.py", "src/web/middleware/shared_data.py"),
        ("src/web/sub/check.py", "src/web/sub/tests/helper.py"),
        ("tests/server/server.py", "src/web/app.py"),
        ("tests/test_app.py", "tests/server/server.py"),
    }
    assert order == [
        "src/web/__init__.py",
        "src/web/http.py",
        "src/web/middleware/__init__.py",
        "src/web/middleware/shared_data.py",
        "src/web/app.py",
        "src/web/sub/__init__.py",
        "src/web/sub/tests/__init__.py",
        "src/web/sub/tests/helper.py",
        "src/web/sub/check.py",
        "tests/__init__.py",
        "tests/server/__init__.py",
        "tests/server/server.py",
        "tests/test_app.py",
    ]
    # Without the markers the folders are namespace packages (PEP 420) and still resolve,
    # but "import http" never becomes src/web/http.py, a top-level module of another folder.
    bare = {f: t for f, t in repo.items() if not f.endswith("__init__.py")}
    assert ("tests/test_app.py", "src/web/http.py") not in ordered(bare)[1]


def test_sibling_submodule_through_the_parent_package_and_namespace_portions():
    # Issue 17, class 2: flask's sansio/ folder has no __init__.py; Python 3 still imports it
    # as flask.sansio, so "from .. import typing as ft" there is flask/typing.py.
    repo = {
        "src/flask/__init__.py": "from .app import Flask\n",
        "src/flask/typing.py": "X = 1\n",
        "src/flask/app.py": "from . import typing as ft\nfrom .sansio.app import App\n",
        "src/flask/sansio/app.py": "from .. import typing as ft\nfrom .scaffold import S\n",
        "src/flask/sansio/scaffold.py": "from .. import typing as ft\n",
    }
    order, edges = ordered(repo)
    assert edges == {
        ("src/flask/__init__.py", "src/flask/app.py"),
        ("src/flask/app.py", "src/flask/typing.py"),
        ("src/flask/app.py", "src/flask/sansio/app.py"),
        ("src/flask/sansio/app.py", "src/flask/typing.py"),
        ("src/flask/sansio/app.py", "src/flask/sansio/scaffold.py"),
        ("src/flask/sansio/scaffold.py", "src/flask/typing.py"),
    }
    assert order == [
        "src/flask/typing.py",
        "src/flask/sansio/scaffold.py",
        "src/flask/sansio/app.py",
        "src/flask/app.py",
        "src/flask/__init__.py",
    ]


def test_from_package_import_submodule_links_the_submodule_not_the_package_init():
    # Issue 17, class 3 (decided): a submodule import depends on the submodule only; a name
    # defined in the package depends on its __init__.py. An __init__ imports its submodules,
    # so an edge from each importer of a submodule back to it would mostly close cycles.
    repo = {
        "pkg/__init__.py": "from .sub import module\n",
        "pkg/sub/__init__.py": "from . import module\nVERSION = 1\n",
        "pkg/sub/module.py": "X = 1\n",
        "app.py": "from pkg.sub import module\n",
        "cli.py": "from pkg.sub import VERSION, module\n",
    }
    order, edges = ordered(repo)
    assert edges == {
        ("pkg/__init__.py", "pkg/sub/module.py"),
        ("pkg/sub/__init__.py", "pkg/sub/module.py"),
        ("app.py", "pkg/sub/module.py"),
        ("cli.py", "pkg/sub/module.py"),
        ("cli.py", "pkg/sub/__init__.py"),  # VERSION is defined there
    }
    assert order.index("pkg/sub/module.py") < order.index("pkg/sub/__init__.py")
    assert order.index("pkg/sub/__init__.py") < order.index("cli.py")


def test_absolute_import_never_means_a_file_of_the_importers_own_package():
    # Python 3: "import subprocess" inside asyncio is the standard library's module, although
    # asyncio/subprocess.py exists (here the repository root is the package).
    repo = {
        "__init__.py": "from .base_events import *\n",
        "base_events.py": "import subprocess\nfrom . import events\n",
        "events.py": "import selectors\n",
        "subprocess.py": "import subprocess\nfrom . import events\n",
        "selectors.py": "X = 1\n",
    }
    _, edges = ordered(repo, root_name="asyncio")
    assert edges == {
        ("__init__.py", "base_events.py"),
        ("base_events.py", "events.py"),
        ("subprocess.py", "events.py"),
    }
    # The same for a package below the root: only "pkg.subprocess" names the file.
    nested = {
        "pkg/__init__.py": "",
        "pkg/base.py": "import subprocess\nimport pkg.subprocess as sp\n",
        "pkg/subprocess.py": "import subprocess\n",
        "scripts/run.py": "import helper\n",  # a script folder: its siblings are importable
        "scripts/helper.py": "import subprocess\n",
    }
    assert ordered(nested)[1] == {
        ("pkg/base.py", "pkg/subprocess.py"),
        ("scripts/run.py", "scripts/helper.py"),
    }
    # pyyaml: "import yaml" in the tests is lib/yaml (a package root), not the yaml.py of an
    # example folder, which only its own siblings reach; a test helper one folder up is found.
    pyyaml = {
        "lib/yaml/__init__.py": "from .error import *\n",
        "lib/yaml/error.py": "",
        "examples/lexer/yaml.py": "",
        "examples/lexer/demo.py": "import yaml\n",
        "tests/helpers.py": "",
        "tests/unit/test_load.py": "import yaml\nimport helpers\n",
        "stubs/mod.py": "",
        "stubs/mod.pyi": "",
        "stubs/user.pyi": "from .mod import X\n",
        "stubs/user.py": "from .mod import X\n",
        # werkzeug: webpylike/ has no __init__.py, a namespace package for the script above
        "examples/manage.py": "from webpylike.example import app\n",
        "examples/webpylike/example.py": "from webpylike import App\n",
        "examples/webpylike/webpylike.py": "",
    }
    assert ordered(pyyaml)[1] == {
        ("examples/manage.py", "examples/webpylike/example.py"),
        ("examples/webpylike/example.py", "examples/webpylike/webpylike.py"),
        ("lib/yaml/__init__.py", "lib/yaml/error.py"),
        ("examples/lexer/demo.py", "examples/lexer/yaml.py"),
        ("tests/unit/test_load.py", "lib/yaml/__init__.py"),
        ("tests/unit/test_load.py", "tests/helpers.py"),
        ("stubs/user.pyi", "stubs/mod.pyi"),  # a stub reads stubs, a module modules
        ("stubs/user.py", "stubs/mod.py"),
    }
    # A file importing itself (rich's box.py) or a compiled module that is not here
    # (safetensors' "from ._safetensors_rust import ...") points at nothing else.
    selfish = {
        "rich/__init__.py": "from ._rust import load\n",
        "rich/__init__.pyi": "def load(): ...\n",
        "rich/box.py": "from . import box as box\nfrom rich import box\n",
    }
    assert ordered(selfish)[1] == set()


def test_python_imports_come_from_ast_anywhere_in_the_file_and_never_from_strings():
    repo = {
        "a.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from b import B\n"
            "def f():\n    import c\n"
            "EXAMPLE = 'import d'\n"
            'DOC = """\nimport d\n"""\n'
            "try:\n    import e\nexcept ImportError:\n    e = None\n"
        ),
        "b.py": "",
        "c.py": "",
        "d.py": "",
        "e.py": "",
        "nb.ipynb": "# %%\n%matplotlib inline\n!pip install x\nimport a\n",
    }
    files = sorted(repo)
    edges, unparsed = dependency_edges(files, [repo[f] for f in files])
    assert {(files[a], files[b]) for a, b in edges} == {
        ("a.py", "b.py"),
        ("a.py", "c.py"),
        ("a.py", "e.py"),
        ("nb.ipynb", "a.py"),
    }
    assert unparsed == 0  # the notebook's magics are commented out before ast.parse


def test_python_imports_are_found_in_every_kind_of_block():
    """The walk looks into a statement's blocks by its type (``_NESTED``): every place a
    statement can nest gives its import, as a walk over every node of the tree finds them."""
    import ast

    from transforms.code.python_imports import python_imports

    text = (
        "import a0\n"
        "class C:\n    import a1\n    def m(self):\n        import a2\n"
        "async def f():\n    import a3\n"
        "    async for x in y:\n        import a4\n    else:\n        import a5\n"
        "    async with z:\n        import a6\n"
        "for x in y:\n    import a7\nelse:\n    import a8\n"
        "while x:\n    import a9\nelse:\n    from . import a10\n"
        "if x:\n    import a11\nelif y:\n    import a12\nelse:\n    import a13\n"
        "with z:\n    import a14\n"
        "try:\n    import a15\nexcept E:\n    import a16\nelse:\n    import a17\n"
        "finally:\n    import a18\n"
        "match x:\n    case 1:\n        import a19\n    case _:\n        from .. import a20\n"
        "try:\n    import a21\nexcept* E:\n    import a22\n"
    )
    found, parsed = python_imports(text)
    every = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            every |= {(0, a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            every |= {(node.level, f"{node.module or ''}:{a.name}") for a in node.names}
    got = {(lvl, f"{mod}:{names[0]}" if names else mod) for lvl, mod, names in found}
    assert parsed and got == every and len(got) == 23


def test_python_unparseable_file_still_ordered_and_counted():
    files = ["a.py", "b.py", "c.py"]
    texts = [
        "print 'python 2'\nimport b\n",  # ast fails: the line scan reads it, counted
        "x = 1\n",
        'import b\n"""unterminated docstring\nimport a\n',  # counted, still scanned
    ]
    edges, unparsed = dependency_edges(files, texts)
    assert edges == [(0, 1), (2, 0), (2, 1)] and unparsed == 2


def test_javascript_and_typescript_relative_specifiers():
    repo = {
        "src/index.ts": "import { a } from './lib/a';\nexport * from \"./lib/b.js\";\n",
        "src/lib/a.ts": "const c = require('../util');\nimport React from 'react';\n",
        "src/lib/b.ts": "export const b = () => import('./a');\n",
        "src/util/index.js": "module.exports = {};\n",
    }
    order, edges = ordered(repo)
    assert edges == {
        ("src/index.ts", "src/lib/a.ts"),
        ("src/index.ts", "src/lib/b.ts"),
        ("src/lib/a.ts", "src/util/index.js"),
        ("src/lib/b.ts", "src/lib/a.ts"),
    }
    assert order == ["src/util/index.js", "src/lib/a.ts", "src/lib/b.ts", "src/index.ts"]


def test_javascript_named_imports_with_comments_inside_the_braces():
    # Issue 17, class 4: comments inside a multi-line import, and imports inside comments.
    repo = {
        "src/index.js": (
            "import { // eslint-disable-line no-unused-vars\n"
            "  parse,\n"
            "  /* format, */\n"
            "  render, // the one we use\n"
            "} from './render';\n"
            'import /* default */ config from "./config.json";\n'
            "// import { old } from './old';\n"
            "/* require('./old') */\n"
            "const quote = /['\"]/g; // a regex with quotes, then more code\n"
            "export {\n  helper, // re-exported\n} from './helper';\n"
        ),
        "src/render.js": "const t = `a // not a comment ${x}`;\nmodule.exports = require('./util');\n",
        "src/util.js": "export const x = 1;\n",
        "src/helper.ts": '/// <reference path="globals.d.ts" />\nexport const helper = 1;\n',
        "src/globals.d.ts": "declare const G: number;\n",
        "src/config.json": "{}\n",
        "src/old.js": "export const old = 1;\n",
    }
    order, edges = ordered(repo)
    assert edges == {
        ("src/index.js", "src/render.js"),
        ("src/index.js", "src/config.json"),
        ("src/index.js", "src/helper.ts"),
        ("src/render.js", "src/util.js"),
        ("src/helper.ts", "src/globals.d.ts"),
    }
    assert order[-1] == "src/index.js"


def test_go_packages_via_go_mod():
    repo = {
        "go.mod": "module example.com/app\n\ngo 1.22\n",
        "main.go": 'package main\n\nimport (\n\t"fmt"\n\t"example.com/app/store"\n)\n',
        "store/store.go": 'package store\n\nimport "example.com/app/store/codec"\n',
        "store/store_test.go": "package store\n",
        "store/codec/codec.go": "package codec\n",
    }
    order, edges = ordered(repo)
    assert ("main.go", "store/store.go") in edges
    assert ("main.go", "store/store_test.go") not in edges
    assert ("store/store.go", "store/codec/codec.go") in edges
    assert (
        order.index("store/codec/codec.go") < order.index("store/store.go") < order.index("main.go")
    )


def test_rust_mod_and_use_paths():
    repo = {
        "Cargo.toml": "[package]\nname = 'x'\n",
        "src/lib.rs": "pub mod parser;\nmod util;\nuse crate::parser::Token;\n",
        "src/parser.rs": "mod lexer;\nuse super::util::helper;\n",
        "src/parser/lexer.rs": "use crate::util;\n",
        "src/util/mod.rs": "pub fn helper() {}\n",
    }
    order, edges = ordered(repo)
    assert edges == {
        ("src/lib.rs", "src/parser.rs"),
        ("src/lib.rs", "src/util/mod.rs"),
        ("src/parser.rs", "src/parser/lexer.rs"),
        ("src/parser.rs", "src/util/mod.rs"),
        ("src/parser/lexer.rs", "src/util/mod.rs"),
    }
    assert order == [
        "Cargo.toml",
        "src/util/mod.rs",
        "src/parser/lexer.rs",
        "src/parser.rs",
        "src/lib.rs",
    ]


def test_c_includes_quoted_angle_and_include_dirs():
    repo = {
        "include/lib/api.h": '#include "types.h"\n#include <stdio.h>\n',
        "include/lib/types.h": "typedef int t;\n",
        "src/main.c": '#include <lib/api.h>\n#include "local.h"\n',
        "src/local.h": "#pragma once\n",
    }
    order, edges = ordered(repo)
    assert edges == {
        ("include/lib/api.h", "include/lib/types.h"),
        ("src/main.c", "include/lib/api.h"),
        ("src/main.c", "src/local.h"),
    }
    assert order.index("include/lib/types.h") < order.index("include/lib/api.h")
    assert order[-1] == "src/main.c"


def test_java_single_static_and_wildcard_imports():
    repo = {
        "src/main/java/com/x/App.java": "package com.x;\nimport com.x.model.*;\n"
        "import static com.x.util.Strings.pad;\nimport java.util.List;\n",
        "src/main/java/com/x/model/User.java": "package com.x.model;\n",
        "src/main/java/com/x/model/Role.java": "package com.x.model;\n",
        "src/main/java/com/x/util/Strings.java": "package com.x.util;\nimport com.x.model.User;\n",
    }
    order, edges = ordered(repo)
    app = "src/main/java/com/x/App.java"
    assert {b for a, b in edges if a == app} == {
        "src/main/java/com/x/model/User.java",
        "src/main/java/com/x/model/Role.java",
        "src/main/java/com/x/util/Strings.java",
    }
    assert order[-1] == app


def test_cycle_is_broken_by_smallest_in_degree_then_path():
    # a <-> b cycle; c imports a; d is independent.
    files = ["a.py", "b.py", "c.py", "d.py"]
    edges = [(0, 1), (1, 0), (2, 0)]
    order = order_files(files, edges)
    # d has no unplaced dependency; a and b have one each (tie -> path); then b, then c.
    assert [files[i] for i in order] == ["d.py", "a.py", "b.py", "c.py"]
    assert cycle_members(4, edges) == 2


def test_file_importing_a_cycle_is_not_taken_for_a_cycle_member():
    # "a_first.py" sorts first and has one unplaced dependency, like each cycle member, but it
    # is outside the cycle, so it must come after the file it imports.
    files = ["a_first.py", "m.py", "n.py"]
    edges = [(0, 1), (1, 2), (2, 1)]
    order = order_files(files, edges)
    assert order.index(1) < order.index(0)
    assert order[0] == 1  # m and n tie on in-degree; m sorts first


def test_self_loops_and_big_cycles_terminate():
    n = 5000
    files = [f"f{i:05d}.py" for i in range(n)]
    edges = [(i, (i + 1) % n) for i in range(n)]  # one ring of 5000 files
    order = order_files(files, edges)
    assert sorted(order) == list(range(n))
    assert len(set(strongly_connected(n, edges))) == 1


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 30).flatmap(
        lambda n: st.tuples(
            st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)))
        )
    )
)
def test_order_is_a_permutation_and_respects_edges_outside_cycles(case):
    n, edges = case
    files = [f"f{i:02d}" for i in range(n)]
    order = order_files(files, edges)
    assert sorted(order) == list(range(n))
    pos = {f: k for k, f in enumerate(order)}
    comp = strongly_connected(n, edges)
    for a, b in edges:
        if comp[a] != comp[b]:
            assert pos[b] < pos[a]


@pytest.mark.parametrize(
    "package", ["json", "email", "asyncio", "importlib", "unittest", "xml", "concurrent"]
)
def test_standard_library_packages_match_an_independent_ast_checker(package):
    """The repository as the reader gives it (empty ``__init__.py`` files kept), its edges
    against those of the end-to-end test's own ``ast`` resolver, which shares no code with
    ``dependency_edges``; then no edge of that checker is broken outside a cycle."""
    root = Path(sysconfig.get_paths()["stdlib"]) / package
    doc, _ = read_repository(str(root), f"code/{package}", package, ReadSettings())
    files, texts = doc.files, doc.texts
    edges, unparsed = dependency_edges(files, texts, package)
    assert len(edges) >= len(files) // 2 and unparsed == 0
    checker = _ast_import_edges(root, files)
    assert {(files[a], files[b]) for a, b in edges} == {(files[a], files[b]) for a, b in checker}
    reach = _on_a_cycle_together(len(files), checker)
    acyclic = [(a, b) for a, b in checker if not (a in reach[b] and b in reach[a])]
    assert [(files[a], files[b]) for a, b in acyclic if b > a] == []  # files are in doc order
