"""A real ``redis-server`` with a password (``requirepass``) and optionally TLS only, for the security tests.

The password goes to redis-server in a config file readable by its owner only, never on its command line. The TLS
certificates are a throwaway CA and a server certificate for 127.0.0.1, made with the ``openssl`` command.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from tests.conftest import RedisServer


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate signed by it (subject alternative names 127.0.0.1 and localhost).

    Returns:
        ``{"ca": ..., "cert": ..., "key": ...}``: PEM files in ``directory``.
    """
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed: apt-get install openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    cert, key, request = directory / "redis.crt", directory / "redis.key", directory / "redis.csr"
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(command: str, *paths: Path) -> None:
        """``openssl`` with ``command`` split on spaces, each ``{}`` replaced by the next of ``paths``."""
        words = command.split()
        for path in paths:
            words[words.index("{}")] = str(path)
        subprocess.run(["openssl", *words], check=True, capture_output=True, timeout=60)

    openssl("req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=dialsum-test-CA -keyout {} -out {}", ca_key, ca)
    openssl("req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout {} -out {}", key, request)
    openssl(
        "x509 -req -days 2 -CAcreateserial -in {} -CA {} -CAkey {} -extfile {} -out {}",
        request, ca, ca_key, extensions, cert,
    )  # fmt: skip
    return {"ca": ca, "cert": cert, "key": key}


class SecureRedisServer(RedisServer):
    """``redis-server`` on loopback with ``requirepass``, and with ``tls`` (see :func:`make_certificates`) TLS only.

    ``url`` is the broker URL every process uses: ``redis://:<password, percent-encoded>@127.0.0.1:<port>/0``, or
    ``rediss://...?ssl_cert_reqs=required&ssl_ca_certs=<ca>`` with TLS.
    """

    def __init__(self, directory: Path, password: str, tls: dict[str, Path] | None = None):
        super().__init__(directory)
        self.password = password
        self.tls = tls

    @property
    def url(self) -> str:
        return self.url_with(self.password)

    def url_with(self, password: str | None) -> str:
        """The server's URL with another password (None: none at all)."""
        userinfo = f":{quote(password, safe='')}@" if password is not None else ""
        if self.tls is None:
            return f"redis://{userinfo}127.0.0.1:{self.port}/0"
        return f"rediss://{userinfo}127.0.0.1:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={self.tls['ca']}"

    def start(self) -> SecureRedisServer:
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (.ci/run does this)")
        lines = ["bind 127.0.0.1", f'dir "{self.directory}"', 'save ""', "appendonly no"]
        lines.append('requirepass "{}"'.format(self.password.replace("\\", "\\\\").replace('"', '\\"')))
        if self.tls is None:
            lines.append(f"port {self.port}")
        else:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f'tls-cert-file "{self.tls["cert"]}"',
                f'tls-key-file "{self.tls["key"]}"',
                f'tls-ca-cert-file "{self.tls["ca"]}"',
                "tls-auth-clients no",
            ]
        config = self.directory / "redis.conf"
        config.touch(mode=0o600)
        config.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen([binary, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port} (config {config})")
