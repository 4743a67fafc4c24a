"""``dialsum flower``: Flower on the cluster's broker, in the foreground, never open by accident.

Flower runs as ``python -m celery -A tasks.app flower --address=... --port=...`` (so it reads the broker from
``DIALSUM_BROKER_URL`` like every other process). Authentication, in order:

1. ``--no-auth-on-loopback`` with a loopback ``--address`` (127.0.0.0/8, ::1): no authentication; Flower 2.2 answers
   ``/api/*`` without credentials only when ``FLOWER_UNAUTHENTICATED_API=true``, so that is set. The flag wins over a
   ``FLOWER_BASIC_AUTH`` in the environment, which is dropped for the child.
2. ``FLOWER_BASIC_AUTH=user:password`` in the environment: Flower reads it itself (every ``FLOWER_<OPTION>`` variable
   sets that option; several credentials are comma-separated).
3. Otherwise a generated password for user ``dialsum``, printed once and handed to the child in its environment:
   never on its command line, where ``ps`` would show it to every user of the machine.

``/healthcheck`` and ``/metrics`` answer without credentials in any case.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
from collections.abc import Mapping

from tasks.worker import Supervisor

USER = "dialsum"


def flower_command(
    address: str, port: int, no_auth_on_loopback: bool, environ: Mapping[str, str]
) -> tuple[list[str], dict[str, str], str | None]:
    """The Flower command, its environment and the credentials line to print; starts nothing.

    Args:
        address: Address to listen on.
        port: TCP port, 1-65535.
        no_auth_on_loopback: Serve without authentication (only allowed on a loopback address).
        environ: The environment the child inherits (usually ``os.environ``).

    Returns:
        ``(argv, env, credentials)``: ``credentials`` is the line announcing a generated password, or ``None`` when
        none was generated.

    Raises:
        ValueError: A port out of range, or ``--no-auth-on-loopback`` with an address that is not loopback.
    """
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    argv = [sys.executable, "-m", "celery", "-A", "tasks.app", "flower", f"--address={address}", f"--port={port}"]
    env = {**environ, "PYTHONUNBUFFERED": "1"}
    if no_auth_on_loopback:
        if not is_loopback(address):
            raise ValueError(
                f"--no-auth-on-loopback needs a loopback --address (127.0.0.1 or ::1), got --address {address!r}: "
                "drop --no-auth-on-loopback to serve it with a password"
            )
        env.pop("FLOWER_BASIC_AUTH", None)
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
        return argv, env, None
    # With credentials configured the API needs them anyway; an inherited "true" here would only mislead.
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    if env.get("FLOWER_BASIC_AUTH"):
        return argv, env, None
    password = secrets.token_urlsafe(18)  # URL-safe alphabet: no ',' (Flower splits credentials on it) nor ':'
    env["FLOWER_BASIC_AUTH"] = f"{USER}:{password}"
    return argv, env, f"Flower: {url(address, port)}  user: {USER}  password: {password}"


def is_loopback(address: str) -> bool:
    """Whether ``address`` is an IP literal in 127.0.0.0/8 or ``::1`` (a host name could resolve elsewhere)."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def url(address: str, port: int) -> str:
    """The dashboard URL (IPv6 literals in brackets)."""
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


def main(args) -> int:
    """``dialsum flower`` with parsed arguments (see tasks/cli.py): runs Flower until it exits or is signalled."""
    argv, env, credentials = flower_command(args.address, args.port, args.no_auth_on_loopback, os.environ)
    if credentials:
        print(credentials, flush=True)
    children = Supervisor("dialsum flower")
    with children.forwarding_signals():
        children.start("flower", argv, env)
        children.wait()
    return 1 if children.failed else 0
