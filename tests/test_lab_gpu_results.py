"""normlib.lab.gpu_results: the recorded CUDA benchmark files, for the lessons' GPU statements."""

from normlib.lab import bench, gpu_results


def _report(device_type, rows):
    return {"device": f"fake {device_type}", "device_type": device_type, "torch": "2.13.0", "date": "2026-01-01",
            "results": rows}


def _row(op, shape, dtype="float32", impl="torch", mode="forward+backward", ms=1.0):
    return {"op": op, "impl": impl, "mode": mode, "dtype": dtype, "shape": list(shape), "median_ms": ms,
            "GBps": 1.0 / ms}


def test_cuda_reports_keeps_only_cuda_files(monkeypatch):
    fake = {"cpu-x": _report("cpu", []), "cuda-h": _report("cuda", [])}
    monkeypatch.setattr(bench, "recorded", lambda: fake)
    assert list(gpu_results.cuda_reports()) == ["cuda-h"]
    monkeypatch.setattr(bench, "recorded", lambda: {"cpu-x": _report("cpu", [])})
    assert gpu_results.cuda_reports() == {}


def test_series_selects_one_case_ordered_by_size():
    report = _report("cuda", [_row("layer_norm", (4096, 2048), ms=2.0), _row("layer_norm", (4096, 1024)),
                              _row("rms_norm", (4096, 1024)), _row("layer_norm", (4096, 1024), dtype="bfloat16"),
                              _row("layer_norm", (4096, 1024), impl="normlib"),
                              _row("layer_norm", (4096, 1024), mode="forward")])
    rows = gpu_results.series(report, "layer_norm")
    assert [r["shape"] for r in rows] == [(4096, 1024), (4096, 2048)]
    assert [r["numel"] for r in rows] == [4096 * 1024, 4096 * 2048] and rows[1]["median_ms"] == 2.0
    assert len(gpu_results.series(report, "layer_norm", dtype="bfloat16")) == 1
    assert gpu_results.series(report, "group_norm") == []
    assert gpu_results.describe(report) == "fake cuda, torch 2.13.0, 2026-01-01"


def test_shipped_files_are_read():
    # whatever is shipped: every CUDA report found is a dict with results
    for report in gpu_results.cuda_reports().values():
        assert isinstance(report.get("results"), list)
