"""Below the command line's parser, values that have a type are not compared as text: the
attention kernel, the --parallel strategy, the U-Net's layer names and the device are enums or a
``torch.device`` once argparse has read them (read from the source, as test_layers reads imports)."""

from __future__ import annotations

import ast

from cli.parser import Parallelism
from lvdm.modules.attention_kernels import AttentionBackend
from lvdm.modules.layer_names import AttentionSite, TransformerKind, UNetSide
from tests.conftest import REPO

# The texts of the typed values: compared with == / != / in, they mean a string travelled.
TYPED_TEXTS = {
    m.value for e in (AttentionBackend, Parallelism, AttentionSite, TransformerKind, UNetSide) for m in e
}
PACKAGES = ("cli", "fifo", "lvdm", "infra")


# The mode grammar reads the text of --mode, whose parts include "attn1" and "attn2".
GRAMMAR = {("fifo/options.py", "parse_mode")}


def text_comparisons(tree: ast.AST, path: str = "") -> list[tuple[int, str]]:
    """(line, text) of every comparison with a typed value's text, and of every
    ``.startswith("cuda"/"cpu")`` (a device as text), outside the mode grammar."""
    grammar = [
        node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and (path, node.name) in GRAMMAR
    ]
    skipped = {id(inner) for node in grammar for inner in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Compare) and any(
            isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops
        ):
            for side in (node.left, *node.comparators):
                values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                for value in values:
                    if isinstance(value, ast.Constant) and value.value in TYPED_TEXTS:
                        found.append((node.lineno, value.value))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "startswith"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in ("cuda", "cpu")
        ):
            found.append((node.lineno, f"startswith({node.args[0].value!r})"))
    return found


def test_the_detector_finds_a_string_compared() -> None:
    tree = ast.parse('if r.attention == "xformers" or parallel in ("windows",) or d.startswith("cuda"): pass')
    assert [text for _, text in text_comparisons(tree)] == ["xformers", "windows", "startswith('cuda')"]


def test_no_typed_value_is_compared_as_text_below_the_parser() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {text}"
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        for line, text in text_comparisons(
            ast.parse(path.read_text(encoding="utf-8")), path.relative_to(REPO).as_posix()
        )
    ]
    assert offenders == []
