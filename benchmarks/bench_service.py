"""The service on this machine: serving overhead, a load sweep, and cold start.

    python benchmarks/bench_service.py --quick                       # all three parts, short
    python benchmarks/bench_service.py --parts load --levels 1 2 4 8 16 32 --window 30
    python benchmarks/bench_service.py --device cuda --refiner       # GPU node, full-size refiner in the graph

One fresh service (serve_config.yaml in a subprocess with its own Ray, see service.py) is started
per cold-start sample; the first one also serves the other two parts.

- cold_start: seconds from spawning the process to the first 200 from POST /v1/tryon (Ray start,
  deploy, first request), with the milestones in between.
- serving: the same requests in-process (decode, ``TryOnPipeline``, encode PNG: what the ingress does
  around the stages) and over HTTP through Ray Serve, interleaved in one run (the order flips every
  pair); the overhead is the HTTP/in-process ratio. Server-Timing splits the HTTP time into stages.
- load: a closed-loop concurrency sweep (loadgen.py, asyncio + httpx) against that service, each
  level bounded in time: throughput, p50/p95/p99 of the 200s, error and 503 rates.

Writes ``serving_<device>.json``, ``load_<device>.json``, ``cold_start_<device>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    check_device,
    PAIRS,
    RESULTS,
    SIZES,
    bench_inputs,
    describe,
    device_label,
    machine,
    paired_ratio,
    progress,
    quiet_native_stderr,
    report,
    setup_environment,
    write_json,
)

setup_environment()

PARTS = ("serving", "load", "cold_start")


def _server_timing(header: str | None) -> dict[str, float]:
    out = {}
    for item in (header or "").split(","):
        name, _, rest = item.strip().partition(";dur=")
        if name and rest:
            try:
                out[name] = float(rest) / 1000.0
            except ValueError:
                pass
    return out


def measure_serving(service, pipeline, requests: list[dict], *, runs: int, settings, show_progress: bool = True) -> list[dict]:
    """Interleaved pairs: the same request in-process and over HTTP, order flipped every pair."""
    import httpx

    from pexir_tryon.images import decode_image, encode_png

    def in_process(req: dict) -> tuple[float, dict]:
        started = time.perf_counter()
        person = decode_image(req["person_png"], settings.images, what="person")
        garment = decode_image(req["garment_png"], settings.images, what="garment", keep_alpha=True)
        result = pipeline(person, garment, category="auto", seed=0)
        encode_png(result.image)
        return time.perf_counter() - started, dict(result.timings_s)

    def over_http(client, req: dict) -> tuple[float, dict, int]:
        started = time.perf_counter()
        response = client.post(f"{service.url}/v1/tryon", headers=service.headers("serving"),
                               files={"person": ("person.png", req["person_png"], "image/png"), "garment": ("garment.png", req["garment_png"], "image/png")})
        body = response.content
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {body[:300]!r}")
        return elapsed, _server_timing(response.headers.get("server-timing")), response.status_code

    samples = []
    with httpx.Client(timeout=180.0) as client:
        for req in requests:  # warm-up: one of each per request, untimed
            in_process(req)
            over_http(client, req)
        bar = progress(total=runs * len(requests), desc="serving", enabled=show_progress)
        pair = 0
        for run in range(runs):
            for req in requests:
                order = ("in_process", "http") if pair % 2 == 0 else ("http", "in_process")
                for mode in order:
                    if mode == "in_process":
                        seconds, stages = in_process(req)
                    else:
                        seconds, stages, _ = over_http(client, req)
                    samples.append({"pair": pair, "run": run, "photo": req["photo"], "size": req["size"], "mode": mode,
                                    "seconds": round(seconds, 6), "stages_s": {k: round(v, 6) for k, v in stages.items()}})
                pair += 1
                bar.update(1)
        bar.close()
    return samples


def summarize_serving(samples: list[dict]) -> dict:
    by_pair: dict[int, dict[str, dict]] = {}
    for s in samples:
        by_pair.setdefault(s["pair"], {})[s["mode"]] = s
    pairs = [p for p in by_pair.values() if "http" in p and "in_process" in p]
    http = [p["http"]["seconds"] for p in pairs]
    local = [p["in_process"]["seconds"] for p in pairs]
    out = {
        "in_process": describe(local),
        "http": describe(http),
        "http_vs_in_process": paired_ratio(http, local),
    }
    # Where the HTTP time goes: the ingress's own total (Server-Timing 'total') vs the client's view,
    # and the stage calls through deployment handles vs the same stages called in-process.
    server_total = [p["http"]["stages_s"].get("total") for p in pairs if p["http"]["stages_s"].get("total")]
    if server_total:
        out["http_server_total"] = describe(server_total)
        out["proxy_and_client_s"] = describe([p["http"]["seconds"] - p["http"]["stages_s"]["total"] for p in pairs if p["http"]["stages_s"].get("total")])
    for stage in ("geometry", "warp", "refine"):
        remote = [p["http"]["stages_s"].get(stage) for p in pairs]
        here = [p["in_process"]["stages_s"].get(stage) for p in pairs]
        if all(remote) and all(here) and remote:
            out[f"{stage}_handle_vs_in_process"] = paired_ratio(remote, here)
    return out


def measure_load(service, requests: list[dict], *, levels: list[int], window_s: float, drain_s: float,
                 max_requests: int, show_progress: bool = True) -> list[dict]:
    from loadgen import run_level, summarize_level

    results = []
    for concurrency in levels:
        bar = progress(desc=f"load c={concurrency}", enabled=show_progress)

        def make(index: int, seq: int, _requests=requests):
            req = _requests[(index + seq) % len(_requests)]
            return {"headers": service.headers(f"load-{index}"),
                    "files": {"person": ("person.png", req["person_png"], "image/png"), "garment": ("garment.png", req["garment_png"], "image/png")}}

        level = asyncio.run(run_level(f"{service.url}/v1/tryon", make, concurrency=concurrency, duration_s=window_s,
                                      drain_timeout_s=drain_s, max_requests=max_requests, on_response=lambda: bar.update(1)))
        bar.close()
        summary = summarize_level(level, concurrency)
        print(f"load c={concurrency:>3}: {summary['ok']:>4}/{summary['requests']:<4} ok, {summary['throughput_rps'] or 0:.3f} req/s, "
              f"p50 {summary['p50_s'] or 0:.2f} s, p95 {summary['p95_s'] or 0:.2f} s, p99 {summary['p99_s'] or 0:.2f} s, "
              f"errors {summary['error_rate'] or 0:.0%}, 503 {summary['rate_503'] or 0:.0%}", file=sys.stderr)
        results.append({"concurrency": concurrency, "summary": summary, "samples": level["samples"]})
    return results


def summarize_load(levels: list[dict]) -> dict:
    rows = [level["summary"] for level in levels]
    out: dict = {"levels": rows}
    ok_rows = [r for r in rows if r["throughput_rps"]]
    if ok_rows:
        base = next((r for r in ok_rows if r["concurrency"] == min(x["concurrency"] for x in ok_rows)), ok_rows[0])
        best = max(ok_rows, key=lambda r: r["throughput_rps"])
        top = max(ok_rows, key=lambda r: r["concurrency"])
        out["base_concurrency"] = base["concurrency"]
        out["best"] = {"concurrency": best["concurrency"], "throughput_rps": best["throughput_rps"],
                       "throughput_vs_base": round(best["throughput_rps"] / base["throughput_rps"], 4)}
        if base["p95_s"] and top["p95_s"]:
            out["p95_at_top_vs_base"] = {"concurrency": top["concurrency"], "ratio": round(top["p95_s"] / base["p95_s"], 4)}
    return out


def run(args) -> dict[str, dict]:
    import os

    from pexir_tryon.config import Settings, resolve_device
    from pexir_tryon.images import encode_png
    from service import ServiceProcess

    device = resolve_device(args.device or "auto")
    check_device(device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    info = machine(device)
    parts = args.parts or list(PARTS)
    quick = args.quick
    use_refiner = args.refiner if args.refiner is not None else device.startswith("cuda")
    cpus = os.cpu_count() or 1
    stage_cpus = 0.0 if cpus < 4 else None  # the YAML asks 2.5 CPUs for ingress + stages; a 2-core box cannot give them
    app_args: dict = {}
    if device.startswith("cuda"):
        import torch

        if torch.cuda.device_count() == 1:  # the YAML's refiner_gpus 1.0 + warper_gpus 0.25 do not fit on one GPU
            app_args = {"refiner_gpus": 0.5, "warper_gpus": 0.25}
    overrides: dict = {"device": device}
    refiner_info = None
    if use_refiner:
        from benchlib import ensure_refiner

        model_dir, kind = ensure_refiner(device)
        overrides["refiner"] = {"model_dir": str(model_dir)}
        refiner_info = {"kind": kind, "model_dir": str(model_dir)}
        if quick:
            overrides["refiner"]["steps"] = 4
    settings = Settings(**{k: v for k, v in overrides.items()})

    size = args.size
    pairs = PAIRS[:1] if quick else PAIRS
    cases = bench_inputs({size: SIZES[size]}, pairs)
    requests = [{"photo": c["photo"], "size": c["size"], "person_png": encode_png(c["person"]), "garment_png": encode_png(c["garment"])} for c in cases]
    cold_runs = args.cold_runs or (1 if quick else 3)
    serving_runs = args.runs or (6 if quick else 10)
    levels = args.levels or ([1, 2, 4] if quick else [1, 2, 4, 8, 16, 32])
    window = args.window or (3.0 if quick else 30.0)
    drain = args.drain or (30.0 if quick else 120.0)

    pipeline = None
    if "serving" in parts:
        from pexir_tryon.pipeline import TryOnPipeline

        pipeline = TryOnPipeline.from_settings(settings, device=device)

    common_config = {
        "quick": quick,
        "torch_threads_in_process": info.get("torch_threads"),
        "service_omp_threads": args.threads,
        "serve_config": "serve_config.yaml (production file) + overrides",
        "overrides": {k: v for k, v in overrides.items()},
        "stage_cpus": stage_cpus,
        "app_args_overrides": app_args,
        "ray_num_cpus": cpus,
        "refiner": refiner_info,
        "input_size": size,
        "pairs": [list(p) for p in pairs],
        "auth": "a throwaway bearer key + X-User-Id (the production path)",
    }
    cold_samples: list[dict] = []
    serving_samples: list[dict] = []
    load_levels: list[dict] = []
    total_starts = cold_runs if "cold_start" in parts else 1
    if not ({"serving", "load"} & set(parts)) and "cold_start" not in parts:
        return {}
    for start_index in range(total_starts):
        service = ServiceProcess(overrides=overrides, stage_cpus=stage_cpus, num_cpus=cpus, threads=args.threads, app_args=app_args)
        print(f"service {start_index + 1}/{total_starts}: starting serve_config.yaml with its own Ray on {service.url}", file=sys.stderr)
        service.start()
        try:
            cold = service.wait_ready(requests[0]["person_png"], requests[0]["garment_png"], timeout_s=args.start_timeout)
            cold["run"] = start_index
            cold_samples.append(cold)
            print(f"  first 200 after {cold['first_200_s']:.1f} s (Ray ready {cold['ray_ready_s']} s, deployed {cold['deployed_s']} s)", file=sys.stderr)
            if start_index == 0:
                if "serving" in parts:
                    serving_samples = measure_serving(service, pipeline, requests, runs=serving_runs, settings=settings)
                if "load" in parts:
                    load_levels = measure_load(service, requests, levels=levels, window_s=window, drain_s=drain, max_requests=args.max_requests)
        finally:
            stop_started = time.perf_counter()
            service.stop()
            if cold_samples and cold_samples[-1]["run"] == start_index:
                cold_samples[-1]["graceful_stop_s"] = round(time.perf_counter() - stop_started, 3)

    out: dict[str, dict] = {}
    if "cold_start" in parts:
        summary = {name: describe([c[name] for c in cold_samples if c.get(name) is not None])
                   for name in ("first_200_s", "ray_ready_s", "deployed_s", "first_200_request_s", "graceful_stop_s")}
        out["cold_start"] = report("cold_start", device, {**common_config, "runs": cold_runs,
                                   "measured": "process spawn -> first 200 from POST /v1/tryon (polling every 0.25 s)"},
                                   cold_samples, summary, machine_info=dict(info))
    if "serving" in parts:
        summary = summarize_serving(serving_samples)
        out["serving"] = report("serving", device, {**common_config, "runs": serving_runs, "warmup": "one untimed request per side and photo",
                                "in_process": "decode both images, TryOnPipeline (InProcessStages), encode PNG",
                                "http": "POST /v1/tryon multipart through the Serve proxy, ingress, stage deployments, store; body read"},
                                serving_samples, summary, machine_info=dict(info))
        ratio = summary["http_vs_in_process"]
        print(f"serving: in-process {summary['in_process']['median']:.3f} s, HTTP {summary['http']['median']:.3f} s, "
              f"HTTP/in-process x{ratio['median_pair_ratio']} (median of {ratio['n_pairs']} pair ratios, IQR/median {ratio['pair_ratio_iqr_over_median']})")
    if "load" in parts:
        summary = summarize_load(load_levels)
        samples = [dict(s, concurrency=level["concurrency"]) for level in load_levels for s in level["samples"]]
        out["load"] = report("load", device, {**common_config, "levels": levels, "window_s": window, "drain_timeout_s": drain,
                             "max_requests_per_level": args.max_requests,
                             "client": "closed loop, asyncio + httpx (benchmarks/loadgen.py), one keep-alive connection per client; 503 -> wait Retry-After (cap 2 s)"},
                             samples, summary, machine_info=dict(info))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=None, help="default: all three")
    parser.add_argument("--quick", action="store_true", help="1 cold start, 6 serving pairs, levels 1, 2, 4 for 3 s each")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in-process and OMP_NUM_THREADS for the service")
    parser.add_argument("--refiner", action=argparse.BooleanOptionalAction, default=None,
                        help="put the refiner in the graph (default: on for CUDA with the full-size random model, off on CPU)")
    parser.add_argument("--size", choices=list(SIZES), default="512x384", help="person photo size of the requests")
    parser.add_argument("--runs", type=int, default=None, help="serving: interleaved pairs per photo")
    parser.add_argument("--levels", type=int, nargs="+", default=None, help="load: concurrency levels")
    parser.add_argument("--window", type=float, default=None, help="load: seconds each level sends new requests")
    parser.add_argument("--drain", type=float, default=None, help="load: seconds to let in-flight requests finish after the window")
    parser.add_argument("--max-requests", type=int, default=5000, help="load: cap on requests per level")
    parser.add_argument("--cold-runs", type=int, default=None, help="cold starts (default 1 quick, 3 full)")
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    quiet_native_stderr()
    results = run(args)
    for part, data in results.items():
        path = write_json(data, args.out, f"{part}_{device_label(data['config']['device'])}.json")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
