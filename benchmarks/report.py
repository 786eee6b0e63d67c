"""Plots (PNG, matplotlib Agg) and SUMMARY.md from the JSON files in a results folder.

    python benchmarks/report.py [--out benchmarks/results]

Reads whatever parts are there (stages, serving, load, cold_start, refiner, batch; *_cpu.json and
*_cuda.json), draws one plot per part and device, and writes one SUMMARY.md. On a CPU machine the
summary leads with ratios (overheads, scaling, speed-ups measured within one run), which carry over
to other machines far better than absolute seconds on 2 shared cores; every figure says how noisy
it was (IQR/median over its samples).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import RESULTS, describe  # noqa: E402

PARTS = ("stages", "serving", "load", "cold_start", "refiner", "batch")
DEVICES = ("cpu", "cuda")


def load_results(out: Path) -> dict[str, dict[str, dict]]:
    """{device: {part: data}} for every <part>_<device>.json present. For the refiner and batch
    programs (other owners' files) the suite's own run, <part>_<device>.suite.json, is used when it
    is newer than the owner's recorded run. data["_source"] names the file used."""
    found: dict[str, dict[str, dict]] = {}
    for device in DEVICES:
        for part in PARTS:
            candidates = []
            for name in (f"{part}_{device}.json", f"{part}_{device}.suite.json"):
                path = out / name
                if path.is_file():
                    try:
                        data = json.loads(path.read_text())
                    except ValueError:
                        print(f"skipping unreadable {path}", file=sys.stderr)
                        continue
                    data["_source"] = name
                    candidates.append(data)
            if candidates:
                candidates.sort(key=lambda d: str(d.get("created", "")), reverse=True)
                newest = candidates[0]
                newest["_older"] = candidates[1:]  # shown in the detail section too
                found.setdefault(device, {})[part] = newest
    return found


# --- formatting ----------------------------------------------------------------------------------

def ms(seconds) -> str:
    if seconds is None:
        return "–"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def secs(seconds) -> str:
    return "–" if seconds is None else f"{seconds:.2f} s"


def ratio(value) -> str:
    return "–" if value is None else f"×{value:.2f}"


def noise(value) -> str:
    return "–" if value is None else f"{value:.0%}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


# --- plots ---------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_stages(data: dict, path: Path) -> Path:
    plt = _plt()
    per_size = data["summary"]["per_size"]
    sizes = list(per_size)
    stages = [s for s in ("mediapipe_pose", "mediapipe_bare", "geometry", "warp", "refine") if any(s in per_size[z]["stages"] for z in sizes)]
    labels = {"mediapipe_pose": "bare MediaPipe\n(pose only)", "mediapipe_bare": "bare MediaPipe\n(4 solutions)", "geometry": "geometry\n(ours)", "warp": "warp", "refine": "refine"}
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(1, len(sizes))
    for i, size in enumerate(sizes):
        med = [per_size[size]["stages"].get(s, {}).get("median") or 0 for s in stages]
        lo = [m - (per_size[size]["stages"].get(s, {}).get("min") or m) for s, m in zip(stages, med)]
        hi = [(per_size[size]["stages"].get(s, {}).get("p95") or m) - m for s, m in zip(stages, med)]
        xs = [x + (i - (len(sizes) - 1) / 2) * width for x in range(len(stages))]
        ax.bar(xs, [m * 1000 for m in med], width, yerr=[[v * 1000 for v in lo], [v * 1000 for v in hi]], capsize=3, label=size)
    ax.set_xticks(range(len(stages)), [labels[s] for s in stages])
    ax.set_yscale("log")
    ax.set_ylabel("latency per call, ms (log)")
    cfg = data["config"]
    ref = cfg.get("refiner") or {}
    ax.set_title(f"Per-stage latency, {data['config']['device']} — median, whiskers min..p95, n={cfg.get('runs')} runs/case"
                 + (f"\nrefiner: {ref.get('kind')} random model, {ref.get('steps')} steps ({ref.get('steps_run')} run)" if ref else ""), fontsize=9)
    ax.legend(title="photo size (h×w)")
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_load(data: dict, path: Path) -> Path:
    plt = _plt()
    rows = data["summary"]["levels"]
    conc = [r["concurrency"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    throughput = [r["throughput_rps"] or 0 for r in rows]
    left.plot(conc, throughput, "o-", color="C0", label="200s per second")
    left.set_xscale("log", base=2)
    left.set_xticks(conc, [str(c) for c in conc])
    left.minorticks_off()
    left.set_xlabel("concurrent clients")
    left.set_ylabel("throughput, requests/s", color="C0")
    left.set_ylim(0, max(throughput + [0.1]) * 1.25)
    left.grid(alpha=0.3)
    rates = left.twinx()
    rates.bar([c * 0.93 for c in conc], [100 * (r["error_rate"] or 0) for r in rows], width=[c * 0.12 for c in conc], color="C3", alpha=0.5, label="errors %")
    rates.bar([c * 1.07 for c in conc], [100 * (r["rate_503"] or 0) for r in rows], width=[c * 0.12 for c in conc], color="C1", alpha=0.5, label="503 %")
    rates.set_ylim(0, 100)
    rates.set_ylabel("errors / 503s, % of requests")
    rates.legend(loc="upper left", fontsize=7)
    left.set_title("Throughput (line) and error rates (bars)", fontsize=9)
    for key, style in (("p50_s", "o-"), ("p95_s", "s--"), ("p99_s", "^:")):
        right.plot(conc, [r[key] or float("nan") for r in rows], style, label=key[:-2])
    right.set_xscale("log", base=2)
    right.set_xticks(conc, [str(c) for c in conc])
    right.minorticks_off()
    right.set_xlabel("concurrent clients")
    right.set_ylabel("latency of 200s, s")
    right.set_ylim(bottom=0)
    right.grid(alpha=0.3)
    right.legend()
    right.set_title("Latency", fontsize=9)
    cfg = data["config"]
    fig.suptitle(f"POST /v1/tryon through Ray Serve on loopback ({cfg['device']}, {cfg.get('input_size')} photos, "
                 f"{cfg.get('window_s'):g} s per level{', refiner in graph' if cfg.get('refiner') else ', no refiner'})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_serving(data: dict, path: Path) -> Path:
    plt = _plt()
    samples = data["samples"]
    local = [s["seconds"] for s in samples if s["mode"] == "in_process"]
    http = [s["seconds"] for s in samples if s["mode"] == "http"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.boxplot([local, http], showfliers=True)
    ax.set_xticks([1, 2], ["in-process", "HTTP via Ray Serve"])
    r = data["summary"]["http_vs_in_process"]
    ax.set_ylabel("seconds per request")
    ax.set_ylim(bottom=0)
    ax.set_title(f"The same requests, interleaved ({data['config']['device']}, {data['config'].get('input_size')})\n"
                 f"HTTP ÷ in-process {ratio(r['median_pair_ratio'])} (median of {r['n_pairs']} pair ratios)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_refiner(data: dict, path: Path) -> Path:
    plt = _plt()
    rows = data.get("results") or []
    fig, ax = plt.subplots(figsize=(6, 3.8))
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault((row["resolution"], row["steps"]), []).append(row)
    for (res, steps), items in sorted(groups.items()):
        items.sort(key=lambda r: r["batch"])
        ax.plot([r["batch"] for r in items], [r["images_per_s"] for r in items], "o-", label=f"{res}, {steps} steps")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    cfg = data.get("config", {})
    ax.set_title(f"Refiner throughput ({cfg.get('device')}, {cfg.get('model')})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_batch(data: dict, path: Path) -> Path:
    plt = _plt()
    rows = data.get("medians") or []
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = [f"{r['mode']}\n{r['actors']} actor{'s' if r['actors'] != 1 else ''}" if r["mode"] != "sequential" else "sequential\nloop" for r in rows]
    ax.bar(range(len(rows)), [r["rows_per_s"] for r in rows], label="rows/s (wall, incl. start-up)")
    ax.plot(range(len(rows)), [r.get("steady_rows_per_s") or 0 for r in rows], "ko", label="steady rows/s")
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylabel("rows/s")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Batch re-render ({data.get('config', {}).get('device')}, {data.get('config', {}).get('rows')} rows)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PLOTTERS = {"stages": plot_stages, "load": plot_load, "serving": plot_serving, "refiner": plot_refiner, "batch": plot_batch}


def make_plots(results: dict[str, dict[str, dict]], out: Path) -> list[Path]:
    paths = []
    for device, parts in results.items():
        for part, data in parts.items():
            plotter = PLOTTERS.get(part)
            if plotter is None:
                continue
            try:
                paths.append(plotter(data, out / f"{part}_{device}.png"))
            except Exception as exc:  # noqa: BLE001 - one odd file must not lose the other plots
                print(f"could not plot {part}_{device}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return paths


# --- summary -------------------------------------------------------------------------------------

def headline_rows(parts: dict[str, dict]) -> list[list[str]]:
    """[measure, ratio, noise, absolute] rows: the figures that transfer across machines first."""
    rows: list[list[str]] = []
    stages = parts.get("stages")
    if stages:
        for size, entry in stages["summary"]["per_size"].items():
            both = entry.get("geometry_vs_mediapipe_bare") or {}
            cpu, wall = both.get("cpu"), both.get("wall")
            if cpu and cpu.get("median_pair_ratio") and wall:
                rows.append([f"Geometry stage ÷ bare MediaPipe (same 4 solutions, same image), {size}, {cpu['n_pairs']} pairs, CPU time",
                             ratio(cpu["median_pair_ratio"]), noise(cpu.get("pair_ratio_iqr_over_median")),
                             f"wall: {ratio(wall['median_pair_ratio'])} (noise {noise(wall.get('pair_ratio_iqr_over_median'))}), best calls "
                             f"{ratio(wall.get('ratio_of_minimums'))}; {ms(entry['stages']['geometry']['median'])} vs {ms(entry['stages']['mediapipe_bare']['median'])}"])
        for size, entry in stages["summary"]["per_size"].items():
            share = entry.get("cpu_share")
            if share:
                text = " : ".join(f"{k} {v:.0%}" for k, v in share.items())
                worst = max((entry["cpu"][k].get("iqr_over_median") or 0) for k in share)
                rows.append([f"Share of the pipeline's CPU time per stage, {size}", text, noise(worst),
                             f"{ms(entry.get('cpu_total_median_s'))} CPU, {ms(entry.get('stage_total_median_s'))} wall"])
        scaling = stages["summary"].get("scaling", {})
        if scaling:
            text = ", ".join(f"{k} {ratio(v.get('cpu_ratio_of_medians'))}" for k, v in scaling.items() if k in ("geometry", "warp", "refine"))
            first = next(iter(scaling.values()))
            rows.append([f"CPU time {first['to']} ÷ {first['from']} (4× the pixels)", text, "see stage table",
                         "wall: " + ", ".join(f"{k} {ratio(v['ratio_of_medians'])}" for k, v in scaling.items() if k in ("geometry", "warp", "refine"))])
    serving = parts.get("serving")
    if serving:
        r = serving["summary"]["http_vs_in_process"]
        rows.append([f"HTTP through Ray Serve ÷ in-process, same requests, {r['n_pairs']} interleaved pairs", ratio(r.get("median_pair_ratio")),
                     noise(r.get("pair_ratio_iqr_over_median")),
                     f"+{ms(r.get('median_difference_s'))} per request ({ms(serving['summary']['in_process']['median'])} → {ms(serving['summary']['http']['median'])})"])
    load = parts.get("load")
    if load and load["summary"].get("best"):
        best = load["summary"]["best"]
        base = load["summary"]["base_concurrency"]
        worst_noise = max((lvl["latency"].get("iqr_over_median") or 0) for lvl in load["summary"]["levels"] if lvl["latency"]["n"])
        rows.append([f"Throughput, best level ({best['concurrency']} client{'s' if best['concurrency'] != 1 else ''}) ÷ {base} client{'s' if base != 1 else ''}", ratio(best["throughput_vs_base"]),
                     f"latency {noise(worst_noise)}", f"{best['throughput_rps']:.2f} req/s"])
        p95 = load["summary"].get("p95_at_top_vs_base")
        if p95:
            top = next(lvl for lvl in load["summary"]["levels"] if lvl["concurrency"] == p95["concurrency"])
            rows.append([f"p95 latency at {p95['concurrency']} clients ÷ at {base}", ratio(p95["ratio"]),
                         f"errors {top['error_rate']:.0%}, 503s {top['rate_503']:.0%}", secs(top["p95_s"])])
    try:  # other owners' file formats: a change there must not break the page
        refiner = parts.get("refiner")
        if refiner and refiner.get("results"):
            res = refiner["results"]
            for (label, steps) in sorted({(r["resolution"], r["steps"]) for r in res}):
                group = sorted((r for r in res if r["resolution"] == label and r["steps"] == steps), key=lambda r: r["batch"])
                if len(group) >= 2:
                    noise_max = max(describe(r["samples_s"])["iqr_over_median"] or 0 for r in group)
                    rows.append([f"Refiner images/s, batch {group[-1]['batch']} ÷ batch {group[0]['batch']} ({label}, {steps} steps)",
                                 ratio(group[-1]["images_per_s"] / group[0]["images_per_s"]), noise(noise_max),
                                 f"{group[0]['images_per_s']:.2f} → {group[-1]['images_per_s']:.2f} images/s"])
                    break
        batch = parts.get("batch")
        if batch and batch.get("medians"):
            best = max((m for m in batch["medians"] if m["mode"] != "sequential"), key=lambda m: m["rows_per_s"], default=None)
            seq = next((m for m in batch["medians"] if m["mode"] == "sequential"), None)
            if best:
                rows.append([f"Batch job rows/s ÷ sequential loop (Ray Data, {best['actors']} actor(s), {batch.get('config', {}).get('rows')} rows, incl. start-up)",
                             ratio(best.get("speedup_vs_sequential")), _batch_noise(batch, best), f"{best['rows_per_s']:.2f} vs {seq['rows_per_s']:.2f} rows/s" if seq else ""])
                if seq and best.get("steady_rows_per_s") and seq.get("steady_rows_per_s"):
                    rows.append(["  the same, steady state (start-up left out)", ratio(best["steady_rows_per_s"] / seq["steady_rows_per_s"]), "",
                                 f"{best['steady_rows_per_s']:.2f} vs {seq['steady_rows_per_s']:.2f} rows/s"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError, StopIteration) as exc:
        rows.append([f"(refiner/batch figures unavailable: {type(exc).__name__})", "–", "–", ""])
    cold = parts.get("cold_start")
    if cold and cold["summary"]["first_200_s"]["n"]:
        c = cold["summary"]["first_200_s"]
        rows.append(["Cold start: spawn → first 200 (fresh Ray + serve_config.yaml)", "(absolute)", noise(c["iqr_over_median"]) if c["n"] > 1 else "n=1",
                     secs(c["median"])])
    return rows


def _batch_noise(batch: dict, entry: dict) -> str:
    values = [s["rows_per_s"] for s in batch.get("samples", []) if s["mode"] == entry["mode"] and s["actors"] == entry["actors"]]
    stats = describe(values)
    return noise(stats["iqr_over_median"]) if stats["n"] > 1 else "n=1"


def device_section(device: str, parts: dict[str, dict]) -> list[str]:
    lines: list[str] = []
    any_data = next(iter(parts.values()))
    info = any_data.get("machine", {})
    hw = info.get("gpu") or f"{info.get('cpu_count')} CPU cores"
    loads = sorted({tuple(d.get("machine", {}).get("load_average_at_start", [])[:1]) for d in parts.values() if d.get("machine")})
    quick = {p: d.get("config", {}).get("quick") for p, d in parts.items()}
    lines.append(f"## {device.upper()}: {hw}, {info.get('platform', '')}")
    lines.append("")
    load_text = ", ".join(f"{x[0]:.1f}" for x in loads if x)
    runs = ", ".join(f"{p} ({d.get('created', '?')}{', quick' if quick[p] else ''})" for p, d in parts.items())
    lines.append(f"Runs: {runs}. "
                 f"1-minute load average when each part started: {load_text or '?'} "
                 f"(on {info.get('cpu_count')} cores; above the core count, other jobs were competing).")
    lines.append("")
    lines.append("### Headline" + (" (ratios first: absolute times on shared CPU cores do not transfer)" if device == "cpu" else ""))
    lines.append("")
    lines += table(["measure", "ratio", "noise (IQR/median)", "absolute, this machine"], headline_rows(parts))
    lines.append("")

    stages = parts.get("stages")
    if stages:
        cfg = stages["config"]
        ref = cfg.get("refiner") or {}
        lines.append("### Stages")
        lines.append("")
        lines.append(f"{cfg.get('runs')} timed runs per case after a warm-up; photos {', '.join(p[0] for p in cfg.get('pairs', []))} padded to each size; "
                     f"torch threads {cfg.get('torch_threads')}; refiner: {ref.get('kind', 'none')} random model, {ref.get('steps')} steps requested "
                     f"({ref.get('steps_run')} run at strength {ref.get('strength')}), working resolution {ref.get('resolution')}.")
        lines.append("")
        rows = []
        for size, entry in stages["summary"]["per_size"].items():
            for stage, s in entry["stages"].items():
                c = entry.get("cpu", {}).get(stage) or {}
                rows.append([size, stage, s["n"], ms(s["median"]), ms(s["p95"]), noise(s["iqr_over_median"]), f"{ms(s['min'])} – {ms(s['max'])}",
                             ms(c.get("median")), noise(c.get("iqr_over_median"))])
            for stage, counts in entry.get("errors", {}).items():
                rows.append([size, stage, "rejected", str(counts), "", "", "", "", ""])
        lines += table(["size", "stage", "n", "wall median", "wall p95", "wall IQR/median", "wall min – max", "CPU median", "CPU IQR/median"], rows)
        lines.append("")
        lines.append("CPU time is the benchmark process's user+sys time over the call (all its threads): it leaves out the time spent "
                     "waiting for a core while other jobs ran, so on a shared machine it is the steadier measure of the work done.")
        lines.append("")
        lines.append(f"![stages](stages_{device}.png)")
        lines.append("")

    serving = parts.get("serving")
    if serving:
        s = serving["summary"]
        r = s["http_vs_in_process"]
        cfg = serving["config"]
        lines.append("### Serving overhead (in-process vs HTTP through Ray Serve)")
        lines.append("")
        lines.append(f"{r['n_pairs']} interleaved pairs ({cfg.get('input_size')} photos, order flipped every pair), after a warm-up. "
                     f"In-process: {cfg.get('in_process')}. HTTP: {cfg.get('http')}.")
        lines.append("")
        rows = [["in-process", s["in_process"]["n"], ms(s["in_process"]["median"]), ms(s["in_process"]["p95"]), noise(s["in_process"]["iqr_over_median"])],
                ["HTTP", s["http"]["n"], ms(s["http"]["median"]), ms(s["http"]["p95"]), noise(s["http"]["iqr_over_median"])]]
        if s.get("http_server_total"):
            rows.append(["  of which inside the ingress (Server-Timing total)", s["http_server_total"]["n"], ms(s["http_server_total"]["median"]),
                         ms(s["http_server_total"]["p95"]), noise(s["http_server_total"]["iqr_over_median"])])
            rows.append(["  of which proxy + client + transfer", s["proxy_and_client_s"]["n"], ms(s["proxy_and_client_s"]["median"]),
                         ms(s["proxy_and_client_s"]["p95"]), noise(s["proxy_and_client_s"]["iqr_over_median"])])
        lines += table(["path", "n", "median", "p95", "IQR/median"], rows)
        lines.append("")
        extra = [f"{k.split('_')[0]} stage via its deployment handle ÷ the same call in-process {ratio(v.get('median_pair_ratio'))} (noise {noise(v.get('pair_ratio_iqr_over_median'))})"
                 for k, v in s.items() if k.endswith("_handle_vs_in_process")]
        lines.append(f"HTTP ÷ in-process: median of the per-pair ratios {ratio(r.get('median_pair_ratio'))} (range {ratio(r.get('pair_ratio_min'))} – "
                     f"{ratio(r.get('pair_ratio_max'))}); ratio of the medians {ratio(r['ratio_of_medians'])}. " + "; ".join(extra) + ".")
        lines.append("")
        lines.append(f"![serving](serving_{device}.png)")
        lines.append("")

    load = parts.get("load")
    if load:
        cfg = load["config"]
        lines.append("### Load (concurrency sweep)")
        lines.append("")
        lines.append(f"Client: {cfg.get('client')}. Each level sends for {cfg.get('window_s'):g} s, then in-flight requests finish "
                     f"(up to {cfg.get('drain_timeout_s'):g} s); throughput = 200s ÷ time to the last answer. The load generator shares the cores with the service.")
        lines.append("")
        rows = [[lvl["concurrency"], f"{lvl['ok']}/{lvl['requests']}", f"{lvl['throughput_rps']:.2f}" if lvl["throughput_rps"] else "–",
                 secs(lvl["p50_s"]), secs(lvl["p95_s"]), secs(lvl["p99_s"]), noise(lvl["error_rate"]), noise(lvl["rate_503"])]
                for lvl in load["summary"]["levels"]]
        lines += table(["clients", "200/sent", "req/s", "p50", "p95", "p99", "errors", "503"], rows)
        lines.append("")
        lines.append(f"![load](load_{device}.png)")
        lines.append("")

    cold = parts.get("cold_start")
    if cold:
        s = cold["summary"]
        lines.append("### Cold start")
        lines.append("")
        lines.append(f"{cold['config'].get('measured')}; {s['first_200_s']['n']} start(s).")
        lines.append("")
        rows = [[name, s[name]["n"], secs(s[name]["median"]), f"{secs(s[name]['min'])} – {secs(s[name]['max'])}"]
                for name in ("ray_ready_s", "deployed_s", "first_200_s", "first_200_request_s", "graceful_stop_s") if s.get(name) and s[name]["n"]]
        labels = {"ray_ready_s": "Ray started (since spawn)", "deployed_s": "all deployments RUNNING", "first_200_s": "first 200",
                  "first_200_request_s": "the first 200's own request (sent while deploying; Serve held it)", "graceful_stop_s": "graceful stop (Serve + Ray shutdown)"}
        lines += table(["milestone", "n", "median", "min – max"], [[labels[r[0]], *r[1:]] for r in rows])
        lines.append("")

    for part, title, render in (("refiner", "Refiner (benchmarks/bench_refiner.py)", _refiner_table),
                                ("batch", "Batch re-render (benchmarks/bench_batch.py)", _batch_table)):
        newest = parts.get(part)
        if not newest:
            continue
        lines += [f"### {title}", ""]
        for data in [newest, *newest.get("_older", [])]:
            try:
                lines += render(data, newest=data is newest)
            except (KeyError, TypeError, ValueError) as exc:
                lines += [f"`{data.get('_source')}`: could not render ({type(exc).__name__}: {exc}).", ""]
        lines += [f"![{part}]({part}_{device}.png)", ""]
    return lines


def _which(data: dict, newest: bool) -> str:
    kind = "this suite's run" if data.get("_source", "").endswith(".suite.json") else "the program owner's recorded run"
    return f"`{data.get('_source')}` ({kind}, {data.get('created', '?')}{', quick' if data.get('config', {}).get('quick') else ''}"\
           f"{'; used in the headline and the plot' if newest else ''})"


def _refiner_table(data: dict, *, newest: bool) -> list[str]:
    cfg = data.get("config", {})
    lines = [f"{_which(data, newest)}: model {cfg.get('model')}, device {cfg.get('device')}, torch threads {data.get('machine', {}).get('torch_threads')}, "
             f"{cfg.get('repeats')} timed calls per configuration after {cfg.get('warmup_calls')} warm-up.", ""]
    rows = [[r["resolution"], r["steps"], r.get("steps_run"), r["batch"], ms(r["median_s_per_image"]), f"{r['images_per_s']:.2f}",
             noise(describe(r["samples_s"])["iqr_over_median"])] for r in data.get("results", [])]
    lines += table(["resolution", "steps", "run", "batch", "s/image", "images/s", "IQR/median"], rows)
    if data.get("cuda_memory"):
        m = data["cuda_memory"]
        lines += ["", f"CUDA memory over {m.get('repeats')} repeated batches: allocated growth {m.get('allocated_growth_mib')} MiB, peak growth {m.get('peak_growth_mib')} MiB."]
    return lines + [""]


def _batch_table(data: dict, *, newest: bool) -> list[str]:
    cfg = data.get("config", {})
    lines = [f"{_which(data, newest)}: {cfg.get('rows')} rows, {cfg.get('repeats')} repeat(s), batch size {cfg.get('batch_size')}. {cfg.get('notes', '')}", ""]
    rows = [[m["mode"], m["actors"], secs(m["wall_s"]), f"{m['rows_per_s']:.3f}", f"{(m.get('steady_rows_per_s') or 0):.3f}", ratio(m.get("speedup_vs_sequential")),
             _batch_noise(data, m)] for m in data.get("medians", [])]
    lines += table(["mode", "actors", "wall", "rows/s", "steady rows/s", "÷ sequential", "IQR/median"], rows)
    return lines + [""]


def write_summary(results: dict[str, dict[str, dict]], out: Path, *, suite: dict | None = None) -> Path:
    lines = ["# Benchmark results", "",
             "Written by `benchmarks/report.py` from the JSON files next to this page (each holds the machine, versions, "
             "config and every raw sample). Re-run with `pexir-tryon bench [--quick]` or `python benchmarks/run_all.py`.", "",
             "How to read it: every number is a median over several runs; *noise* is the interquartile range divided by the median "
             "(0% = perfectly repeatable). A ratio was measured within one run from interleaved pairs, so a busy spell on a shared "
             "machine hits both sides of it; that is why ratios lead on CPU machines.", ""]
    if suite:
        parts = ", ".join(f"{p['part']} {p['seconds']:.0f} s{'' if p['rc'] == 0 else ' (FAILED)'}" for p in suite.get("parts", []))
        cpu = suite.get("cpu_seconds")
        loads = suite.get("load_average_at_start") or []
        lines += [f"Last whole-suite run: {'quick' if suite.get('quick') else 'full'}, device {suite.get('device')}, {suite.get('total_seconds', 0):.0f} s wall "
                  f"({parts})" + (f"; it used {cpu:.0f} CPU-seconds on {suite.get('cpu_count')} cores" if cpu else "")
                  + (f", with a 1-minute load average of {loads[0]:.1f} at its start" if loads else "") + ".", ""]
    if not results:
        lines.append("No results yet.")
    for device, parts_data in results.items():
        try:
            lines += device_section(device, parts_data)
        except Exception as exc:  # noqa: BLE001 - an unexpected file layout must not lose the page
            lines += [f"## {device.upper()}", "", f"Could not render this section ({type(exc).__name__}: {exc}); see the JSON files.", ""]
    path = out / "SUMMARY.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = load_results(args.out)
    suite = None
    for device in DEVICES:
        path = args.out / f"suite_{device}.json"
        if path.is_file():
            suite = json.loads(path.read_text())
    for path in make_plots(results, args.out):
        print(f"wrote {path}")
    print(f"wrote {write_summary(results, args.out, suite=suite)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
