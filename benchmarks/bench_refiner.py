"""Benchmark the diffusion refiner: seconds per image and images/s against batch size, resolution and steps.

    # CPU, tiny random model built on the fly (what CI and laptops can run)
    python benchmarks/bench_refiner.py --quick
    # GPU, full-size SD-1.5-inpainting architecture with random weights
    python scripts/make_full_size_refiner.py /tmp/sd15-random
    python benchmarks/bench_refiner.py --model-dir /tmp/sd15-random --device cuda

Each configuration refines a batch of requests with distinct seeds through
``DiffusionRefiner.refine_batch`` (crop, denoise, paste: the whole stage), after one warm-up call.
"Resolution" is the working canvas (long x short side of a 3:4 portrait photo whose mask spans
it, so the crop is the whole photo); ``steps`` is what a request asks for, ``steps_run`` what
diffusers runs at the given strength. On CUDA the script also records
``torch.cuda.max_memory_allocated`` across a run of repeated requests, to show memory does not grow.

Writes ``benchmarks/results/refiner_<device>.json`` (machine, versions, config, raw samples,
medians) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, machine, setup_environment, versions  # noqa: E402

setup_environment()

from pexir_tryon.config import RefinerSettings, resolve_device  # noqa: E402
from pexir_tryon.refine import DiffusionRefiner, RefineRequest, load_refiner_model  # noqa: E402
from pexir_tryon.refine.refiner import steps_run  # noqa: E402

RESOLUTIONS = {"512x384": (512, 384), "1024x768": (1024, 768)}  # long x short side of a portrait photo


def make_request(long_side: int, short_side: int, seed: int) -> RefineRequest:
    """A portrait 'composite' whose garment mask spans the photo (the crop is the whole image)."""
    rng = np.random.default_rng(seed)
    height, width = long_side, short_side
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([127 + 90 * np.sin(xx / (9 + c) + yy / (13 + c) + rng.uniform(0, 6)) for c in range(3)], axis=-1).astype(np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[int(0.12 * height) : int(0.98 * height), int(0.05 * width) : int(0.95 * width)] = 255
    mask[int(0.12 * height) : int(0.3 * height), int(0.35 * width) : int(0.65 * width)] = 0  # the face stays
    return RefineRequest(image=image, mask=mask, seed=seed)


def cuda_memory(device: str) -> dict:
    import torch

    return {"allocated_mib": round(torch.cuda.memory_allocated(device) / 2**20, 1), "max_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}


def run(args) -> dict:
    import torch

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine_before = machine(device)
    if args.quick:
        batches, steps_list, repeats, memory_repeats = [1, 2, 4], [4, 20], 2, 4
    else:
        batches, steps_list, repeats, memory_repeats = [1, 2, 4], [10, 20, 50], 5, 20
    batches = args.batch or batches
    steps_list = args.steps or steps_list
    repeats = args.repeats or repeats
    resolutions = args.resolution or list(RESOLUTIONS)

    model_dir = args.model_dir
    built = None
    if model_dir is None:
        from pexir_tryon.refine.synthetic import build_random_refiner

        built = tempfile.TemporaryDirectory(prefix="pexir-tiny-refiner-")
        model_dir = build_random_refiner(Path(built.name), "tiny")
        print(f"no --model-dir: built the tiny random refiner in {model_dir}")

    base = RefinerSettings(strength=args.strength, guidance_scale=args.guidance_scale, max_batch_size=max(batches), dtype=args.dtype, compile=args.compile)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    model = load_refiner_model(model_dir, device, base)
    load_seconds = time.perf_counter() - started
    weights_memory = cuda_memory(device) if device.startswith("cuda") else None

    results = []
    print(f"{'resolution':>10} {'work':>9} {'steps':>5} {'run':>4} {'batch':>5} {'s/batch':>9} {'s/image':>9} {'images/s':>9}")
    for label in resolutions:
        long_side, short_side = RESOLUTIONS[label]
        for steps in steps_list:
            settings = base.model_copy(update={"resolution": long_side, "steps": steps, "max_steps": max(base.max_steps, steps)})
            refiner = DiffusionRefiner(model, settings)
            for batch in batches:
                requests = [make_request(long_side, short_side, seed) for seed in range(batch)]
                work = refiner._prepare(0, requests[0]).plan.work
                refiner.refine_batch(requests)  # warm-up (allocator, kernels, compile)
                samples = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    outputs = refiner.refine_batch(requests)
                    samples.append(time.perf_counter() - t0)
                    assert all(isinstance(o, np.ndarray) for o in outputs), outputs
                median = statistics.median(samples)
                row = {
                    "resolution": label,
                    "work_wh": list(work),
                    "steps": steps,
                    "steps_run": steps_run(steps, settings.strength),
                    "batch": batch,
                    "samples_s": [round(s, 5) for s in samples],
                    "median_s_per_batch": round(median, 5),
                    "median_s_per_image": round(median / batch, 5),
                    "images_per_s": round(batch / median, 3),
                }
                if device.startswith("cuda"):
                    row["cuda_memory_after"] = cuda_memory(device)
                results.append(row)
                print(
                    f"{label:>10} {work[0]:>4}x{work[1]:<4} {steps:>5} {row['steps_run']:>4} {batch:>5} "
                    f"{median:>9.4f} {median / batch:>9.4f} {batch / median:>9.2f}"
                )

    memory = None
    if device.startswith("cuda"):
        # repeated requests at the largest configuration: allocated and peak memory must not grow
        label = resolutions[-1]
        long_side, short_side = RESOLUTIONS[label]
        settings = base.model_copy(update={"resolution": long_side, "steps": steps_list[0]})
        refiner = DiffusionRefiner(model, settings)
        requests = [make_request(long_side, short_side, seed) for seed in range(max(batches))]
        refiner.refine_batch(requests)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        refiner.refine_batch(requests)
        first = cuda_memory(device)
        for _ in range(memory_repeats):
            refiner.refine_batch(requests)
        last = cuda_memory(device)
        memory = {
            "resolution": label,
            "batch": max(batches),
            "repeats": memory_repeats,
            "weights": weights_memory,
            "after_first": first,
            "after_repeats": last,
            "allocated_growth_mib": round(last["allocated_mib"] - first["allocated_mib"], 1),
            "peak_growth_mib": round(last["max_allocated_mib"] - first["max_allocated_mib"], 1),
        }
        print(f"CUDA memory: weights {weights_memory}, after 1 batch {first}, after {memory_repeats} more {last}")

    report = {
        "benchmark": "refiner",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "versions": versions("torch", "diffusers", "transformers", "numpy", "opencv-contrib-python", "safetensors"),
        "config": {
            "device": device,
            "quick": args.quick,
            "model": model.name,
            "model_dir": str(args.model_dir) if args.model_dir else "tiny (built on the fly)",
            "model_info": model.info,
            "load_seconds": round(load_seconds, 3),
            "settings": json.loads(base.model_dump_json()),
            "batches": batches,
            "steps": steps_list,
            "resolutions": resolutions,
            "repeats": repeats,
            "warmup_calls": 1,
        },
        "results": results,
        "cuda_memory": memory,
    }
    if built is not None:
        built.cleanup()
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark the diffusion refiner stage.")
    parser.add_argument("--model-dir", type=Path, default=None, help="refiner directory (default: build the tiny random model)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable; default 1, 2, 4)")
    parser.add_argument("--steps", type=int, action="append", help="requested steps (repeatable)")
    parser.add_argument("--resolution", choices=list(RESOLUTIONS), action="append", help="working resolution (repeatable)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per configuration")
    parser.add_argument("--strength", type=float, default=RefinerSettings().strength)
    parser.add_argument("--guidance-scale", type=float, default=RefinerSettings().guidance_scale)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (on a shared CPU, 1 avoids OpenMP spin-wait collapse)"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/refiner_<device>.json)")
    args = parser.parse_args(argv)
    report = run(args)
    out = args.out or ROOT / "benchmarks" / "results" / f"refiner_{report['config']['device'].split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
