"""The core names no architecture: everything an architecture decides is in its plugin.

The scan reads the code of ``klpcore/`` (tokens, so comments do not count;
docstrings and the prose of version-table rows, ``Behaviour(name, since, arch,
description, source)``'s last two arguments, are documentation and do not
count either) and fails, with file:line, on

* an architecture's name in an identifier or a string (``x86``, ``arm64``,
  ``aarch64``, ``ppc``/``powerpc``, ``s390``, ``i386``, ``amd64``, and the
  relocation names built on them such as ``R_390_``);
* an architecture-only kernel config symbol (``CONFIG_X86*``, ``CONFIG_PPC*``,
  ``CONFIG_ARM64*``, ``CONFIG_S390*``);
* an ``e_machine`` number of the four architectures: 62 (x86_64) and 183
  (aarch64) anywhere; 21 (ppc64), 22 and 0xA390 (s390), which are also errno
  values and shifts, where they meet a machine: compared with or assigned to
  a name containing ``machine``, or next to another machine number in a literal.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARCH_NAME = re.compile(r"x86|i386|amd64|aarch64|arm64|ppc|powerpc|s390|R_390_", re.I)
ARCH_CONFIG = re.compile(r"CONFIG_(X86|PPC|ARM64|S390)")
ALWAYS = {62, 183}  # EM_X86_64, EM_AARCH64
IN_MACHINE_CONTEXT = {21, 22, 0xA390}  # EM_PPC64, EM_S390, EM_S390_OLD
MACHINES = ALWAYS | IN_MACHINE_CONTEXT
#: identifiers and string text (Python 3.12 splits f-strings into FSTRING_MIDDLE tokens)
TEXT_TOKENS = {tokenize.NAME, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}


Span = tuple[tuple[int, int], tuple[int, int]]


def _documentation(tree: ast.AST) -> list[Span]:
    """Where docstrings (any string statement) and version-table prose are: (start, end) positions."""
    spans: list[Span] = []

    def span(node: ast.expr) -> Span:
        return (node.lineno, node.col_offset), (node.end_lineno or node.lineno, node.end_col_offset or 0)

    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            spans.append(span(node.value))
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Behaviour":
            spans += [span(arg) for arg in node.args[3:]]
            spans += [span(kw.value) for kw in node.keywords if kw.arg in ("description", "source")]
    return spans


def _names_machine(node: ast.AST) -> bool:
    name = getattr(node, "id", None) or getattr(node, "attr", None) or ""
    return "machine" in name.lower()


def _machine_numbers(tree: ast.AST) -> list[tuple[int, int]]:
    """(line, number) of the machine numbers 21/22/0xA390 where they meet a machine."""
    out: list[tuple[int, int]] = []

    def numbers(nodes: list[ast.AST | None]) -> list[ast.Constant]:
        return [
            n for n in nodes if isinstance(n, ast.Constant) and type(n.value) is int and n.value in IN_MACHINE_CONTEXT
        ]

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(_names_machine(n) for n in [node.left, *node.comparators]):
            out += [(n.lineno, n.value) for n in numbers([node.left, *node.comparators])]
        elif isinstance(node, ast.Compare):
            for comp in node.comparators:
                if isinstance(comp, (ast.Tuple, ast.Set, ast.List)) and _names_machine(node.left):
                    out += [(n.lineno, n.value) for n in numbers(list(comp.elts))]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_names_machine(t) for t in targets):
                out += [(n.lineno, n.value) for n in numbers([node.value])]
        elif isinstance(node, ast.keyword) and node.arg and "machine" in node.arg:
            out += [(n.lineno, n.value) for n in numbers([node.value])]
        elif isinstance(node, (ast.Dict, ast.Tuple, ast.Set, ast.List)):
            elts: list[ast.AST | None] = [*node.keys, *node.values] if isinstance(node, ast.Dict) else list(node.elts)
            consts = [e for e in elts if isinstance(e, ast.Constant) and type(e.value) is int]
            if len({c.value for c in consts if c.value in MACHINES}) >= 2:
                out += [(n.lineno, n.value) for n in numbers(list(consts))]
    return out


def scan(source: str, where: str = "<text>") -> list[str]:
    """Every architecture name, config symbol and machine number in ``source``'s code."""
    tree = ast.parse(source)
    docs = _documentation(tree)
    found: list[str] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        line = tok.start[0]
        if tok.type == tokenize.STRING and any(a <= tok.start < b for a, b in docs):
            continue
        text = tok.string
        if tok.type in TEXT_TOKENS and (ARCH_NAME.search(text) or ARCH_CONFIG.search(text)):
            found.append(f"{where}:{line}: {text[:80]}")
        elif tok.type == tokenize.NUMBER:
            try:
                value = int(text, 0)
            except ValueError:
                continue
            if value in ALWAYS:
                found.append(f"{where}:{line}: machine number {text}")
    found += [f"{where}:{line}: machine number {value}" for line, value in _machine_numbers(tree)]
    return sorted(set(found))


def test_the_scan_finds_what_it_looks_for() -> None:
    code = '''
"""x86_64 in a docstring is documentation."""
EM_MAP = {62: "a", 21: "b"}  # x86 in a comment is fine
if elf.machine == 22 or spec.machine in (21, 0xA390):
    arch = "arm64"
CONFIG = "CONFIG_PPC64"
def f(x86_flag): return 183
Behaviour("n", (5, 8), "core", "on x86 (documentation)", "x86/module: subject")
Behaviour("ppc64_row", (5, 8), "core", "text", "text")
errno = -22
bits = 1 << 21
'''
    assert scan(code) == sorted(
        [
            "<text>:3: machine number 62",
            "<text>:3: machine number 21",  # next to 62 in a literal
            "<text>:4: machine number 22",  # compared with a machine
            "<text>:4: machine number 21",
            "<text>:4: machine number 41872",
            '<text>:5: "arm64"',
            '<text>:6: "CONFIG_PPC64"',
            "<text>:7: x86_flag",
            "<text>:7: machine number 183",
            '<text>:9: "ppc64_row"',  # a row's name is code, its prose is not
        ]
    )


def test_the_scan_reads_f_strings() -> None:
    assert [h.split(": ")[0] for h in scan('n = 1\nmsg = f"{n} modules for s390x"\n')] == ["<text>:2"]


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "klpcore").rglob("*.py")))
def test_the_core_names_no_architecture(path: str) -> None:
    found = scan((ROOT / path).read_text(), path)
    assert not found, "architecture facts in the core (move them to the plugins):\n" + "\n".join(found)
