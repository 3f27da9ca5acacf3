"""How dense the source reads, measured as the code-style review measures it.

    python tools/code_measures.py [PATH ...]      (default: src/kdmem)

Prints, for all files together and for the densest files: lines over 100 and 119/120
characters (a share of every line), code tokens per line (Python tokens other than comments,
docstrings, newlines and indentation, over the lines on which such a token starts), ``# noqa`` markers,
and the length of the functions the style rules bound (``stage_graph``, ``analyze``). With
``--json`` it prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import tokenize
from pathlib import Path

NOT_CODE = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}
BOUNDED_FUNCTIONS = ("stage_graph", "analyze")


def file_measures(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    docstrings = {
        (node.lineno, node.col_offset)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }
    tokens = [
        tok
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type not in NOT_CODE and not (tok.type == tokenize.STRING and tok.start in docstrings)
    ]
    code_lines = {tok.start[0] for tok in tokens}
    functions = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in BOUNDED_FUNCTIONS:
            functions[node.name] = node.end_lineno - node.lineno + 1
    return {
        "lines": len(lines),
        "over_100": sum(len(line) > 100 for line in lines),
        "over_119": sum(len(line) > 119 for line in lines),
        "over_120": sum(len(line) > 120 for line in lines),
        "code_tokens": len(tokens),
        "code_lines": len(code_lines),
        "noqa": sum("# noqa" in line for line in lines),
        "functions": functions,
    }


def _density(item: tuple[str, dict]) -> tuple[int, float]:
    """Files by lines over 120 characters, then by code tokens per line."""
    m = item[1]
    return m["over_120"], m["code_tokens"] / max(1, m["code_lines"])


def summarize(measures: dict[str, dict]) -> dict:
    total = {
        key: sum(m[key] for m in measures.values())
        for key in ("lines", "over_100", "over_119", "over_120", "code_tokens", "code_lines", "noqa")
    }
    return {
        "files": len(measures),
        "lines": total["lines"],
        "over_100": total["over_100"],
        "over_100_share": total["over_100"] / total["lines"],
        "over_119": total["over_119"],
        "over_120": total["over_120"],
        "over_120_share": total["over_120"] / total["lines"],
        "code_tokens_per_line": total["code_tokens"] / total["code_lines"],
        "noqa": total["noqa"],
        "functions": {
            f"{path}:{name}": length for path, m in measures.items() for name, length in m["functions"].items()
        },
        "densest_files": {
            path: {
                "over_120": m["over_120"],
                "code_tokens_per_line": round(m["code_tokens"] / max(1, m["code_lines"]), 1),
            }
            for path, m in sorted(measures.items(), key=_density, reverse=True)[:5]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=["src/kdmem"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    files = sorted(p for root in map(Path, args.paths) for p in ([root] if root.is_file() else root.rglob("*.py")))
    result = summarize({str(path): file_measures(path) for path in files})
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['files']} files, {result['lines']} lines")
    print(f"lines over 100 characters: {result['over_100_share']:.1%} ({result['over_100']})")
    print(
        f"lines over 120 characters: {result['over_120_share']:.1%} ({result['over_120']}); "
        f"over 119: {result['over_119']}"
    )
    print(f"code tokens per line:      {result['code_tokens_per_line']:.1f}")
    print(f"# noqa markers:            {result['noqa']}")
    for name, length in result["functions"].items():
        print(f"{name}: {length} lines")
    for path, m in result["densest_files"].items():
        print(f"  {path}: {m['over_120']} lines over 120, {m['code_tokens_per_line']} code tokens per line")


if __name__ == "__main__":
    main()
