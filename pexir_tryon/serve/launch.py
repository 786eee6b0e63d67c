"""`pexir-tryon serve`: start (or join) Ray, deploy serve_config.yaml, print how to call it, wait."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import yaml

from ..config import Settings, get_settings
from ..errors import TryOnError
from .auth import is_loopback

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"


def load_config(path: str | Path | None, *, host: str | None = None, port: int | None = None, settings: Settings | None = None) -> dict:
    """The Serve config dict from YAML, with the host/port overrides and the key check applied."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise TryOnError("invalid_request", f"Serve config {str(path)!r} does not exist.")
    config = yaml.safe_load(path.read_text()) or {}
    settings = settings or get_settings()
    http = config.setdefault("http_options", {})
    http["host"] = host or http.get("host") or settings.serve.host
    http["port"] = port or http.get("port") or settings.serve.port
    if not is_loopback(http["host"]) and not settings.api_keys:
        raise TryOnError(
            "unauthorized",
            f"Refusing to listen on {http['host']} without API keys; set PEXIR_API_KEYS or bind 127.0.0.1.",
        )
    return config


def init_ray(settings: Settings) -> None:
    """Join settings.serve.ray_address, or start a local Ray with object spilling off."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", settings.serve.ray_auth_mode)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    if settings.serve.ray_address:
        ray.init(address=settings.serve.ray_address, log_to_driver=True)
    else:
        ray.init(
            include_dashboard=False,
            log_to_driver=True,
            _system_config={"automatic_object_spilling_enabled": settings.serve.object_spilling},
        )


def deploy(config: dict, *, timeout_s: float = 300.0) -> None:
    """Deploy a Serve config dict (what `serve run/deploy` does with the YAML) and wait until it runs."""
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=False)
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = serve.status().applications
        states = {name: str(app.status) for name, app in statuses.items()}
        if states and all(s.endswith("RUNNING") for s in states.values()):
            return
        failed = [name for name, app in statuses.items() if str(app.status).endswith("DEPLOY_FAILED")]
        if failed:
            message = statuses[failed[0]].message
            raise TryOnError("stage_unavailable", f"Serve application {failed[0]} failed to deploy: {message[-1500:]}")
        if time.monotonic() > deadline:
            stuck = [
                f"{app_name}/{name}: {str(d.status).rsplit('.', 1)[-1]} {d.message[:300]}".strip()
                for app_name, app in statuses.items()
                for name, d in app.deployments.items()
                if not str(d.status).endswith("HEALTHY")
            ]
            raise TryOnError(
                "stage_unavailable",
                f"Serve could not start within {timeout_s:g} s; " + ("; ".join(stuck) or str(states))
                + " (lower ray_actor_options num_cpus/num_gpus in the Serve config, or add nodes)",
            )
        time.sleep(0.5)


def serve_forever(config_path: str | None = None, host: str | None = None, port: int | None = None) -> int:
    settings = get_settings()
    config = load_config(config_path, host=host, port=port, settings=settings)
    init_ray(settings)
    import ray

    started = time.perf_counter()
    if ray.cluster_resources().get("GPU", 0) == 0:
        print("no GPU found: every stage runs on the CPU", file=sys.stderr)
    deploy(config)
    http = config["http_options"]
    base = f"http://{http['host']}:{http['port']}"
    auth = "" if not settings.api_keys else " -H 'Authorization: Bearer $KEY' -H 'X-User-Id: alice'"
    print(f"pexir-tryon is serving at {base} (ready in {time.perf_counter() - started:.1f} s); API docs at {base}/docs", file=sys.stderr)
    if not settings.api_keys:
        print("no API keys configured: serving loopback clients only, without a key", file=sys.stderr)
    print(f"try it:  curl -sf{auth} -F person=@person.jpg -F garment=@garment.png {base}/v1/tryon -o tryon.png", file=sys.stderr)
    import signal

    def stop(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # `kill PID` stops it as cleanly as Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        print("stopping: shutting down Serve and Ray", file=sys.stderr)
        serve.shutdown()
        ray.shutdown()
    return 0
