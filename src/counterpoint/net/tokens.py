"""Access tokens for remote agents and operators, kept hashed in the state directory.

``counterpoint token create AGENT`` prints a new token once and stores only its
SHA-256 in ``<state>/tokens.json`` (mode 0600), so the file is useless to a
reader. A token has 256 random bits, so a plain hash is enough (no slow KDF is
needed against guessing). A token is checked by comparing digests with
:func:`hmac.compare_digest` against every candidate (no lookup keyed by the secret).
Three kinds: ``agent`` (a remote agent's session), ``operator`` (the dashboard and
every operator action), ``viewer`` (the dashboard and the read-only API only).
Tokens work before a run starts and across runs; a running hub rereads the file
when it changes, so a token created or revoked while it runs takes effect at the
next connection (and ends the dashboard sessions signed in with it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from counterpoint.errors import CounterpointError

TOKENS_FILE = "tokens.json"
TOKEN_PREFIX = "cpt_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")

Kind = Literal["agent", "operator", "viewer"]
KINDS: tuple[Kind, ...] = ("agent", "operator", "viewer")


class TokenError(CounterpointError):
    """A token file that cannot be read or written, or a bad token name."""


@dataclass(frozen=True)
class TokenInfo:
    kind: Kind
    name: str
    created: float


def digest(token: str) -> str:
    """The SHA-256 of ``token`` as stored (hex)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """The tokens of one state directory."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / TOKENS_FILE
        self._cache: tuple[float, int, dict[str, dict[str, Any]]] | None = None

    def create(self, name: str, kind: Kind = "agent") -> str:
        """A new token for agent (or operator) ``name``, replacing any earlier one."""
        if not _NAME.match(name):
            raise TokenError(
                f"bad {kind} name {name!r}: use letters, digits and _ . @ - (at most 100)"
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        entries = self._read()
        entries[f"{kind}:{name}"] = {"sha256": digest(token), "created": time.time()}
        self._write(entries)
        return token

    def revoke(self, name: str, kind: Kind = "agent") -> bool:
        """Forget ``name``'s token; False if it had none."""
        entries = self._read()
        if entries.pop(f"{kind}:{name}", None) is None:
            return False
        self._write(entries)
        return True

    def list(self) -> list[TokenInfo]:
        out = []
        for key, entry in sorted(self._read().items()):
            kind, _, name = key.partition(":")
            if kind in KINDS:
                out.append(TokenInfo(kind, name, float(entry.get("created", 0.0))))
        return out

    def check(self, name: str, token: str, kind: Kind = "agent") -> bool:
        """True when ``token`` is ``name``'s current token (constant-time comparison)."""
        entry = self._current().get(f"{kind}:{name}")
        if entry is None or not token:
            return False
        return hmac.compare_digest(str(entry.get("sha256", "")), digest(token))

    def operator(self, token: str) -> str | None:
        """The operator that ``token`` belongs to, or None."""
        found = self.identify(token)
        return found[1] if found is not None and found[0] == "operator" else None

    def identify(self, token: str) -> tuple[Kind, str] | None:
        """(kind, name) of whoever ``token`` belongs to, or None. Every entry is compared
        (in constant time), so how long it takes does not depend on where it matches."""
        if not token:
            return None
        wanted = digest(token)
        found: tuple[Kind, str] | None = None
        for key, entry in self._current().items():
            kind, _, name = key.partition(":")
            same = hmac.compare_digest(str(entry.get("sha256", "")), wanted)
            if same and kind in KINDS and found is None:
                found = (kind, name)
        return found

    def holds(self, kind: Kind, name: str, token_digest: str) -> bool:
        """True while ``name``'s current ``kind`` token has ``token_digest`` (a session
        made with a token ends when the token is revoked or replaced)."""
        entry = self._current().get(f"{kind}:{name}")
        if entry is None:
            return False
        return hmac.compare_digest(str(entry.get("sha256", "")), token_digest)

    def has_any(self, kind: Kind) -> bool:
        return any(key.startswith(f"{kind}:") for key in self._current())

    # -- the file -------------------------------------------------------------------

    def _current(self) -> dict[str, dict[str, Any]]:
        """The file's entries, reread only when it changed."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise TokenError(f"cannot read {self.path}: {exc.strerror}") from None
        if self._cache is None or self._cache[:2] != (stat.st_mtime, stat.st_size):
            self._cache = (stat.st_mtime, stat.st_size, self._read())
        return self._cache[2]

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise TokenError(f"cannot read {self.path}: {exc.strerror}") from None
        except ValueError as exc:
            raise TokenError(
                f"{self.path} is not valid JSON ({exc}); remove it and create the tokens again"
            ) from None
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, dict):
            raise TokenError(
                f"{self.path} has no 'tokens' object; remove it and create the tokens again"
            )
        return {k: v for k, v in tokens.items() if isinstance(v, dict)}

    def _write(self, entries: dict[str, dict[str, Any]]) -> None:
        """Replace the file atomically, readable by its owner only."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{TOKENS_FILE}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "tokens": entries}, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise TokenError(f"cannot write {self.path}: {exc.strerror}") from None
        self._cache = None
