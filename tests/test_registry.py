"""The forge registry is the one place that names forges: every module iterates over it.

A new forge is its adapter (with its `FORGE` description), its events module, its settings
section and one line in `forges/registry.py`; these tests fail if another module starts to
switch on a forge's name again, or if the registry and the settings disagree."""

from __future__ import annotations

import re
from pathlib import Path

from bountybot.config import Settings, forge_sections
from bountybot.forges.registry import FORGES, names, route_pattern

PACKAGE = Path(__file__).parent.parent / "bountybot"
# Where a forge's name may be written: its own modules, the settings' sections, and the
# demo's story (which plays a GitHub repo).
ALLOWED = {"forges", "config.py", "demo.py"}
NAMED = re.compile(r"""["'](github|gitlab|forgejo)["']""")


def test_the_registry_and_the_settings_know_the_same_forges() -> None:
    assert names() == forge_sections() == ("github", "gitlab", "forgejo")
    assert route_pattern() == "github|gitlab|forgejo"
    for name, forge in FORGES.items():
        assert forge.name == name
        section = getattr(Settings(config_file=None), name)
        assert section.enabled() is False  # off until configured
        assert forge.client(Settings(config_file=None)) is None
        assert forge.comment_limit >= 65_536


def test_no_module_outside_the_forges_switches_on_a_forge_name() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if NAMED.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, "forge names outside the registry:\n" + "\n".join(found)


def test_each_forge_reads_its_own_closing_keywords_and_topics() -> None:
    github, gitlab = FORGES["github"], FORGES["gitlab"]
    comment = {"repository": {"id": 7}, "issue": {"number": 3}}
    note = {"object_kind": "note", "project": {"id": 7}, "merge_request": {"iid": 3}}
    assert github.topic("issue_comment", comment) == "github:7:3"
    assert gitlab.topic("Note Hook", note) == "gitlab:7:mr:3"
    assert github.topic("issue_comment", note) is None
    assert gitlab.topic("Note Hook", comment) is None
    assert gitlab.confirms_comments and not github.confirms_comments
    forgejo = FORGES["forgejo"]
    assert forgejo.topic("issue_comment", comment) == "forgejo:7:3"
    assert forgejo.topic("Note Hook", note) is None
    # One webhook secret may serve several repos of an instance: comments are confirmed.
    assert forgejo.confirms_comments
