"""The documentation runs: every ``python`` block of README.md and docs/, every ``>>>``
example of the stubs, and the API pages name every public name.

Code blocks: the fenced blocks tagged ``python`` of one Markdown file run in order in one
namespace, so a block may use what an earlier block of its file defined (each test runs
the earlier blocks of its file first if they have not run yet). A block may be skipped
only by an HTML comment on the line before its fence, ``<!-- skip: <reason> -->``, for
output or illustration that cannot run; the reason is required. A block that imports
``redis`` or ``ferrule.redis``, and every later block of its file, gets a real
redis-server from ``tests/redis_server.py`` (``REDIS_URL`` names it) and is skipped only
when no server can be had.
"""

from __future__ import annotations

import ast
import doctest
import gc
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ferrule
import ferrule._native
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
STUBS = Path(ferrule._native.__file__).with_name("_native.pyi")

_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)(.*)$")
_SKIP = re.compile(r"^<!--\s*skip:\s*(.*?)\s*-->$")
_NEEDS_REDIS = re.compile(r"^\s*(import|from) (ferrule\.)?redis\b", re.M)


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the first code line
    code: str
    skip: str | None  # the reason, when marked
    needs_redis: bool  # it, or an earlier block of its file, imports redis

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def blocks_of(path: Path) -> list[Block]:
    """The fenced ``python`` blocks of a Markdown file (top level: not indented)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    redis = False
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2)
        end = i + 1
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        if lang in ("python", "py"):
            before = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
            marker = _SKIP.match(before)
            code = "\n".join(lines[i + 1 : end]) + "\n"
            redis = redis or bool(_NEEDS_REDIS.search(code))
            found.append(Block(path, i + 2, code, marker.group(1) if marker else None, redis))
        i = end + 1
    return found


ALL_BLOCKS = [b for p in markdown_files() for b in blocks_of(p)]


class _FileRun:
    """The shared namespace of one file's blocks and how far it has run."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"__name__": "__docs__"}
        self.done = -1  # index (in the file's list) of the last block run
        self.failed: str | None = None
        self.redis = False  # the database was emptied for this file


_RUNS: dict[Path, _FileRun] = {}


def _exec(block: Block, ns: dict[str, Any]) -> None:
    # Leading newlines put tracebacks on the Markdown file's own line numbers.
    code = compile("\n" * (block.line - 1) + block.code, str(block.path), "exec")
    exec(code, ns)


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.id)
def test_code_block_runs(
    block: Block, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    siblings = [b for b in ALL_BLOCKS if b.path == block.path]
    index = siblings.index(block)
    try:
        _run_block(block, siblings, index, request, monkeypatch)
    finally:
        if index == len(siblings) - 1:  # the file is done: drop its namespace
            run = _RUNS.pop(block.path, None)
            if run is not None:
                run.ns.clear()
            gc.collect()


def _run_block(
    block: Block,
    siblings: list[Block],
    index: int,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if block.skip is not None:
        assert block.skip, f"{block.id}: a skipped block needs a reason: <!-- skip: why -->"
        pytest.skip(f"marked in the docs: {block.skip}")
    run = _RUNS.get(block.path)
    if run is None or run.done >= index:  # a file's first block, or the same one again
        run = _RUNS[block.path] = _FileRun()
    pending = [b for b in siblings[run.done + 1 : index] if b.skip is None]
    redis_reason = None
    if any(b.needs_redis for b in [*pending, block]):
        try:
            server = request.getfixturevalue("redis_server")
        except pytest.skip.Exception as e:
            redis_reason = str(e)
        else:
            monkeypatch.setenv("REDIS_URL", server.url)
            if not run.redis:  # the file's first use of Redis: an empty database
                run.redis = True
                with server.client() as client:
                    client.flushall()
    for earlier in pending:
        if run.failed is None and not (earlier.needs_redis and redis_reason):
            try:
                _exec(earlier, run.ns)
            except Exception as e:
                run.failed = f"{earlier.id}: {type(e).__name__}: {e}"
    run.done = index
    if block.needs_redis and redis_reason:
        pytest.skip(redis_reason)
    if run.failed is not None:
        pytest.fail(f"an earlier block of this file failed: {run.failed}")
    try:
        _exec(block, run.ns)
    except BaseException as e:
        run.failed = f"{block.id}: {type(e).__name__}: {e}"
        raise


def test_blocks_are_found() -> None:
    """The collector sees the blocks (a broken fence regex would pass vacuously)."""
    readme = [b for b in ALL_BLOCKS if b.path.name == "README.md"]
    guides = {b.path.stem for b in ALL_BLOCKS if b.path.parent.name == "guide"}
    assert len(readme) >= 10
    assert guides == {p.stem for p in (DOCS / "guide").glob("*.md")}


GUIDE_HEADINGS = ["Quick start", "What is guaranteed and how", "Performance", "Limits"]
PARTS = {"ratelimit", "cache", "registry", "queue", "taskpool", "bus", "breaker", "retry"}
PARTS |= {"metrics", "error_store", "health", "budget", "pool", "clock"}


def test_guides_have_the_same_sections() -> None:
    """One guide per part, each with exactly these headings, in this order."""
    assert {p.stem for p in (DOCS / "guide").glob("*.md")} == PARTS
    assert {p.stem for p in (DOCS / "api").glob("*.md")} >= PARTS
    for page in sorted((DOCS / "guide").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        headings = re.findall(r"^## (.+?)\s*$", text, re.M)
        assert headings == GUIDE_HEADINGS, page.name


def test_named_files_exist() -> None:
    """Every benchmark or script the docs tell you to run is there (files move)."""
    named: set[str] = set()
    for page in markdown_files():
        text = page.read_text(encoding="utf-8")
        named |= set(re.findall(r"\b((?:benches|scripts|tests)/[\w./-]+\.(?:py|sh))", text))
        named |= {f"benches/{n}" for n in re.findall(r"\(`(test_\w+\.py)`\)", text)}
    assert named, "no file names found"
    assert sorted(n for n in named if not (ROOT / n).exists()) == []


# ---- the API pages name every public name ------------------------------------------------

_DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.M)


def public_names() -> set[str]:
    import ferrule.events
    import ferrule.metrics
    import ferrule.otel
    import ferrule.redis

    names = {f"ferrule.{n}" for n in ferrule.__all__}
    names |= {f"ferrule.events.{n}" for n in ferrule.events.__all__}
    names |= {f"ferrule.metrics.{n}" for n in ferrule.metrics.__all__}
    names |= {f"ferrule.otel.{n}" for n in ferrule.otel.__all__}
    names |= {f"ferrule.redis.{n}" for n in ferrule.redis.__all__}
    return names


def test_api_pages_cover_every_public_name() -> None:
    documented: list[str] = []
    for page in sorted((DOCS / "api").glob("*.md")):
        documented += _DIRECTIVE.findall(page.read_text(encoding="utf-8"))
    assert public_names() - set(documented) == set(), "public names missing from docs/api"
    assert set(documented) - public_names() == set(), "docs/api renders names that are not public"
    twice = {n for n in documented if documented.count(n) > 1}
    assert twice == set(), "rendered on more than one API page"


# ---- the stubs' examples -----------------------------------------------------------------


def stub_docstrings() -> list[tuple[str, str, int]]:
    """(qualified name, docstring, line) of every stub docstring with an example."""
    tree = ast.parse(STUBS.read_text(encoding="utf-8"))
    found: list[tuple[str, str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                doc = ast.get_docstring(child, clean=True)
                if doc and ">>>" in doc:
                    found.append((name, doc, child.body[0].lineno))
                visit(child, f"{name}.")

    visit(tree, "")
    return found


STUB_EXAMPLES = stub_docstrings()


def _example_globals() -> dict[str, Any]:
    # The public names, and the native module's internals for the internal examples.
    globs = {k: v for k, v in vars(ferrule._native).items() if not k.startswith("__")}
    globs.update({n: getattr(ferrule, n) for n in ferrule.__all__})
    return globs


@pytest.mark.parametrize(("name", "doc", "line"), STUB_EXAMPLES, ids=[e[0] for e in STUB_EXAMPLES])
def test_stub_example(name: str, doc: str, line: int) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(doc, _example_globals(), name, str(STUBS), line)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    out: list[str] = []
    runner.run(test, out=out.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(out)
    assert result.attempted > 0


def test_every_stub_example_is_collected() -> None:
    text = STUBS.read_text(encoding="utf-8")
    assert sum(doc.count(">>>") for _, doc, _ in STUB_EXAMPLES) == text.count(">>>")
