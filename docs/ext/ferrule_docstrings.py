"""A griffe extension that lets mkdocstrings render ferrule's docstrings as written.

ferrule's docstrings (the stubs in ``python/ferrule/_native.pyi`` and the Python
modules) are plain text with reST touches, read by ``help()`` and doctest first. Here
they are turned into Markdown, without changing the sources:

- ``>>>`` examples (with their output) become fenced ``pycon`` blocks;
- roles such as :class:`Cache` or :meth:`Registry.find` become cross-references to the
  public name (``ferrule.Cache``, ``ferrule.Registry.find``), so a role naming something
  the site does not document breaks ``mkdocs build --strict``; roles naming other
  libraries (``sys.unraisablehook``) become inline code;
- a native class's ``__new__`` is shown as its constructor (mkdocstrings merges only
  ``__init__`` into the class);
- an overloaded stub method with no implementation is shown once, with the overloads'
  signatures and the first overload's docstring.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|exc|obj|data|mod):`(~?)\.?([^`]+)`")


def _public(path: str) -> str:
    """``ferrule._native.Cache`` -> ``ferrule.Cache``: drop the private segments."""
    parts = path.split(".")
    return ".".join(p for p in parts if not p.startswith("_") or p.startswith("__"))


class FerruleDocstrings(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != "ferrule":
            return
        self.pkg = pkg
        for obj in self._walk(pkg):
            if obj.is_class:
                self._constructor(obj)
                self._overloads(obj)
        for obj in self._walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = self._markdown(obj, obj.docstring.value)

    def _walk(self, obj: griffe.Object) -> Any:
        yield obj
        for member in list(obj.members.values()):
            if not member.is_alias:
                yield from self._walk(member)

    def _constructor(self, cls: griffe.Class) -> None:
        new = cls.members.get("__new__")
        if new is None or "__init__" in cls.members or not new.is_function:
            return
        cls.del_member("__new__")
        new.name = "__init__"
        new.returns = None
        cls.set_member("__init__", new)

    def _overloads(self, cls: griffe.Class) -> None:
        for name, overloads in cls.overloads.items():
            if name in cls.members or not overloads:
                continue
            shown = overloads[-1]
            documented = next((o for o in overloads if o.docstring), None)
            if documented is not None and documented is not shown:
                shown.docstring = documented.docstring
                shown.docstring.parent = shown
            shown.overloads = overloads[:-1]
            cls.set_member(name, shown)
        # Keep the members in source order (set_member appends).
        order = sorted(cls.members.items(), key=lambda item: item[1].lineno or 0)
        for name, member in order:
            cls.del_member(name)
            cls.set_member(name, member)

    def _target(self, obj: griffe.Object, name: str) -> str | None:
        """The public path a role names, if it is one of ferrule's objects."""
        head = name.split(".")[0]
        if name.startswith("ferrule."):
            return name
        module = obj if obj.is_module else obj.module
        for mod_path in dict.fromkeys((_public(module.path), "ferrule")):
            mod = self.pkg if mod_path == "ferrule" else self.pkg[mod_path.removeprefix("ferrule.")]
            if head in (mod.exports or ()):
                return f"{mod_path}.{name}"
        cls = obj if obj.is_class else obj.parent if obj.parent and obj.parent.is_class else None
        if cls is not None and head in cls.all_members:
            return f"{_public(cls.path)}.{name}"
        return None

    def _markdown(self, obj: griffe.Object, text: str) -> str:
        def role(m: re.Match[str]) -> str:
            name = m.group(2)
            shown = name.rsplit(".", 1)[-1] if m.group(1) else name  # ~: the last part
            target = self._target(obj, name)
            return f"[`{shown}`][{target}]" if target else f"`{shown}`"

        out: list[str] = []
        example = False
        for line in text.splitlines():
            if line.lstrip().startswith(">>>") and not example:
                if out and out[-1].strip():
                    out.append("")
                out.append("```pycon")
                example = True
            elif example and not line.strip():
                out.append("```")
                example = False
            out.append(line if example else _ROLE.sub(role, line))
        if example:
            out.append("```")
        return "\n".join(out)
