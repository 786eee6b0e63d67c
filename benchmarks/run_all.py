"""Run the benchmark suite: every part as its own program, then the plots and SUMMARY.md.

    python benchmarks/run_all.py --quick                 # the short suite (what is recorded in the repo)
    python benchmarks/run_all.py                         # the full suite (tens of minutes on a laptop)
    python benchmarks/run_all.py --only stages,serving   # pick parts
    python benchmarks/run_all.py --device cuda           # GPU node: full-size random-weight refiner
    pexir-tryon bench [--quick] [--only ...] [--out DIR] [--device D]   # the same, from the CLI

Parts (each writes <part>_<device>.json into --out):
  stages      bench_stages.py   geometry / warp / refine latency at 512x384 and 1024x768, ours vs bare MediaPipe
  serving     bench_service.py  the same requests in-process and over HTTP through Ray Serve
  load        bench_service.py  concurrency sweep against the running service
  cold_start  bench_service.py  spawn of a fresh Ray + serve_config.yaml -> first 200
  refiner     bench_refiner.py  refiner images/s against batch size, resolution, steps
  batch       bench_batch.py    Ray Data re-render job against a sequential loop

Each program runs in its own process with the same interpreter, so one part's imports, threads
and memory do not leak into the next. A part that fails is reported and the others still run; the
exit status is non-zero if any failed. Then report.py draws the PNGs and writes SUMMARY.md from
every JSON in --out (so results of parts not re-run are kept in the summary).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchlib import RESULTS, check_device, device_label, setup_environment  # noqa: E402

setup_environment()

PARTS = ("stages", "serving", "load", "cold_start", "refiner", "batch")
SERVICE_PARTS = ("serving", "load", "cold_start")


def parse_only(value: str | None) -> list[str]:
    if not value:
        return list(PARTS)
    chosen = [p.strip().replace("-", "_") for p in value.replace(" ", ",").split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return [p for p in PARTS if p in chosen]


def commands(parts: list[str], *, quick: bool, device: str, threads: int | None, out: Path) -> list[tuple[str, list[str]]]:
    """[(label, argv)] in run order; the three service parts share one program (and one service).

    bench_refiner.py and bench_batch.py belong to other owners, whose own runs are recorded as
    refiner_<device>.json and batch_<device>.json; the suite never overwrites those. Its runs of
    them go to refiner_<device>.suite.json and batch_<device>.suite.json (report.py uses the newer)."""
    py = sys.executable
    label = device_label(device)
    common = ["--device", device]
    thread_args = ["--threads", str(threads)] if threads else []
    runs: list[tuple[str, list[str]]] = []
    if "stages" in parts:
        runs.append(("stages", [py, str(HERE / "bench_stages.py"), *common, *thread_args, "--out", str(out), *(["--quick"] if quick else [])]))
    service = [p for p in SERVICE_PARTS if p in parts]
    if service:
        runs.append(("+".join(service), [py, str(HERE / "bench_service.py"), "--parts", *service, *common, *thread_args, "--out", str(out),
                                         *(["--quick"] if quick else [])]))
    if "refiner" in parts:
        from benchlib import ensure_refiner

        # the cached random model (tiny on CPU, full-size on CUDA), so the program does not rebuild it
        cmd = [py, str(HERE / "bench_refiner.py"), *common, *thread_args, "--out", str(out / f"refiner_{label}.suite.json"),
               "--model-dir", str(ensure_refiner(device)[0])]
        if quick:
            # the owner's --quick sweeps 2 resolutions x 2 step counts x 3 batch sizes: minutes on 2 CPU cores
            cmd += ["--quick"] + ([] if device.startswith("cuda") else ["--resolution", "512x384", "--batch", "1", "--batch", "2", "--steps", "4", "--repeats", "3"])
        runs.append(("refiner", cmd))
    if "batch" in parts:
        cmd = [py, str(HERE / "bench_batch.py"), *common, "--out", str(out / ".batch-suite-run")]  # moved to batch_<device>.suite.json
        if quick:
            cmd += ["--quick"] + ([] if device.startswith("cuda") else ["--rows", "4", "--repeats", "2", "--actors", "1"])
        runs.append(("batch", cmd))
    return runs


def run_suite(args) -> int:
    from pexir_tryon.config import resolve_device

    device = resolve_device(args.device or os.environ.get("PEXIR_DEVICE") or "auto")
    check_device(device)
    label = device_label(device)
    parts = parse_only(args.only)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # One torch thread per process on CPU: on shared cores, OpenMP's spin-waiting threads collapse
    # (10x slower refiner calls measured here at 2 threads under load). GPU runs keep torch's default.
    threads = args.threads if args.threads is not None else (None if device.startswith("cuda") else 1)
    env = dict(os.environ)
    if device.startswith("cuda"):
        from benchlib import ensure_refiner

        if "batch" in parts:  # the batch job renders with the refiner from settings; give it the full-size one
            env.setdefault("PEXIR_REFINER__MODEL_DIR", str(ensure_refiner(device)[0]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # also what Ray's workers inherit (batch actors, serve replicas)

    plan = commands(parts, quick=args.quick, device=device, threads=threads, out=out)
    print(f"benchmark suite: {'quick' if args.quick else 'full'}, device {device}, torch threads {threads or 'default'}, "
          f"parts {', '.join(parts)} -> {out}", flush=True)
    records = []
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    suite_started = time.perf_counter()
    for index, (name, cmd) in enumerate(plan, 1):
        print(f"\n[{index}/{len(plan)}] {name}: {' '.join(Path(c).name if c.endswith('.py') else c for c in cmd[1:])}", flush=True)
        started = time.perf_counter()
        rc, cpu = run_part(cmd, env, args.part_timeout)
        seconds = time.perf_counter() - started
        if name == "batch":
            produced = out / ".batch-suite-run" / f"batch_{label}.json"
            if produced.is_file():
                produced.replace(out / f"batch_{label}.suite.json")
            shutil.rmtree(out / ".batch-suite-run", ignore_errors=True)
        records.append({"part": name, "seconds": round(seconds, 2), "cpu_seconds": cpu, "rc": rc, "argv": [Path(cmd[0]).name, *cmd[1:]]})
        print(f"[{index}/{len(plan)}] {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {seconds:.0f} s"
              + (f" ({cpu:.0f} CPU-s)" if cpu is not None else ""), flush=True)
    total = time.perf_counter() - suite_started
    cpu_total = sum(r["cpu_seconds"] or 0 for r in records)
    suite = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": args.quick, "device": device, "torch_threads": threads,
             "parts": records, "total_seconds": round(total, 2), "cpu_seconds": round(cpu_total, 1),
             "load_average_at_start": load_at_start, "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
             "cpu_count": os.cpu_count(),
             "note": "cpu_seconds: user+sys of each part's process tree (os.wait4); wall time well above cpu_seconds / cores means other jobs shared the machine"}
    if set(parts) == set(PARTS):  # a partial run does not overwrite the record of the whole suite
        (out / f"suite_{label}.json").write_text(json.dumps(suite, indent=2) + "\n")

    import report

    results = report.load_results(out)
    suite_record = suite if set(parts) == set(PARTS) else _previous_suite(out, label)
    for path in report.make_plots(results, out):
        print(f"wrote {path}")
    summary = report.write_summary(results, out, suite=suite_record)
    print(f"wrote {summary}")
    print(f"\nsuite finished in {total:.0f} s ({cpu_total:.0f} CPU-s on {os.cpu_count()} cores)" + ("" if all(r["rc"] == 0 for r in records) else
          "; FAILED: " + ", ".join(r["part"] for r in records if r["rc"] != 0)))
    _print_headline(results.get(label, {}))
    return 0 if all(r["rc"] == 0 for r in records) else 1


def run_part(cmd: list[str], env: dict, timeout: float | None) -> tuple[int, float | None]:
    """Run one part; returns (exit status, user+sys CPU seconds of its process tree)."""
    proc = subprocess.Popen(cmd, env=env, cwd=str(HERE.parent))
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode, round(usage.ru_utime + usage.ru_stime, 2)
            if deadline is not None and time.monotonic() > deadline:
                print(f"part timed out after {timeout:g} s; stopping it", file=sys.stderr)
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                return 124, None
            time.sleep(0.2)
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise


def _previous_suite(out: Path, label: str) -> dict | None:
    path = out / f"suite_{label}.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None


def _print_headline(parts: dict) -> None:
    import report

    rows = report.headline_rows(parts) if parts else []
    if not rows:
        return
    print("\nheadline")
    width = max(len(r[0]) for r in rows)
    for measure, ratio, noise, absolute in rows:
        print(f"  {measure:<{width}}  {ratio:>10}  noise {noise:<12} {absolute}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n\n")[2:3]))
    parser.add_argument("--quick", action="store_true", help="the short suite (about two minutes on an idle 2-core laptop)")
    parser.add_argument("--only", default=None, help=f"comma-separated parts: {','.join(PARTS)}")
    parser.add_argument("--out", default=str(RESULTS), help="folder for the JSON, plots and SUMMARY.md")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: PEXIR_DEVICE or auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: 1 on CPU, torch's default on CUDA)")
    parser.add_argument("--part-timeout", type=float, default=None, help="seconds after which a part is stopped (default: none)")
    return run_suite(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
