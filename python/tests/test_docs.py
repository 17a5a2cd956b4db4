"""The documentation's examples run, and docs/PROTOCOL.md's links to the
Rust code still point at files and functions that exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

import pytest

from conftest import ROOT, Node, Nodes, wait_until

DOCS = ROOT / "docs"


def code_blocks(path: Path, lang: str) -> List[str]:
    return re.findall(r"```" + lang + r"\n(.*?)```", path.read_text(), re.S)


def with_nodes(code: str, urls: List[str]) -> str:
    for placeholder, url in zip(("redis://a:6379", "redis://b:6379", "redis://c:6379"), urls):
        code = code.replace(placeholder, url)
    return code


def test_readme_python_examples_run(nodes3: Nodes) -> None:
    blocks = code_blocks(ROOT / "README.md", "python")
    assert len(blocks) == 3, "README: the redlock example, ours line for line, the fuller one"
    theirs, ours, fuller = blocks
    assert len(theirs.splitlines()) == len(ours.splitlines())
    assert "RedLock(\"distributed_lock\"" in theirs and ".lock(\"distributed_lock\")" in ours

    done: List[int] = []
    exec(with_nodes(ours, nodes3.urls), {"do_something": lambda: done.append(1)})
    assert done == [1]

    class Step:
        def __init__(self) -> None:
            self.fences: List[int] = []

        def run(self, fence: int) -> None:
            self.fences.append(fence)

    steps = [Step(), Step()]
    exec(with_nodes(fuller, nodes3.urls), {"steps": steps})
    assert steps[0].fences and steps[0].fences == steps[1].fences
    # Both examples released their locks (a release returns once a quorum
    # answered; the others follow at once).
    for node in nodes3:
        for key in ("jobs:nightly", "distributed_lock"):
            assert wait_until(lambda: node.conn().execute_command("LOCK.INFO", key) is None, 2.0)


def test_commands_md_redis_py_snippet_runs(node1: Node) -> None:
    blocks = code_blocks(DOCS / "COMMANDS.md", "python")
    assert len(blocks) == 1
    code = blocks[0].replace("port=6379", f"port={node1.port}")
    assert f"port={node1.port}" in code
    exec(code, {"__name__": "commands_md"})
    assert node1.conn().execute_command("LOCK.INFO", "jobs:nightly") is None


LINK = re.compile(r"\[`([A-Za-z_][A-Za-z0-9_:]*)`\]\(\.\./([^)#]+)\)")


def test_protocol_md_links_name_functions_that_exist() -> None:
    text = (DOCS / "PROTOCOL.md").read_text()
    links = LINK.findall(text)
    assert len(links) >= 25, links
    missing = []
    for name, target in links:
        path = ROOT / target
        if not path.is_file():
            missing.append(f"{target}: no such file")
            continue
        source = path.read_text()
        owner, _, function = name.rpartition("::")
        if not re.search(r"\bfn " + re.escape(function) + r"\b", source):
            missing.append(f"{target}: no fn {function}")
        if owner and not re.search(r"\b(struct|enum|impl) " + re.escape(owner) + r"\b", source):
            missing.append(f"{target}: no type {owner}")
    # Every other relative link (to docs or files) must resolve too.
    for target in re.findall(r"\]\((?!https?:)([^)#]+)(?:#[^)]*)?\)", text):
        if not (DOCS / target).exists():
            missing.append(f"{target}: broken link")
    assert not missing, "docs/PROTOCOL.md has rotted:\n" + "\n".join(missing)


def test_protocol_md_names_every_command_form_the_client_sends() -> None:
    text = (DOCS / "PROTOCOL.md").read_text()
    for form in (
        "LOCK.ACQUIRE <key> <token> <ttl-ms>\n",
        "LOCK.ACQUIRE <key> <token> <ttl-ms> FENCE <T>",
        "LOCK.ACQUIRE <key> <token> <ttl-ms> WAIT <wait-ms> TICKET <ticket>",
        "LOCK.EXTEND <key> <token> <ttl-ms>",
        "LOCK.RELEASE <key> <token>",
    ):
        assert form in text, form
    # And the Rust client still sends exactly those arguments.
    src = ROOT / "client" / "src"
    node_rs = "".join(p.read_text() for p in [src / "node.rs", *sorted((src / "node").glob("*.rs"))])
    for needle in ('"LOCK.ACQUIRE"', '"FENCE"', '"WAIT"', '"TICKET"', '"LOCK.EXTEND"', '"LOCK.RELEASE"'):
        assert needle in node_rs, needle


@pytest.mark.parametrize("doc", ["COMMANDS.md", "PROTOCOL.md"])
def test_docs_exist(doc: str) -> None:
    assert (DOCS / doc).is_file()
