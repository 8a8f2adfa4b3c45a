"""The runtime docstrings (the Rust ``///`` comments PyO3 exports) agree with the stubs.

``help(ferrule.Cache.get)`` shows the runtime ``__doc__``; an editor and the docs site show
the stub's. For every public class of ``python/ferrule/_native.pyi`` and each of its
public methods and properties, the two summaries must agree. The summary is the first
sentence of the first paragraph (the two sides wrap their lines at different widths,
so the first *line* would compare wrapping, not meaning), compared after normalising:
PyO3's text-signature header (``name(...)\\n--\\n\\n``) is dropped, whitespace collapsed,
reST ````code```` and roles (:class:`X`) read as Markdown ```code```, and ``[`X`]`` links
of rustdoc as ```X```.

Dunder methods are left out: their runtime ``__doc__`` is CPython's slot text
(``Return len(self).``), which PyO3 cannot replace.

Every compared name must agree: a new method, or a changed first sentence on one side,
fails here until the other side says the same.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ferrule
import ferrule._native
import pytest

STUBS = Path(ferrule._native.__file__).with_name("_native.pyi")


def _summary(doc: str | None) -> str:
    if not doc:
        return ""
    lines = doc.strip().splitlines()
    if len(lines) >= 2 and lines[1].strip() == "--":  # PyO3's text signature
        lines = lines[3:] if len(lines) > 2 else []
    paragraph: list[str] = []
    for line in lines:
        if not line.strip():
            if paragraph:
                break
            continue
        paragraph.append(line.strip())
    text = " ".join(paragraph)
    text = re.sub(r":(?:py:)?[a-z]+:`~?\.?([^`]+)`", r"`\1`", text)  # reST roles
    text = re.sub(r"``([^`]+)``", r"`\1`", text)  # reST literals
    text = re.sub(r"\[`([^`\]]+)`\](?:\([^)]*\)|\[[^\]]*\])?", r"`\1`", text)  # rustdoc links
    text = re.sub(r"\s+", " ", text).strip()
    sentence = re.match(r"(.+?[.!?])(?:\s|$)", text)
    return sentence.group(1) if sentence else text


def _stub_entries() -> list[tuple[str, str]]:
    """(qualified name, stub docstring) of each public class and its public members."""
    public = set(ferrule.__all__)
    tree = ast.parse(STUBS.read_text(encoding="utf-8"))
    entries: list[tuple[str, str]] = []
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name in public):
            continue
        entries.append((node.name, ast.get_docstring(node) or ""))
        seen: set[str] = set()
        for member in node.body:
            if not isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if member.name.startswith("_") or member.name in seen:
                continue
            doc = ast.get_docstring(member)
            if doc is None and any(  # overloads: the first one carries the text
                isinstance(d, ast.Name) and d.id == "overload" for d in member.decorator_list
            ):
                continue
            seen.add(member.name)
            entries.append((f"{node.name}.{member.name}", doc or ""))
    return entries


def _runtime_doc(qualname: str) -> str | None:
    cls_name, _, attr = qualname.partition(".")
    obj = getattr(ferrule, cls_name)
    if attr:
        obj = obj.__dict__.get(attr, getattr(obj, attr))
    return obj.__doc__


ENTRIES = [(name, doc) for name, doc in _stub_entries() if _summary(doc)]


@pytest.mark.parametrize(("name", "stub_doc"), ENTRIES, ids=[name for name, _ in ENTRIES])
def test_runtime_doc_agrees_with_stub(name: str, stub_doc: str) -> None:
    assert _summary(_runtime_doc(name)) == _summary(stub_doc)


def test_every_public_native_class_is_compared() -> None:
    """A public native class whose stub lost its docstring would escape the comparison."""
    native = {
        name
        for name in ferrule.__all__
        if isinstance(getattr(ferrule, name), type)
        and getattr(ferrule._native, name, None) is getattr(ferrule, name)
    }
    assert native <= {name for name, _ in ENTRIES}


def test_summary_rule() -> None:
    assert _summary("get(self, key)\n--\n\nThe value,\nelse ``None``. More.") == (
        "The value, else `None`."
    )
    assert _summary("See [`Cache`](crate::Cache) and :class:`Cache`.") == "See `Cache` and `Cache`."
