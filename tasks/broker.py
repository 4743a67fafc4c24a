"""The broker URL: password, TLS, and connection errors that say what to fix.

Every process of the cluster (workers, Flower, ``dialsum metrics``, clients) reads one URL, ``DIALSUM_BROKER_URL``:

* ``redis://:PASSWORD@host:6379/0``: a Redis with ``requirepass``. A password with characters other than letters,
  digits and ``-._~`` goes into the URL percent-encoded (``urllib.parse.quote(password, safe="")``).
* ``rediss://:PASSWORD@host:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/dialsum/redis-ca.pem``: the same over
  TLS. ``ssl_ca_certs`` is the CA that signed the server's certificate (leave it out for a certificate a public CA
  signed); ``ssl_certfile`` and ``ssl_keyfile`` give this client's own certificate when the server checks clients
  (``tls-auth-clients yes``). ``ssl_cert_reqs`` is ``required`` (the default here), ``optional`` or ``none``.

kombu (the broker), Celery's Redis result backend and redis-py (run records, sweeps, the exporter) read those query
parameters themselves, but not alike: for a ``rediss://`` URL without ``ssl_cert_reqs`` kombu checks no certificate
at all, Celery's backend refuses to start, and redis-py requires one; and Flower's broker view (queue lengths) reads
no query parameter, only Celery's ``broker_use_ssl``. :func:`celery_settings` therefore derives ``broker_use_ssl`` and
``redis_backend_use_ssl`` from the URLs, certificate required unless the URL says otherwise, so that every
connection checks the server the same way.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from kombu.utils.url import maybe_sanitize_url

# The values kombu and Celery's backend both accept for ssl_cert_reqs in a URL.
_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
    "CERT_REQUIRED": ssl.CERT_REQUIRED,
    "CERT_OPTIONAL": ssl.CERT_OPTIONAL,
    "CERT_NONE": ssl.CERT_NONE,
}
_FILE_KEYS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
TLS_EXAMPLE = "rediss://:PASSWORD@HOST:PORT/0?ssl_cert_reqs=required&ssl_ca_certs=/path/to/ca.pem"


def tls_options(url: str) -> dict[str, Any] | None:
    """The TLS options of a ``rediss://`` URL in the form of Celery's ``broker_use_ssl``; None for any other URL.

    Raises:
        ValueError: An ``ssl_cert_reqs`` other than required, optional or none.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = dict(parse_qsl(parts.query))
    options: dict[str, Any] = {key: query[key] for key in _FILE_KEYS if query.get(key)}
    name = query.get("ssl_cert_reqs", "required")
    if name not in _CERT_REQS:
        raise ValueError(
            f"ssl_cert_reqs={name!r} in the broker URL (DIALSUM_BROKER_URL): use required (check the server's "
            f"certificate against ssl_ca_certs), optional or none, e.g. {TLS_EXAMPLE}"
        )
    options["ssl_cert_reqs"] = _CERT_REQS[name]
    return options


def celery_settings(broker_url: str, result_backend: str | None = None) -> dict[str, Any]:
    """The Celery settings naming the broker and result backend (``result_backend`` defaults to the broker)."""
    backend = result_backend or broker_url
    return {
        "broker_url": broker_url,
        "result_backend": backend,
        "broker_use_ssl": tls_options(broker_url),
        "redis_backend_use_ssl": tls_options(backend),
    }


def shown_url(url: str) -> str:
    """``url`` fit for a log or an error message: password masked, ``ssl_*`` query parameters (file paths) kept, the
    values of any other query parameter (redis-py would take ``?password=...``) masked."""
    query = [(key, value if key.startswith("ssl_") else "**") for key, value in parse_qsl(urlsplit(url).query)]
    return maybe_sanitize_url(url) + ("?" + "&".join(f"{key}={value}" for key, value in query) if query else "")


def check_broker(url: str, timeout: float = 5.0) -> None:
    """Raise at once when the broker refuses this client: a wrong or missing password, or an untrusted certificate.

    The run-record client (``tasks/state.py``) retries connection errors for a while to ride out a broker restart, and
    redis-py counts a refused password as a connection error, so a command would wait that long (minutes, with its
    health checks retried inside the connects) to report a password that will not become right. The CLI asks first,
    with one ping and no retries. A broker that does not answer is left to the retrying client.

    Raises:
        redis.AuthenticationError: The password is wrong, or missing.
        redis.ConnectionError: The TLS handshake failed (certificate not trusted, or not for this host).
    """
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    except redis.AuthenticationError:
        raise
    except redis.ConnectionError as error:
        if isinstance(error.__cause__ or error.__context__, ssl.SSLError):
            raise
    except redis.RedisError:
        pass
    finally:
        client.close()


def broker_error_message(error: BaseException, url: str) -> str:
    """What went wrong reaching the broker at ``url``, and what to change; never contains the password.

    Args:
        error: The redis-py or kombu connection error.
        url: The broker URL that was used.
    """
    import redis

    reason = str(error).strip().rstrip(".") or type(error).__name__
    password = urlsplit(url).password
    if password:
        # No client library puts the password in a message, but this text goes to terminals and logs.
        for form in {password, unquote(password), quote(unquote(password), safe="")}:
            reason = reason.replace(form, "**")
    shown = shown_url(url)
    fix = (
        "Set DIALSUM_BROKER_URL (or --broker) to redis://:PASSWORD@HOST:PORT/0 with the password of the server's "
        "requirepass, percent-encoded (urllib.parse.quote(password, safe='')), or to "
        f"{TLS_EXAMPLE} for TLS"
    )
    if isinstance(error, redis.AuthenticationError):
        if password is None:
            return f"the broker {shown} requires a password and DIALSUM_BROKER_URL has none ({reason}). {fix}."
        return f"the broker {shown} refused the password in DIALSUM_BROKER_URL ({reason}). {fix}."
    if isinstance(error.__cause__ or error.__context__, ssl.SSLError):
        return (
            f"the broker {shown} failed the TLS handshake ({reason}). If its certificate is signed by your own CA, "
            "name that CA's file in DIALSUM_BROKER_URL (ssl_ca_certs, present on this machine), e.g. "
            f"{TLS_EXAMPLE}; the certificate must be for the host name in the URL."
        )
    return (
        f"cannot reach the broker {shown}: {reason}. Check DIALSUM_BROKER_URL (or --broker): the host and port of a "
        f"running redis-server; with TLS a rediss:// URL whose ssl_ca_certs file exists on this machine, e.g. "
        f"{TLS_EXAMPLE}."
    )
