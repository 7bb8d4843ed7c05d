"""Git over HTTP for remote agents with ``workspace: worktree`` (git's smart protocol).

``GET/POST /git/AGENT/...`` runs ``git http-backend`` on the agent's own exchange
repository (see :meth:`counterpoint.agents.worktree.WorktreeManager.exchange`): the
agent fetches its task branches from it and pushes its work back. Only the agent's own
token opens it (``Authorization: Bearer TOKEN``, which ``counterpoint agent`` hands to
git as an extra header), so an agent can neither read nor write another's branches, and
nothing an agent pushes reaches the plan's repository until the run engine fetches the
branch of an attempt it gave that agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from counterpoint.net.tokens import TokenStore

log = logging.getLogger("counterpoint.server")

#: The largest push accepted (a pack of objects), in bytes.
MAX_PUSH_BYTES = 1 << 30
_SERVICES = ("git-upload-pack", "git-receive-pack")

#: ``exchange_of(agent)``: the agent's exchange repository, or None when it has none.
ExchangeOf = Callable[[str], Path | None]


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class GitEndpoint:
    """The ``/git/{agent}/{rest}`` route's handler."""

    def __init__(self, tokens: TokenStore, exchange_of: ExchangeOf | None) -> None:
        self.tokens = tokens
        self.exchange_of = exchange_of

    async def handle(self, request: Request) -> Response:
        agent = request.path_params["agent"]
        rest = request.path_params["rest"]
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.tokens.check(agent, token.strip()):
            return JSONResponse(
                {"error": f"agent {agent!r}'s own token is required (Authorization: Bearer)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        repo = self.exchange_of(agent) if self.exchange_of is not None else None
        if repo is None or not repo.is_dir():
            return _error(f"agent {agent!r} has no task branches to fetch here", 404)
        service = request.query_params.get("service") or rest.rsplit("/", 1)[-1]
        if rest not in ("info/refs", *_SERVICES) or service not in _SERVICES:
            return _error(f"no git endpoint {rest!r} (smart HTTP only)", 404)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_PUSH_BYTES:
            return _error(f"a push is limited to {MAX_PUSH_BYTES} bytes", 413)
        return await _backend(request, repo, agent, rest)


async def _backend(request: Request, repo: Path, agent: str, rest: str) -> Response:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(repo),
        "GIT_PROJECT_ROOT": str(repo.parent),
        "GIT_HTTP_EXPORT_ALL": "1",
        "GIT_CONFIG_NOSYSTEM": "1",
        "PATH_INFO": f"/{repo.name}/{rest}",
        "REQUEST_METHOD": request.method,
        "QUERY_STRING": request.url.query,
        "CONTENT_TYPE": request.headers.get("content-type", ""),
        "REMOTE_USER": agent,
        "REMOTE_ADDR": request.client.host if request.client else "",
    }
    if "content-encoding" in request.headers:
        env["HTTP_CONTENT_ENCODING"] = request.headers["content-encoding"]
    if "git-protocol" in request.headers:
        env["GIT_PROTOCOL"] = request.headers["git-protocol"]
    # The whole body first, into a file: reading it while the answer streams would race
    # the server's own wait for a disconnect, which takes the request's messages too.
    with tempfile.TemporaryFile() as spool:  # the child keeps its own descriptor
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > MAX_PUSH_BYTES:
                return _error(f"a push is limited to {MAX_PUSH_BYTES} bytes", 413)
            spool.write(chunk)
        spool.seek(0)
        proc = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            stdin=spool,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        status, headers = await _cgi_headers(proc.stdout)
    except (asyncio.IncompleteReadError, ValueError) as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        said = (await proc.stderr.read()).decode(errors="replace").strip()
        await proc.wait()
        log.warning("git http-backend failed for %s: %s %s", agent, exc, said)
        return _error(f"git could not answer: {said or exc}", 500)

    async def body() -> AsyncIterator[bytes]:
        assert proc.stdout is not None and proc.stderr is not None
        complete = False
        try:
            while chunk := await proc.stdout.read(65536):
                yield chunk
            complete = True
        finally:
            if not complete and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()  # the client went away mid-answer
            said = (await proc.stderr.read()).decode(errors="replace").strip()
            code = await proc.wait()
            if code not in (0, -9):
                log.warning("git http-backend for %s exited %d: %s", agent, code, said)

    return StreamingResponse(body(), status_code=status, headers=headers)


async def _cgi_headers(stdout: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The CGI response's status and headers (up to the blank line)."""
    status = 200
    headers: dict[str, str] = {}
    while True:
        line = (await stdout.readuntil(b"\n")).decode("latin-1").rstrip("\r\n")
        if not line:
            return status, headers
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"not a CGI header: {line!r}")
        if name.lower() == "status":
            status = int(value.strip().split()[0])
        else:
            headers[name.strip()] = value.strip()
