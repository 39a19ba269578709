"""Config values for a real in-process test server: loopback, ephemeral ports, CPU, one thread.

Every area that starts the real server (service, clients, training's eval) builds on these, so a
new required setting is added once.
"""

from __future__ import annotations

from pathlib import Path


def loopback_values(repo: Path, **overrides) -> dict:
    """Dotted config keys for a server on 127.0.0.1 with OS-chosen ports, serving `repo` on CPU.

    `overrides` are more dotted keys; since "." cannot appear in a keyword, write it as "__"
    (batching__max_queue_delay_ms=60).
    """
    values = {
        "models": str(repo),
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "http_port": 0,  # the KServe HTTP endpoint is off unless a test turns it on (-1)
        "max_workers": 16,
        "engine.providers": ["cpu"],
        "engine.intra_op_threads": 1,
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return values
