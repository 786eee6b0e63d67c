"""Per-stage latency: geometry, garment warp and refine at 512x384 and 1024x768, and our geometry
stage against bare MediaPipe calls on the same images.

    python benchmarks/bench_stages.py --quick            # 1 photo pair, 3 runs (12 geometry pairs), 4 refiner steps
    python benchmarks/bench_stages.py                    # 2 photo pairs, 7 runs (30 geometry pairs), default steps
    python benchmarks/bench_stages.py --device cuda      # warp and refine on the GPU, full-size refiner

Inputs are real photos (sample:astronaut, sample:grace_hopper) scaled and padded, never cropped,
to each portrait size, with drawn garments. Every run goes through every (size, photo) case in
the same order; within a run, our geometry stage and the bare MediaPipe calls alternate which goes
first, so a busy spell on a shared machine hits both sides of a ratio.

- ``geometry``: ``GeometryDetector.detect`` (pose, face mesh, face detection, selfie segmentation,
  then our checks and the small mask).
- ``mediapipe_bare``: the same four MediaPipe solutions, configured the same, called on the same
  image with nothing around them. ``geometry / mediapipe_bare`` is our overhead.
- ``mediapipe_pose``: the pose solution alone (what a minimal pose-only pipeline would pay).
- ``warp``: ``GarmentWarper.warp_batch`` of one request (garment mask, anchors, TPS, composite).
- ``refine``: ``DiffusionRefiner.refine_batch`` of that composite and its refine mask: the tiny
  random model on CPU, the full-size random-weight SD-1.5-inpainting architecture on CUDA.

Writes ``stages_<device>.json`` (machine, versions, config, every sample, summary).
"""

from __future__ import annotations

import argparse
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

STAGES = ("geometry", "mediapipe_bare", "mediapipe_pose", "warp", "refine")


class BareMediaPipe:
    """The four MediaPipe solutions our detector runs, with the same parameters, and nothing else."""

    def __init__(self, settings):
        import mediapipe as mp

        solutions = mp.solutions
        confidence = settings.geometry.min_detection_confidence
        self.pose = solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False, min_detection_confidence=confidence)
        self.face_mesh = solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=4, refine_landmarks=False, min_detection_confidence=confidence)
        self.face_detection = solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=confidence)
        self.segmentation = solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def all(self, image) -> None:
        self.pose.process(image)
        self.face_mesh.process(image)
        self.face_detection.process(image)
        self.segmentation.process(image)

    def pose_only(self, image) -> None:
        self.pose.process(image)

    def close(self) -> None:
        for solution in (self.pose, self.face_mesh, self.face_detection, self.segmentation):
            solution.close()


def _first(results):
    result = results[0]
    if isinstance(result, BaseException):
        raise result
    return result


def measure_stages(cases: list[dict], *, runs: int, detector, warper, refiner=None, bare: BareMediaPipe | None = None,
                   geometry_runs: int | None = None, steps: int | None = None, seed: int = 0, warmup: bool = True,
                   show_progress: bool = True, sync=None) -> list[dict]:
    """Time every stage on every case, `runs` times; then, up to `geometry_runs` in all, only the
    cheap geometry-vs-bare-MediaPipe pairs (a ratio needs more pairs than a latency needs runs).
    Returns one sample per (run, case, stage):
    ``{"run", "size", "photo", "garment", "stage", "seconds", "cpu_seconds"}`` (wall clock, and the
    process's CPU time over the call: on a shared machine the wall time includes waiting for a core,
    the CPU time does not), or ``"error"`` (a TryOnError code) instead of the times when a stage
    rejected the case (its later stages are then skipped).

    `cases` are dicts from ``common.bench_inputs`` (size, photo, garment_name, person, garment).
    `sync`, if given, is called before each clock read (e.g. ``torch.cuda.synchronize``)."""
    from pexir_tryon.errors import TryOnError
    from pexir_tryon.garment import WarpRequest
    from pexir_tryon.refine import RefineRequest

    def clock(fn, *args):
        if sync is not None:
            sync()
        cpu_started = time.process_time()
        started = time.perf_counter()
        value = fn(*args)
        if sync is not None:
            sync()
        return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started}, value

    def one(run: int, case: dict, out: list[dict] | None, geometry_only: bool = False) -> None:
        base = {"run": run, "size": case["size"], "photo": case["photo"], "garment": case["garment_name"]}

        def record(stage: str, **value) -> None:
            if out is not None:
                out.append({**base, "stage": stage, **value})

        person = case["person"]
        ours_first = run % 2 == 0
        geometry = None
        try:
            if ours_first:
                times, geometry = clock(detector.detect, person)
                record("geometry", **times)
            if bare is not None:
                record("mediapipe_bare", **clock(bare.all, person)[0])
                record("mediapipe_pose", **clock(bare.pose_only, person)[0])
            if not ours_first:
                times, geometry = clock(detector.detect, person)
                record("geometry", **times)
        except TryOnError as error:
            record("geometry", error=error.code)
            return
        if geometry_only:
            return
        try:
            times, warped = clock(lambda r: _first(warper.warp_batch([r])), WarpRequest(person=person, garment=case["garment"], geometry=geometry))
            record("warp", **times)
        except TryOnError as error:
            record("warp", error=error.code)
            return
        del geometry
        if refiner is not None:
            request = RefineRequest(image=warped.composite, mask=warped.refine_mask, seed=seed, steps=steps)
            try:
                record("refine", **clock(lambda r: _first(refiner.refine_batch([r])), request)[0])
            except TryOnError as error:
                record("refine", error=error.code)

    if warmup:  # first calls pay for graph set-up, allocator growth and kernel selection
        seen = set()
        for case in cases:
            if case["size"] not in seen:
                seen.add(case["size"])
                one(-1, case, None)
    samples: list[dict] = []
    total_runs = max(runs, geometry_runs or 0)
    bar = progress(total=total_runs * len(cases), desc="stages", enabled=show_progress)
    for run in range(total_runs):
        for case in cases:
            one(run, case, samples, geometry_only=run >= runs)
            bar.update(1)
    bar.close()
    return samples


def summarize(samples: list[dict]) -> dict:
    """Per size: describe() of every stage's wall and CPU time, our-overhead ratios (paired, on wall
    and on CPU time, plus the ratio of the best calls), stage shares; across sizes: scaling."""
    sizes = sorted({s["size"] for s in samples}, key=lambda label: SIZES.get(label, (0, 0)))
    out: dict = {"per_size": {}, "scaling": {}}

    def series(size: str, stage: str, key: str = "seconds") -> dict[tuple, float]:
        return {(s["run"], s["photo"]): s[key] for s in samples if s["size"] == size and s["stage"] == stage and s.get(key) is not None}

    for size in sizes:
        entry: dict = {"stages": {}, "cpu": {}, "errors": {}}
        for stage in STAGES:
            values = list(series(size, stage).values())
            if values:
                entry["stages"][stage] = describe(values)
                entry["cpu"][stage] = describe(list(series(size, stage, "cpu_seconds").values()))
            errors = [s["error"] for s in samples if s["size"] == size and s["stage"] == stage and "error" in s]
            if errors:
                entry["errors"][stage] = {code: errors.count(code) for code in sorted(set(errors))}
        for name, stage in (("geometry_vs_mediapipe_bare", "mediapipe_bare"), ("geometry_vs_mediapipe_pose", "mediapipe_pose")):
            ratio: dict = {}
            for key, label in (("seconds", "wall"), ("cpu_seconds", "cpu")):
                ours, other = series(size, "geometry", key), series(size, stage, key)
                keys = [k for k in ours if k in other]
                if keys:
                    ratio[label] = paired_ratio([ours[k] for k in keys], [other[k] for k in keys])
                    ratio[label]["ratio_of_minimums"] = round(min(ours[k] for k in keys) / min(other[k] for k in keys), 4) if min(other[k] for k in keys) else None
            if ratio:
                entry[name] = ratio
        for key, label in (("stages", "stage_share"), ("cpu", "cpu_share")):
            medians = {stage: entry[key][stage]["median"] for stage in ("geometry", "warp", "refine") if stage in entry[key] and entry[key][stage]["median"]}
            total = sum(medians.values())
            if total:
                entry[label] = {stage: round(value / total, 4) for stage, value in medians.items()}
                entry[label.replace("share", "total_median_s")] = round(total, 6)
        out["per_size"][size] = entry
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        for stage in STAGES:
            a = out["per_size"][small]["stages"].get(stage)
            b = out["per_size"][large]["stages"].get(stage)
            ca = out["per_size"][small]["cpu"].get(stage)
            cb = out["per_size"][large]["cpu"].get(stage)
            if a and b and a["median"]:
                out["scaling"][stage] = {"from": small, "to": large, "ratio_of_medians": round(b["median"] / a["median"], 4),
                                         "cpu_ratio_of_medians": round(cb["median"] / ca["median"], 4) if ca and cb and ca["median"] else None}
    return out


def print_table(summary: dict) -> None:
    print(f"{'size':>9} {'stage':>15} {'n':>3} {'median ms':>10} {'p95 ms':>9} {'IQR/med':>8}")
    for size, entry in summary["per_size"].items():
        for stage, stats in entry["stages"].items():
            print(f"{size:>9} {stage:>15} {stats['n']:>3} {stats['median'] * 1000:>10.1f} {stats['p95'] * 1000:>9.1f} {stats['iqr_over_median'] or 0:>8.2f}")
        ratio = entry.get("geometry_vs_mediapipe_bare")
        for label in ("wall", "cpu"):
            r = (ratio or {}).get(label)
            if r and r["median_pair_ratio"]:
                print(f"{size:>9} {'ours / bare MP':>15}   x{r['median_pair_ratio']:.3f} {label} time, median of {r['n_pairs']} pair ratios "
                      f"(IQR/median {r['pair_ratio_iqr_over_median']}; best calls x{r['ratio_of_minimums']})")
        for error_stage, counts in entry.get("errors", {}).items():
            print(f"{size:>9} {error_stage:>15} rejected: {counts}")


def run(args) -> dict:
    from pexir_tryon.config import Settings, resolve_device
    from pexir_tryon.garment import GarmentWarper
    from pexir_tryon.geometry import GeometryDetector

    device = resolve_device(args.device or "auto")
    check_device(device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    info = machine(device)
    settings = Settings(device=device)
    runs = args.runs or (3 if args.quick else 7)
    geometry_runs = max(runs, args.geometry_runs or (12 if args.quick else 30))
    pairs = PAIRS[:1] if args.quick else PAIRS
    steps = args.steps if args.steps is not None else (4 if args.quick else None)
    sizes = {label: SIZES[label] for label in (args.size or list(SIZES))}

    timings: dict[str, float] = {}
    started = time.perf_counter()
    detector = GeometryDetector(settings.geometry, settings.images)
    bare = BareMediaPipe(settings)
    warper = GarmentWarper(settings.garment, settings.images, device=device)
    timings["load_geometry_and_warp_s"] = time.perf_counter() - started
    refiner = None
    refiner_info = None
    if not args.no_refine:
        from benchlib import ensure_refiner

        from pexir_tryon.refine import DiffusionRefiner, load_refiner_model

        started = time.perf_counter()
        model_dir, kind = ensure_refiner(device)
        model = load_refiner_model(model_dir, device, settings.refiner)
        refiner = DiffusionRefiner(model, settings.refiner)
        timings["load_refiner_s"] = time.perf_counter() - started
        from pexir_tryon.refine.refiner import steps_run

        requested = steps or settings.refiner.steps
        refiner_info = {"kind": kind, "model_dir": str(model_dir), "name": model.name, "info": model.info,
                        "steps": requested, "steps_run": steps_run(requested, settings.refiner.strength),
                        "strength": settings.refiner.strength, "resolution": settings.refiner.resolution}
    sync = None
    if device.startswith("cuda"):
        import torch

        sync = torch.cuda.synchronize

    cases = bench_inputs(sizes, pairs)
    print(f"stages: {len(cases)} cases x {runs} runs (+ geometry-only up to {geometry_runs}) on {device} ({'quick' if args.quick else 'full'}), refiner {refiner_info and refiner_info['kind']}", file=sys.stderr)
    samples = measure_stages(cases, runs=runs, geometry_runs=geometry_runs, detector=detector, warper=warper, refiner=refiner, bare=bare,
                             steps=steps, sync=sync)
    detector.close()
    bare.close()
    summary = summarize(samples)
    print_table(summary)
    config = {
        "quick": args.quick,
        "torch_threads": info.get("torch_threads"),
        "runs": runs,
        "geometry_runs": geometry_runs,
        "warmup": "one untimed pass of the first case of each size",
        "sizes": {label: list(hw) for label, hw in sizes.items()},
        "pairs": [list(p) for p in pairs],
        "padding": "scale to fit, pad with grey (128) to the exact size; never crop",
        "refiner": refiner_info,
        "geometry_detector": "GeometryDetector (pose complexity 1, face mesh, face detection, selfie segmentation)",
        "load_timings_s": {k: round(v, 3) for k, v in timings.items()},
        "order": "per run: every case in order; geometry and bare MediaPipe alternate which goes first",
    }
    return report("stages", device, config, [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in s.items()} for s in samples], summary, machine_info=info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one photo pair, 3 runs, 4 refiner steps")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (warp and refine; MediaPipe is CPU)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs (default 3 quick, 7 full)")
    parser.add_argument("--geometry-runs", type=int, default=None, help="geometry vs bare MediaPipe pairs per case (default 12 quick, 30 full)")
    parser.add_argument("--steps", type=int, default=None, help="refiner steps (default 4 quick, the configured default otherwise)")
    parser.add_argument("--size", choices=list(SIZES), action="append", help="portrait size (repeatable; default both)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (on a shared CPU, 1 avoids OpenMP spin-wait collapse)")
    parser.add_argument("--no-refine", action="store_true", help="skip the refine stage (no diffusers import)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    quiet_native_stderr()
    data = run(args)
    path = write_json(data, args.out, f"stages_{device_label(data['config']['device'])}.json")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
