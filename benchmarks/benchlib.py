"""Shared helpers of the benchmark programs: machine and version records, robust statistics,
the benchmark inputs (real photos padded to 3:4 portrait sizes), progress bars and JSON output.

Every program writes one JSON file per part to ``benchmarks/results/`` (or ``--out``) with the
same top-level keys: ``benchmark``, ``created``, ``machine``, ``versions``, ``config``,
``samples`` (every raw measurement) and ``summary`` (medians, p95, spread, ratios).
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# The two portrait sizes every per-stage number is measured at: (height, width).
SIZES = {"512x384": (512, 384), "1024x768": (1024, 768)}
# Photo x garment pairs. sample:camera is left out: padded to 3:4 its person is too small for
# MediaPipe pose (no_person_detected), so it would measure the rejection path, not a try-on.
PAIRS = (("astronaut", "tshirt"), ("grace_hopper", "longsleeve"))
PAD_VALUE = 128  # neutral grey border: pad, never crop


def setup_environment() -> None:
    """Quiet MediaPipe/TFLite and keep Ray local, unauthenticated and without usage stats."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def quiet_native_stderr() -> None:
    """Keep MediaPipe's C++ log lines from burying the progress bars (see logs.silence_native_stderr).
    Set PEXIR_BENCH_NATIVE_LOGS=1 to keep the native logs."""
    if os.environ.get("PEXIR_BENCH_NATIVE_LOGS") == "1":
        return
    from pexir_tryon.logs import silence_native_stderr

    silence_native_stderr()


# --- records -------------------------------------------------------------------------------------

def versions(*packages: str) -> dict:
    out = {"python": platform.python_version()}
    for package in packages or ("pexir-tryon", "torch", "mediapipe", "ray", "diffusers", "numpy", "opencv-contrib-python", "httpx"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def git_commit() -> str | None:
    head = ROOT / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            path = ROOT / ".git" / ref[5:]
            if path.is_file():
                return path.read_text().strip()
            packed = ROOT / ".git" / "packed-refs"
            for line in packed.read_text().splitlines() if packed.is_file() else []:
                if line.endswith(ref[5:]):
                    return line.split()[0]
            return None
        return ref
    except OSError:
        return None


def machine(device: str) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda"):
            props = torch.cuda.get_device_properties(torch.device(device))
            info.update(gpu=props.name, gpu_count=torch.cuda.device_count(), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                        cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    except ImportError:  # pragma: no cover
        pass
    return info


def check_device(device: str) -> None:
    """Fail fast (before building a 2 GB model) when a CUDA device is asked for and none is visible."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"error: device {device!r} asked for, but no CUDA GPU is visible to torch")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise SystemExit(f"error: device {device!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")


def device_label(device: str) -> str:
    """'cuda:1' -> 'cuda': the suffix of result file names."""
    return "cuda" if device.startswith("cuda") else "cpu"


def report(benchmark: str, device: str, config: dict, samples: list, summary: dict, *, machine_info: dict | None = None) -> dict:
    info = machine_info or machine(device)
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "benchmark": benchmark,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(),
        "machine": info,
        "versions": versions(),
        "config": {"device": device, **config},
        "samples": samples,
        "summary": summary,
    }


def write_json(data: dict, out_dir: Path, name: str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- statistics ----------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without numpy."""
    data = sorted(values)
    if not data:
        return math.nan
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def describe(values: list[float]) -> dict:
    """Median, p95, IQR/median (the noise figure used throughout), min, max and n."""
    values = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"n": 0, "median": None, "p95": None, "iqr_over_median": None, "min": None, "max": None}
    median = percentile(values, 50)
    iqr = percentile(values, 75) - percentile(values, 25)
    return {
        "n": len(values),
        "median": round(median, 6),
        "p95": round(percentile(values, 95), 6),
        "iqr_over_median": round(iqr / median, 4) if median else None,
        "min": round(min(values), 6),
        "max": round(max(values), 6),
    }


def paired_ratio(numerators: list[float], denominators: list[float]) -> dict:
    """A ratio measured in one run from interleaved pairs: the ratio of the medians, plus the median
    and IQR/median of the per-pair ratios (how much the ratio itself moved from pair to pair)."""
    pairs = [(a, b) for a, b in zip(numerators, denominators) if a and b]
    if not pairs:
        return {"n_pairs": 0, "ratio_of_medians": None, "median_pair_ratio": None, "pair_ratio_iqr_over_median": None}
    ratios = [a / b for a, b in pairs]
    stats = describe(ratios)
    num = percentile([a for a, _ in pairs], 50)
    den = percentile([b for _, b in pairs], 50)
    return {
        "n_pairs": len(pairs),
        "ratio_of_medians": round(num / den, 4),
        "median_pair_ratio": stats["median"] and round(stats["median"], 4),
        "pair_ratio_iqr_over_median": stats["iqr_over_median"],
        "pair_ratio_min": stats["min"] and round(stats["min"], 4),
        "pair_ratio_max": stats["max"] and round(stats["max"], 4),
        "median_difference_s": round(percentile([a - b for a, b in pairs], 50), 6),
    }


# --- inputs --------------------------------------------------------------------------------------

def fit_portrait(image, height: int, width: int, pad_value: int = PAD_VALUE):
    """Scale the photo to fit inside height x width and pad the rest (never crop)."""
    import cv2
    import numpy as np

    h, w = image.shape[:2]
    scale = min(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    top, left = (height - nh) // 2, (width - nw) // 2
    out = cv2.copyMakeBorder(resized, top, height - nh - top, left, width - nw - left, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return np.ascontiguousarray(out)


def bench_inputs(sizes: dict[str, tuple[int, int]] | None = None, pairs=PAIRS) -> list[dict]:
    """[{size, photo, garment_name, person (HxWx3 uint8), garment}] for every size x pair."""
    from pexir_tryon.samples import garment_sample, person_sample

    sizes = sizes or SIZES
    out = []
    for label, (height, width) in sizes.items():
        for photo, garment in pairs:
            out.append({
                "size": label,
                "photo": photo,
                "garment_name": garment,
                "person": fit_portrait(person_sample(photo), height, width),
                "garment": garment_sample(garment),
            })
    return out


# --- misc ----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def progress(iterable=None, *, total=None, desc: str = "", enabled: bool = True):
    """A tqdm bar on stderr (or the bare iterable when tqdm is missing or disabled)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        enabled = False
    if not enabled:
        return _NoBar(iterable)
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.5)


class _NoBar:
    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def refiner_cache_dir(kind: str) -> Path:
    """Where a random-weight refiner is built once and reused ('tiny' on CPU, 'full' for GPU runs).
    PEXIR_BENCH_FULL_REFINER / PEXIR_BENCH_TINY_REFINER override the location."""
    override = os.environ.get(f"PEXIR_BENCH_{kind.upper()}_REFINER")
    if override:
        return Path(override).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "pexir-tryon" / "bench" / f"sd15-inpainting-random-{kind}"


def ensure_refiner(device: str) -> tuple[Path, str]:
    """The refiner a benchmark on `device` uses, built once and cached: the full-size random-weight
    SD-1.5-inpainting architecture on CUDA (the real model's FLOPs and memory), the tiny random
    model elsewhere. Returns (model_dir, 'full' | 'tiny')."""
    from pexir_tryon.refine.synthetic import build_random_refiner

    kind = "full" if device.startswith("cuda") else "tiny"
    target = refiner_cache_dir(kind)
    if not (target / "pexir-manifest.json").is_file():
        note = " (once; ~1 min and ~9 GB of RAM)" if kind == "full" else ""
        print(f"building the {kind} random-weight refiner in {target}{note}", file=sys.stderr)
        partial = target.with_name(target.name + f".partial-{os.getpid()}")
        build_random_refiner(partial, kind)
        partial.rename(target)
    return target, kind
