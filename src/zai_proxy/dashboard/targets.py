"""Scrape target syntax: a plain URL, or a DNS name that stands for many pods.

Pure, no I/O.  `dns+http://zai-proxy-production-headless:8080/metrics` (or `dns+https`)
names every address the name resolves to (A and AAAA records, the way Prometheus'
`dns_sd_configs` reads a headless Service): each address is scraped on its own, as
`http://<address>:8080/metrics`.  Without a port the scheme's default is used; userinfo,
path and query are kept.  Any other target is a plain URL, scraped as it is.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["DNS_SCHEMES", "DnsTarget", "parse_dns_target"]

DNS_SCHEMES = ("dns+http", "dns+https")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class DnsTarget:
    """A `dns+` target: the name to resolve and how to make each address's URL."""

    url: str  # as configured
    name: str
    scheme: str  # http or https
    port: int
    userinfo: str  # "user:pass@" or ""
    rest: str  # path and query

    def pod_url(self, address: str) -> str:
        """The URL of the pod at `address` (an IPv4 or IPv6 address)."""
        host = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{self.userinfo}{host}:{self.port}{self.rest}"


def parse_dns_target(url: str) -> DnsTarget | None:
    """The `dns+` target `url` names, or None for a plain URL.

    Raises ValueError for a `dns+` URL without a name, with a bad port, or naming an IP
    address (nothing to resolve)."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in DNS_SCHEMES:
        return None
    name = parts.hostname
    if not name:
        raise ValueError("no DNS name")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise ValueError("an IP address, not a DNS name")
    scheme = parts.scheme.lower().removeprefix("dns+")
    port = parts.port or _DEFAULT_PORTS[scheme]  # .port raises ValueError on a bad one
    netloc = parts.netloc
    userinfo = netloc.rpartition("@")[0] + "@" if "@" in netloc else ""
    rest = parts.path + (f"?{parts.query}" if parts.query else "")
    return DnsTarget(
        url=url.strip(), name=name, scheme=scheme, port=port, userinfo=userinfo, rest=rest
    )
