"""A fresh pexir-tryon service for the benchmarks: serve_config.yaml deployed in a subprocess with
its own local Ray (what `serve run serve_config.yaml` does), on a free loopback port.

The parent (``ServiceProcess``) spawns ``python benchmarks/service.py --child ...``; the child
starts Ray, deploys the production YAML with a few overrides (port, a temporary data directory,
a throwaway API key, the device), prints one JSON line per milestone on stdout, and waits. On
SIGTERM it shuts Serve and Ray down; if that hangs, the parent kills the process group it made.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, free_port, setup_environment  # noqa: E402

setup_environment()

CONFIG = ROOT / "serve_config.yaml"


def _emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def child_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--overrides", default="{}", help="JSON: Settings overrides for the app")
    parser.add_argument("--stage-cpus", type=float, default=None)
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--app-args", default="{}", help="JSON: overrides of the application's args (e.g. refiner_gpus)")
    args = parser.parse_args(argv)
    _emit("started")

    def stop(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    import ray
    from ray import serve

    from pexir_tryon.config import Settings
    from pexir_tryon.serve.launch import deploy, load_config

    overrides = json.loads(args.overrides)
    ray.init(
        address="local",  # always a new Ray of our own, never a cluster someone else started
        num_cpus=args.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=256 * 1024 * 1024,
        _temp_dir=str(args.work / "ray"),
        _system_config={"automatic_object_spilling_enabled": False},
    )
    _emit("ray_ready", resources={k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")})
    try:
        config = load_config(CONFIG, port=args.port, settings=Settings(**overrides))
        app = config["applications"][0]
        app["args"]["settings"] = {**app["args"].get("settings", {}), **overrides}
        if args.stage_cpus is not None:
            app["args"]["stage_cpus"] = args.stage_cpus
        app["args"].update(json.loads(args.app_args))
        deploy(config, timeout_s=600)
        status = serve.status()
        deployments = {name: str(d.status) for app_status in status.applications.values() for name, d in app_status.deployments.items()}
        _emit("deployed", deployments=deployments)
        while True:
            time.sleep(1)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            _emit("stopped")
    return 0


class ServiceProcess:
    """Start the service subprocess; `wait_ready` polls until the first 200 (the cold start)."""

    def __init__(self, *, overrides: dict | None = None, stage_cpus: float | None = None, num_cpus: int | None = None,
                 threads: int | None = None, api_key: str | None = None, app_args: dict | None = None):
        self.work = Path(tempfile.mkdtemp(prefix="pexir-bench-svc-"))
        self.port = free_port()
        self.api_key = api_key or "bench-" + secrets.token_hex(12)
        data_dir = self.work / "data"
        self.overrides = {
            "data_dir": str(data_dir),
            "api_keys": [self.api_key],
            "store": {"key_file": str(self.work / "keys" / "blob.key")},
            **(overrides or {}),
        }
        self.stage_cpus = stage_cpus
        self.app_args = app_args or {}
        self.num_cpus = num_cpus
        self.threads = threads
        self.events: dict[str, dict] = {}
        self.proc: subprocess.Popen | None = None
        self.spawned_at: float | None = None
        self.log_path = self.work / "service.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self, user: str = "bench") -> dict:
        return {"Authorization": f"Bearer {self.api_key}", "X-User-Id": user}

    def start(self) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--port", str(self.port), "--work", str(self.work),
               "--overrides", json.dumps(self.overrides)]
        if self.stage_cpus is not None:
            cmd += ["--stage-cpus", str(self.stage_cpus)]
        if self.num_cpus is not None:
            cmd += ["--num-cpus", str(self.num_cpus)]
        if self.app_args:
            cmd += ["--app-args", json.dumps(self.app_args)]
        env = dict(os.environ)
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)  # Ray's workers inherit it (Ray does not override a set value)
        self._log = open(self.log_path, "wb")
        self.spawned_at = time.time()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=str(ROOT), process_group=0)
        threading.Thread(target=self._read_events, daemon=True).start()

    def _read_events(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events[event.pop("event")] = event

    def since_spawn(self, event: str) -> float | None:
        value = self.events.get(event, {}).get("t")
        return None if value is None or self.spawned_at is None else round(value - self.spawned_at, 4)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, person_png: bytes, garment_png: bytes, *, timeout_s: float = 300.0, poll_s: float = 0.25) -> dict:
        """Poll POST /v1/tryon from spawn until the first 200. Returns the cold-start record."""
        import httpx

        first_response = None
        attempts = 0
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=httpx.Timeout(180.0, connect=2.0)) as client:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"service exited with {self.proc.returncode} before answering:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no 200 from the service after {timeout_s:g} s:\n{self.log_tail()}")
                attempts += 1
                sent = time.time()
                try:
                    response = client.post(f"{self.url}/v1/tryon", headers=self.headers("cold-start"),
                                           files={"person": ("person.png", person_png, "image/png"), "garment": ("garment.png", garment_png, "image/png")})
                except httpx.TransportError:
                    time.sleep(poll_s)
                    continue
                answered = time.time()
                if first_response is None:
                    first_response = {"seconds": round(answered - self.spawned_at, 4), "status": response.status_code}
                if response.status_code == 200:
                    return {
                        "first_200_s": round(answered - self.spawned_at, 4),
                        "first_200_request_s": round(answered - sent, 4),
                        "first_http_response": first_response,
                        "python_started_s": self.since_spawn("started"),
                        "ray_ready_s": self.since_spawn("ray_ready"),
                        "deployed_s": self.since_spawn("deployed"),
                        "attempts": attempts,
                        "deployments": self.events.get("deployed", {}).get("deployments"),
                        "ray_resources": self.events.get("ray_ready", {}).get("resources"),
                    }
                time.sleep(poll_s)

    def stop(self, timeout_s: float = 90.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # the group this object started
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> "ServiceProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    if "--child" in sys.argv:
        sys.exit(child_main(sys.argv[1:]))
    print(__doc__)
