"""The dashboard branch: its public names, one import away.

Each room holds one concern; README's architecture section has the map."""

from __future__ import annotations

from .app import (
    DEFAULT_RANGE,
    ECHO_LIMIT,
    RANGES,
    STATIC_DIR,
    VARIANT_CHOICES,
    DashboardStats,
    create_app,
)
from .collector import (
    Collector,
    DnsStatus,
    PodChange,
    TargetStatus,
    infer_variant,
)
from .discovery import (
    Discovery,
    Resolve,
    resolve_addresses,
)
from .hub import (
    CLIENT_BUFFER,
    KEEPALIVE,
    Hub,
)
from .promparse import (
    Exposition,
    histogram_quantile,
    increases,
    parse,
)
from .readings import (
    LimiterState,
    Reading,
    build_snapshot,
    limiter_state,
    read,
)
from .scrape import (
    MAX_EXPOSITION_BYTES,
    ScrapeLoop,
    fetch_metrics,
)
from .server import (
    CLIENT_WRITE_TIMEOUT,
    GRACEFUL_TIMEOUT,
    RunningDashboard,
    serve_app,
    serve_dashboard,
)
from .snapshot import (
    Snapshot,
    average,
)
from .store import (
    LONG_RANGE,
    AsyncStore,
    Maintenance,
    Store,
    run_maintenance,
)
from .targets import (
    DnsTarget,
    parse_dns_target,
)

__all__ = [
    "CLIENT_BUFFER",
    "CLIENT_WRITE_TIMEOUT",
    "DEFAULT_RANGE",
    "ECHO_LIMIT",
    "GRACEFUL_TIMEOUT",
    "KEEPALIVE",
    "LONG_RANGE",
    "MAX_EXPOSITION_BYTES",
    "RANGES",
    "STATIC_DIR",
    "VARIANT_CHOICES",
    "AsyncStore",
    "Collector",
    "DashboardStats",
    "Discovery",
    "DnsStatus",
    "DnsTarget",
    "Exposition",
    "Hub",
    "LimiterState",
    "Maintenance",
    "PodChange",
    "Reading",
    "Resolve",
    "RunningDashboard",
    "ScrapeLoop",
    "Snapshot",
    "Store",
    "TargetStatus",
    "average",
    "build_snapshot",
    "create_app",
    "fetch_metrics",
    "histogram_quantile",
    "increases",
    "infer_variant",
    "limiter_state",
    "parse",
    "parse_dns_target",
    "read",
    "resolve_addresses",
    "run_maintenance",
    "serve_app",
    "serve_dashboard",
]
