"""Import extraction and dependency order on small hand-made repositories with known answers."""

from __future__ import annotations

import os
import sysconfig

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.code.dependencies import dependency_edges
from transforms.code.ordering import cycle_members, order_files, strongly_connected


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


def test_python_unparseable_file_still_ordered_and_counted():
    files = ["a.py", "b.py", "c.py"]
    texts = [
        "print 'python 2'\nimport b\n",  # Python 2 still scans
        "x = 1\n",
        'import b\n"""unterminated docstring\nimport a\n',  # counted, still scanned
    ]
    edges, unparsed = dependency_edges(files, texts)
    assert edges == [(0, 1), (2, 0), (2, 1)] and unparsed == 1


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


@pytest.mark.parametrize("package", ["json", "email", "asyncio", "importlib"])
def test_standard_library_packages_order_imports_first(package):
    root = os.path.join(sysconfig.get_paths()["stdlib"], package)
    files, texts = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                files.append(os.path.relpath(path, root).replace(os.sep, "/"))
                with open(path, encoding="utf-8") as fh:
                    texts.append(fh.read())
    edges, unparsed = dependency_edges(files, texts, package)
    assert len(edges) >= len(files) // 2 and unparsed == 0
    order = order_files(files, edges)
    pos = {i: k for k, i in enumerate(order)}
    comp = strongly_connected(len(files), edges)
    assert all(pos[b] < pos[a] for a, b in edges if comp[a] != comp[b])
