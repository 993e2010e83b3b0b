#!/usr/bin/env python3
"""Extract the error sites of KServe's validating webhooks from a checkout of github.com/kserve/kserve into a JSON
inventory, INVENTORY = tests/schemas/kserve-admission/kserve-webhook.messages.json (data only: no upstream code).

Every `errors.New`, `fmt.Errorf` and `admission.Denied(fmt.Sprintf(...))` whose message is a string literal (or a
`+` concatenation of literals) or a constant of the same Go package, and every `field.Invalid`'s detail, in source
order, with the enclosing function (`Receiver.Method` for methods), the line, the call and the constant's name.
Per file: its path in kserve and its sha256, so a later re-read can tell whether the file changed.

    python scripts/kserve_webhook_inventory.py /path/to/kserve > INVENTORY          # regenerate
    python scripts/kserve_webhook_inventory.py /path/to/kserve --check INVENTORY  # exit 1 when it differs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

FILES = [
    "pkg/apis/serving/v1beta1/inference_service_validation.go",
    "pkg/apis/serving/v1beta1/component.go",
    "pkg/apis/serving/v1beta1/predictor.go",
    "pkg/apis/serving/v1beta1/predictor_custom.go",
    "pkg/validation/env_policy.go",
    "pkg/validation/confidential.go",
    "pkg/webhook/admission/servingruntime/servingruntime_webhook.go",
]
"""The webhook sources, in this order; constants are shared within a Go package (the same directory)."""

_LITERAL = r'"(?:[^"\\]|\\.)*"'
_STRING = rf"{_LITERAL}(?:\s*\+\s*{_LITERAL})*"
_CALL = re.compile(rf"(errors\.New|fmt\.Errorf|admission\.Denied\(fmt\.Sprintf)\(\s*({_STRING}|[A-Z]\w*)")
_FIELD_INVALID = re.compile(r"field\.Invalid\((.*?)\)\)", re.S)
_DECLARATION = re.compile(r"^(func|var|const|type|import)\b(?:\s*\((?:\w+\s+)?\*?(\w+)[^)]*\))?\s*(\w*)", re.M)


def unquote(text: str) -> str:
    """The value of a Go interpreted string literal or a `+` concatenation of them."""
    return "".join(json.loads(literal) for literal in re.findall(_LITERAL, text))


def constants(source: str) -> dict[str, str]:
    """Exported string constants (and vars) assigned a literal: `Name = "..."` or `Name string = "..."`."""
    return {m.group(1): unquote(m.group(2))
            for m in re.finditer(rf"^\s*([A-Z]\w*)\s+(?:string\s+)?=\s*({_STRING})", source, re.M)}


def enclosing(source: str, offset: int) -> str:
    """The top-level declaration (gofmt puts it in column 0) that holds `offset`: `Name`, `Receiver.Name` for a
    method, or `(var)`/`(const)` outside any function."""
    name = "(file)"
    for m in _DECLARATION.finditer(source, 0, offset):
        keyword, receiver, ident = m.groups()
        name = (f"{receiver}.{ident}" if receiver else ident) if keyword == "func" else f"({keyword})"
    return name


def sites(source: str, package_constants: dict[str, str]) -> list[dict[str, Any]]:
    """The error sites of one Go source, in source order."""
    found = []
    for m in _CALL.finditer(source):
        call, argument = m.group(1), m.group(2)
        entry: dict[str, Any] = {"line": source.count("\n", 0, m.start()) + 1,
                                 "function": enclosing(source, m.start()), "call": call + ")" * call.count("(")}
        if argument.startswith('"'):
            entry["message"] = unquote(argument)
        else:
            if argument not in package_constants:
                raise SystemExit(f"line {entry['line']}: {argument} is not a string constant of the package")
            entry.update(constant=argument, message=package_constants[argument])
        found.append((m.start(), entry))
    for m in _FIELD_INVALID.finditer(source):
        literals = re.findall(_LITERAL, m.group(1))
        if not literals:
            raise SystemExit(f"line {source.count(chr(10), 0, m.start()) + 1}: field.Invalid without a literal detail")
        found.append((m.start(), {"line": source.count("\n", 0, m.start()) + 1,
                                  "function": enclosing(source, m.start()), "call": "field.Invalid",
                                  "message": json.loads(literals[-1])}))
    return [entry for _, entry in sorted(found, key=lambda item: item[0])]


def inventory(root: Path, commit: str) -> dict[str, Any]:
    sources = {path: (root / path).read_bytes() for path in FILES}
    package: dict[str, dict[str, str]] = {}
    for path, data in sources.items():
        package.setdefault(str(Path(path).parent), {}).update(constants(data.decode()))
    files, messages = [], []
    for path, data in sources.items():
        name = Path(path).name
        files.append({"file": name, "path": path, "sha256": hashlib.sha256(data).hexdigest()})
        messages += [{"file": name, **entry} for entry in sites(data.decode(), package[str(Path(path).parent)])]
    return {
        "source": "github.com/kserve/kserve",
        "commit": commit,
        "how": "scripts/kserve_webhook_inventory.py: every errors.New, fmt.Errorf and admission.Denied(fmt.Sprintf) "
               "with a literal or package-constant message, and every field.Invalid detail, in source order",
        "files": files,
        "messages": messages,
    }


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kserve", type=Path, help="a checkout of github.com/kserve/kserve")
    parser.add_argument("--commit", help="the checkout's commit (default: git rev-parse HEAD in it)")
    parser.add_argument("--check", type=Path, metavar="INVENTORY",
                        help="compare with this inventory instead of printing; exit 1 when they differ")
    args = parser.parse_args(argv)
    commit = args.commit or subprocess.run(["git", "-C", str(args.kserve), "rev-parse", "HEAD"], check=True,
                                           capture_output=True, text=True).stdout.strip()
    text = render(inventory(args.kserve, commit))
    if args.check is None:
        sys.stdout.write(text)
        return 0
    if args.check.read_text() == text:
        print(f"{args.check}: up to date with {commit}")
        return 0
    old = json.loads(args.check.read_text())
    new = json.loads(text)
    if old.get("commit") != new["commit"]:
        print(f"commit: {old.get('commit')} -> {new['commit']}")
    pinned = {f["path"]: f["sha256"] for f in old.get("files", [])}
    for f in new["files"]:
        if pinned.get(f["path"]) != f["sha256"]:
            print(f"changed file {f['path']}: sha256 {pinned.get(f['path'])} -> {f['sha256']}")
    pairs = {(m["file"], m["message"]) for m in old.get("messages", [])}
    fresh = {(m["file"], m["message"]) for m in new["messages"]}
    for file, message in sorted(fresh - pairs):
        print(f"new message  {file}: {message}")
    for file, message in sorted(pairs - fresh):
        print(f"gone message {file}: {message}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
