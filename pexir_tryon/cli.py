"""`pexir-tryon run | serve | bench | rerender | purge | models`.

Rejected inputs exit non-zero with one line `error[<code>]: <message>` on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import TryOnError

EXIT_REJECTED = 2
EXIT_FAILED = 1


def check_device(device: str) -> None:
    """Refuse a device that is not 'auto', 'cpu', 'cuda' or 'cuda:N', or a GPU this machine lacks,
    before any model is loaded (torch would fail later with a traceback)."""
    if device in ("auto", "cpu"):
        return
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise TryOnError("invalid_request", f"{device!r} is not a valid device; use auto, cpu, cuda or cuda:N.")
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise TryOnError("invalid_request", f"The device {device!r} is not available: no CUDA GPU is visible; use --device cpu (or auto).")
    index = int(device[5:]) if device.startswith("cuda:") else 0
    if index >= count:
        raise TryOnError("invalid_request", f"The device {device!r} is not available: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}.")


def cmd_run(args) -> int:
    from .config import get_settings
    from .backends.base import check_job_options
    from .images import encode_jpeg, encode_png, read_image
    from .pipeline import TryOnPipeline

    settings = get_settings()
    check_job_options(category=args.category, seed=args.seed, steps=args.steps, max_steps=settings.refiner.max_steps)
    check_device(args.device or settings.device)
    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise TryOnError("invalid_request", f"The output file must end in .png, .jpg or .jpeg, not {out.suffix or 'nothing'!r}.")
    person = read_image(args.person, settings.images, what="person", keep_alpha=False)
    garment = read_image(args.garment, settings.images, what="garment", keep_alpha=True)
    started = time.perf_counter()
    pipeline = TryOnPipeline.from_settings(settings, device=args.device)
    loaded = time.perf_counter()
    result = pipeline(person, garment, category=args.category, seed=args.seed, steps=args.steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = encode_jpeg(result.image) if out.suffix.lower() in (".jpg", ".jpeg") else encode_png(result.image)
    out.write_bytes(data)
    stages = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result.timings_s.items())
    print(
        f"wrote {out} ({result.image.shape[1]}x{result.image.shape[0]}, category {result.category}, "
        f"{'refined' if result.refined else 'not refined: no refiner configured'}; load {loaded - started:.1f} s; {stages})",
        file=sys.stderr,
    )
    return 0


def cmd_samples(args) -> int:
    from PIL import Image

    from .samples import GARMENT_SAMPLES, PERSON_SAMPLES, load_sample

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise TryOnError("invalid_request", f"--out {str(out)!r} is a file, not a folder; name a folder to write the samples into.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a parent that is a file, or no permission
        raise TryOnError("invalid_request", f"Cannot create the folder {str(out)!r} ({exc.strerror or type(exc).__name__}).") from None
    for name in (*PERSON_SAMPLES, *GARMENT_SAMPLES):
        Image.fromarray(load_sample(f"sample:{name}")).save(out / f"{name}.png")
    print(f"wrote {len(PERSON_SAMPLES)} person photos and {len(GARMENT_SAMPLES)} garments to {out}/", file=sys.stderr)
    return 0


def check_port_range(port: int) -> None:
    if not 1 <= port <= 65535:
        raise TryOnError("invalid_request", f"The port {port} is out of range; use --port with a number from 1 to 65535.")


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on, before Ray starts (Ray Serve would fail much
    later with a traceback). Best effort: another program may still take it in between."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        raise TryOnError("invalid_request", f"The host {host!r} cannot be resolved; use --host with an address of this machine.") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP proxy does: TIME_WAIT is not "in use"
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise TryOnError("invalid_request", f"The port {port} on {host} is already in use; pick another with --port.") from None
            raise TryOnError("invalid_request", f"Cannot listen on {host}:{port} ({exc.strerror}); pick another --host or --port.") from None


def cmd_serve(args) -> int:
    from .config import get_settings
    from .serve.launch import load_config, serve_forever

    settings = get_settings()
    if args.port is not None:  # checked first: load_config reads 0 as "unset"
        check_port_range(args.port)
    http = load_config(args.config, host=args.host, port=args.port, settings=settings)["http_options"]
    check_port_range(int(http["port"]))  # the Serve config's own port may be out of range too
    if not settings.serve.ray_address:  # joining a cluster: the proxy binds on its head node, not here
        check_port_free(http["host"], int(http["port"]))
    return serve_forever(config_path=args.config, host=args.host, port=args.port)


def check_user_id(user_id: str) -> None:
    """The rule the HTTP API applies to X-User-Id: an id it could never have stored is a typo."""
    from .serve.auth import USER_ID_PATTERN

    if not USER_ID_PATTERN.fullmatch(user_id):  # fullmatch: its '$' would let a trailing newline through
        raise TryOnError("invalid_request", "--user must be 1-128 characters of letters, digits and . _ @ : - (as X-User-Id in the HTTP API).")


def cmd_purge(args) -> int:
    import json

    from .config import get_settings
    from .store import purge_user_command

    check_user_id(args.user)
    report = purge_user_command(get_settings(), args.user)
    # The fields of DELETE /v1/users/{id}, less those only a running server has (cancelled requests, provider items).
    print(json.dumps({"user_id": args.user, **report.to_json()}))
    return 0


def cmd_models(args) -> int:
    from .refine.manifest import fetch_model

    fetch_model(args.name, Path(args.dest))
    return 0


def cmd_rerender(args) -> int:
    from .batch.rerender import rerender_command

    return rerender_command(args)


def cmd_bench(args) -> int:
    """Run benchmarks/run_all.py (the suite lives in the repository, not in the wheel) with this interpreter."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    candidates = [repo / "benchmarks" / "run_all.py", Path.cwd() / "benchmarks" / "run_all.py"]
    script = next((path for path in candidates if path.is_file()), None)
    if script is None:
        print(
            "pexir-tryon bench: the benchmark programs are not installed with the package; run "
            "`pexir-tryon bench` from a checkout of the pexir-tryon repository (pip install -e .), "
            "or `python benchmarks/run_all.py` there.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    out = Path(args.out)
    if not out.is_absolute():  # the default "benchmarks/results" means the repository's folder, wherever we run from
        out = (script.parents[1] / out) if args.out == "benchmarks/results" else (Path.cwd() / out)
    argv = [sys.executable, str(script), "--out", str(out)]
    if args.quick:
        argv.append("--quick")
    if args.only:
        argv += ["--only", args.only]
    if args.device:
        argv += ["--device", args.device]
    try:  # main() may have pointed fd 2 at /dev/null for MediaPipe; give the suite the real stderr (progress bars)
        stderr = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        stderr = None
    try:
        return subprocess.call(argv, cwd=str(script.parents[1]), stderr=stderr)
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pexir-tryon", description="Image virtual try-on: a person photo and a garment photo in, the person wearing the garment out.")
    parser.add_argument("--native-logs", action="store_true", help="let MediaPipe/TFLite print their C++ logs to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="try a garment on a person photo, in-process")
    run.add_argument("person", help="person photo path, or sample:astronaut | sample:grace_hopper | sample:camera")
    run.add_argument("garment", help="garment photo path (flat lay or cut-out PNG), or sample:tshirt | sample:longsleeve | sample:dress | sample:trousers | ...")
    run.add_argument("-o", "--output", required=True, help="output image (.png or .jpg)")
    run.add_argument("--category", default="auto", help="upper | lower | dress | auto (default: auto)")
    run.add_argument("--seed", type=int, default=0, help="seed for the refiner (default 0)")
    run.add_argument("--steps", type=int, default=None, help="refiner steps (default from config)")
    run.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default from config)")
    run.set_defaults(func=cmd_run)

    samples = sub.add_parser("samples", help="write the bundled sample photos and drawn garments as PNG files")
    samples.add_argument("--out", default="samples", help="directory to write them to (default: samples)")
    samples.set_defaults(func=cmd_samples)

    serve = sub.add_parser("serve", help="serve the HTTP API with Ray Serve")
    serve.add_argument("--config", default=None, help="Serve config YAML (default: the packaged serve_config.yaml)")
    serve.add_argument("--host", default=None, help="bind address (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default from config: 8000)")
    serve.set_defaults(func=cmd_serve)

    purge = sub.add_parser("purge", help="delete every image and record of one user")
    purge.add_argument("--user", required=True, help="the user id")
    purge.set_defaults(func=cmd_purge)

    models = sub.add_parser("models", help="manage refiner weights")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    fetch = models_sub.add_parser("fetch", help="download a refiner listed in models/ and verify its checksums")
    fetch.add_argument("name")
    fetch.add_argument("--dest", default="models/weights", help="directory to place the model in")
    fetch.set_defaults(func=cmd_models)

    rerender = sub.add_parser("rerender", help="batch re-render a manifest of person x garment rows on Ray Data")
    rerender.add_argument("manifest", help="CSV, JSONL or Parquet with id, person, garment, category, seed")
    rerender.add_argument("--out", required=True, help="output directory or fsspec URL")
    rerender.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    rerender.add_argument("--backend", default="local", choices=["local", "alibaba"])
    rerender.add_argument("--concurrency", type=int, default=None, help="actors in the pool (default: one per 2 CPUs or per GPU)")
    rerender.add_argument("--batch-size", type=int, default=4, help="rows per actor call (default 4)")
    rerender.set_defaults(func=cmd_rerender)

    bench = sub.add_parser("bench", help="run the benchmark suite (see benchmarks/)")
    bench.add_argument("--quick", action="store_true", help="a short run (under two minutes on a laptop)")
    bench.add_argument("--only", default=None, help="comma-separated: stages,serving,load,refiner,cold_start,batch")
    bench.add_argument("--out", default="benchmarks/results", help="where to write JSON, plots and the summary")
    bench.add_argument("--device", default=None)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logs
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    from .logs import configure_logging, silence_native_stderr

    if not args.native_logs:
        silence_native_stderr()
    from .config import get_settings

    try:
        # The one-shot commands print their own plain result line; their JSON logs show only warnings
        # unless a level is asked for. The server logs at the configured level.
        quiet = args.command in ("run", "samples", "purge", "models") and "PEXIR_LOG_LEVEL" not in os.environ
        configure_logging("WARNING" if quiet else get_settings().log_level)
        return args.func(args)
    except TryOnError as error:
        print(error.cli_line(), file=sys.stderr)
        return EXIT_REJECTED
    except Exception as exc:  # noqa: BLE001 - settings errors etc.: one clear line, no traceback of data
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            print(f"error[invalid_request]: invalid settings: {exc.errors()[0].get('loc')} {exc.errors()[0].get('msg')}", file=sys.stderr)
            return EXIT_REJECTED
        raise


if __name__ == "__main__":
    sys.exit(main())
