"""Access tokens: hashed at rest, one per agent or operator, reread when the file changes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from counterpoint.net.tokens import TOKEN_PREFIX, TOKENS_FILE, TokenError, TokenStore


def test_a_token_checks_for_its_agent_only(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    token = store.create("builder")
    other = store.create("tester")
    assert token.startswith(TOKEN_PREFIX)
    assert len(token) > len(TOKEN_PREFIX) + 40  # 256 random bits
    assert store.check("builder", token)
    assert not store.check("tester", token)
    assert not store.check("nobody", token)
    assert not store.check("builder", other)
    assert not store.check("builder", "")
    assert not store.check("builder", token + "x")
    assert not store.check("builder", token, kind="operator")
    assert [(i.kind, i.name) for i in store.list()] == [
        ("agent", "builder"),
        ("agent", "tester"),
    ]


def test_the_file_holds_only_hashes_readable_by_its_owner(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "state")
    tokens = [store.create("builder"), store.create("ops", kind="operator")]
    path = tmp_path / "state" / TOKENS_FILE
    text = path.read_text(encoding="utf-8")
    for token in tokens:
        assert token not in text
        assert token[len(TOKEN_PREFIX) :] not in text
    entries = json.loads(text)["tokens"]
    assert set(entries) == {"agent:builder", "operator:ops"}
    assert all(len(e["sha256"]) == 64 for e in entries.values())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [TOKENS_FILE]  # no temporary file left


def test_a_revoked_token_no_longer_checks(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    token = store.create("builder")
    keep = store.create("tester")
    assert store.revoke("builder") is True
    assert not store.check("builder", token)
    assert store.check("tester", keep)
    assert store.revoke("builder") is False
    assert store.revoke("ghost") is False
    assert [i.name for i in store.list()] == ["tester"]


def test_a_recreated_token_invalidates_the_old_one(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    old = store.create("builder")
    new = store.create("builder")
    assert old != new
    assert store.check("builder", new)
    assert not store.check("builder", old)
    assert len(store.list()) == 1


def test_operator_tokens_name_their_operator_and_are_not_agent_tokens(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    assert not store.has_any("operator")
    ops = store.create("alice@example.com", kind="operator")
    agent = store.create("alice@example.com")
    assert store.has_any("operator") and store.has_any("agent")
    assert store.operator(ops) == "alice@example.com"
    assert store.operator(agent) is None  # an agent's token is no operator's
    assert store.operator("") is None
    assert store.operator("cpt_nonsense") is None
    assert not store.check("alice@example.com", ops)  # nor an operator's an agent's
    assert store.check("alice@example.com", ops, kind="operator")
    store.revoke("alice@example.com", kind="operator")
    assert store.operator(ops) is None
    assert store.check("alice@example.com", agent)


@pytest.mark.parametrize("name", ["", "-lead", ".hidden", "a b", "a/b", "é", "x" * 101, "a:b"])
def test_bad_names_are_refused_naming_the_rule(tmp_path: Path, name: str) -> None:
    store = TokenStore(tmp_path)
    with pytest.raises(TokenError) as info:
        store.create(name)
    message = str(info.value)
    assert repr(name) in message
    assert "letters, digits and _ . @ -" in message
    assert "at most 100" in message
    assert not (tmp_path / TOKENS_FILE).exists()


def test_a_good_name_may_use_every_allowed_character(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    name = "A9_b.c@d-e" + "x" * 90
    assert len(name) == 100
    assert store.check(name, store.create(name))


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "has no 'tokens' object"),
        ('{"version": 1, "tokens": []}', "has no 'tokens' object"),
    ],
)
def test_a_corrupt_file_gives_an_error_naming_it(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / TOKENS_FILE
    path.write_text(content, encoding="utf-8")
    store = TokenStore(tmp_path)
    for attempt in (
        lambda: store.check("builder", "cpt_x"),
        lambda: store.create("builder"),
        store.list,
        lambda: store.operator("cpt_x"),
    ):
        with pytest.raises(TokenError) as info:
            attempt()
        assert str(path) in str(info.value)
        assert says in str(info.value)
    assert path.read_text(encoding="utf-8") == content  # not overwritten


def test_another_store_sees_tokens_created_after_it_cached_the_file(tmp_path: Path) -> None:
    writer, reader = TokenStore(tmp_path), TokenStore(tmp_path)
    assert not reader.check("builder", "cpt_x")  # no file yet
    first = writer.create("builder")
    assert reader.check("builder", first)  # the reader caches the file now
    second = writer.create("tester")
    assert reader.check("tester", second)
    assert reader.check("builder", first)
    replaced = writer.create("builder")
    assert reader.check("builder", replaced)
    assert not reader.check("builder", first)
    writer.revoke("tester")
    assert not reader.check("tester", second)
    ops = writer.create("root", kind="operator")
    assert reader.operator(ops) == "root"
