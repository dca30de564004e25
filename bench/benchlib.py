"""What every benchmark script prints about the machine it ran on."""

from __future__ import annotations

import os
import platform
import shutil
import sqlite3
from pathlib import Path
from typing import Any


def machine(**extra: Any) -> dict[str, Any]:
    """Cores, CPU model, Python and SQLite versions, platform, plus ``extra``."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": nproc,
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        **extra,
    }


def machine_line(**extra: Any) -> str:
    """``machine`` as the one line the benchmarks print first."""
    m = machine(**extra)
    return (
        f"machine: nproc={m['nproc']} cpu={m['cpu'] or '?'} python={m['python']} "
        f"sqlite={m['sqlite']} ({m['platform']})"
    )


def installed_brokers() -> list[str]:
    """The brokers a benchmark can start here: the embedded one always, ActiveMQ and
    RabbitMQ when their distribution packages are installed."""
    found = ["embedded"]
    if shutil.which("java") and Path("/usr/share/activemq/bin/activemq.jar").exists():
        found.append("activemq")
    if Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() and shutil.which("runuser"):
        found.append("rabbitmq")
    return found


def small_doc(i: int) -> dict[str, Any]:
    """The benchmarks' small document: five properties, about 100 bytes of JSON."""
    return {
        "name": f"item-{i}",
        "n": i,
        "price": round(i * 0.37, 2),
        "tags": ["red", "blue"] if i % 2 else ["green"],
        "active": i % 3 != 0,
    }
