"""Smoke tests of the benchmark suite's building blocks (no timing assertions: only that the samples
and summaries are well formed). The suite itself is run with `pexir-tryon bench --quick`."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402

TINY = {"tiny": (160, 120)}


@pytest.fixture(scope="module")
def stage_samples(detector, warper, settings):
    import bench_stages

    cases = benchlib.bench_inputs(TINY, pairs=benchlib.PAIRS[:1])
    bare = bench_stages.BareMediaPipe(settings)
    try:
        samples = bench_stages.measure_stages(cases, runs=2, detector=detector, warper=warper, refiner=None, bare=bare,
                                              warmup=False, show_progress=False)
    finally:
        bare.close()
    return cases, samples


def test_inputs_are_padded_to_the_exact_portrait_size():
    cases = benchlib.bench_inputs({"a": (64, 48), "b": (96, 72)})
    assert {c["size"] for c in cases} == {"a", "b"}
    for case in cases:
        height, width = (64, 48) if case["size"] == "a" else (96, 72)
        assert case["person"].shape == (height, width, 3)
        assert case["person"].dtype.name == "uint8"
        assert case["person"].flags["C_CONTIGUOUS"]


def test_stage_benchmark_returns_well_formed_samples(stage_samples):
    cases, samples = stage_samples
    assert samples, "no samples"
    for sample in samples:
        assert set(sample) >= {"run", "size", "photo", "garment", "stage"}
        assert sample["stage"] in ("geometry", "mediapipe_bare", "mediapipe_pose", "warp", "refine")
        assert ("seconds" in sample) != ("error" in sample)
        if "seconds" in sample:
            assert isinstance(sample["seconds"], float) and sample["seconds"] > 0 and math.isfinite(sample["seconds"])
            assert isinstance(sample["cpu_seconds"], float) and sample["cpu_seconds"] >= 0
        else:
            assert isinstance(sample["error"], str) and sample["error"]
    # every run measured geometry and both bare MediaPipe calls on every case; no refiner was given
    for run in (0, 1):
        stages = [s["stage"] for s in samples if s["run"] == run]
        for stage in ("geometry", "mediapipe_bare", "mediapipe_pose"):
            assert stages.count(stage) == len(cases)
        assert "refine" not in stages
        assert stages.count("warp") == len(cases)  # the photo is a person a garment fits on, even this small
    assert {s["size"] for s in samples} == {"tiny"}


def test_stage_summary_has_medians_and_the_overhead_ratio(stage_samples):
    import bench_stages

    _, samples = stage_samples
    summary = bench_stages.summarize(samples)
    entry = summary["per_size"]["tiny"]
    geometry = entry["stages"]["geometry"]
    assert geometry["n"] == 2 and geometry["median"] > 0 and geometry["p95"] >= geometry["median"] >= geometry["min"]
    for clock in ("wall", "cpu"):
        ratio = entry["geometry_vs_mediapipe_bare"][clock]
        assert ratio["n_pairs"] == 2 and ratio["ratio_of_medians"] > 0 and ratio["ratio_of_minimums"] > 0
    assert entry["cpu"]["geometry"]["n"] == 2 and entry["cpu"]["geometry"]["median"] > 0


def test_statistics_helpers():
    stats = benchlib.describe([1.0, 2.0, 3.0, 4.0])
    assert stats["n"] == 4 and stats["median"] == 2.5 and stats["min"] == 1.0 and stats["max"] == 4.0
    assert stats["iqr_over_median"] == pytest.approx(1.5 / 2.5)
    assert benchlib.describe([])["median"] is None
    ratio = benchlib.paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert ratio["ratio_of_medians"] == 2.0 and ratio["median_pair_ratio"] == 2.0 and ratio["pair_ratio_iqr_over_median"] == 0.0


def test_load_level_summary_counts_errors_and_503s():
    from loadgen import summarize_level

    level = {"window_s": 1.0, "elapsed_s": 2.0, "abandoned": 0, "samples": [
        {"client": 0, "seq": 0, "start_s": 0.0, "end_s": 0.5, "latency_s": 0.5, "status": 200},
        {"client": 0, "seq": 1, "start_s": 0.5, "end_s": 1.0, "latency_s": 0.5, "status": 200},
        {"client": 1, "seq": 0, "start_s": 0.0, "end_s": 0.1, "latency_s": 0.1, "status": 503, "error_code": "overloaded"},
        {"client": 1, "seq": 1, "start_s": 0.2, "end_s": 0.3, "latency_s": 0.1, "status": None, "exception": "ConnectError"},
    ]}
    summary = summarize_level(level, 2)
    assert summary["requests"] == 4 and summary["ok"] == 2
    assert summary["error_rate"] == 0.5 and summary["rate_503"] == 0.25
    assert summary["throughput_rps"] == pytest.approx(2.0)
    assert summary["p50_s"] == pytest.approx(0.5)


def test_load_generator_refuses_non_loopback_targets():
    import asyncio

    from loadgen import run_level

    with pytest.raises(ValueError):
        asyncio.run(run_level("http://192.0.2.1:8000/v1/tryon", lambda i, s: {}, concurrency=1, duration_s=0.1))


def test_suite_parts_and_commands(tmp_path):
    import run_all

    assert run_all.parse_only(None) == list(run_all.PARTS)
    assert run_all.parse_only("load, stages") == ["stages", "load"]
    with pytest.raises(SystemExit):
        run_all.parse_only("stages,nope")
    plan = run_all.commands(["stages", "serving", "load", "batch"], quick=True, device="cpu", threads=1, out=tmp_path)
    labels = [label for label, _ in plan]
    assert labels == ["stages", "serving+load", "batch"]
    assert all(cmd[0] == sys.executable and "--quick" in cmd for _, cmd in plan)


def test_cli_bench_without_the_benchmarks_folder_says_so(monkeypatch, tmp_path, capsys):
    from pexir_tryon import cli

    real_is_file = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda self: False if self.name == "run_all.py" else real_is_file(self))
    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(["bench", "--quick"])
    assert cli.cmd_bench(args) == cli.EXIT_FAILED
    assert "the benchmark programs are not installed" in capsys.readouterr().err


def test_report_uses_the_newer_of_the_owners_file_and_the_suites_copy(tmp_path):
    import json

    import report

    (tmp_path / "batch_cpu.json").write_text(json.dumps({"created": "2026-01-02T00:00:00Z", "medians": []}))
    (tmp_path / "batch_cpu.suite.json").write_text(json.dumps({"created": "2026-01-01T00:00:00Z", "medians": []}))
    (tmp_path / "refiner_cpu.json").write_text(json.dumps({"created": "2026-01-01T00:00:00Z", "results": []}))
    (tmp_path / "refiner_cpu.suite.json").write_text(json.dumps({"created": "2026-01-03T00:00:00Z", "results": []}))
    found = report.load_results(tmp_path)["cpu"]
    assert found["batch"]["_source"] == "batch_cpu.json"
    assert found["refiner"]["_source"] == "refiner_cpu.suite.json"
    summary = report.write_summary(report.load_results(tmp_path), tmp_path)
    assert summary.read_text().startswith("# Benchmark results")
