"""The profile's idle-time reading (benchmarks/trace_gaps.py): on a trace with a known timeline, the compute stream's
gaps are found, split into host-late and waiting, and charged to the operator stack that launched the work ending
them. The GPU benchmark prints it for each profiled step (benchmarks/gpu_train.py --profile)."""

import gzip
import json
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]


def _op(name, ts, dur, tid=1):
    return {"ph": "X", "cat": "cpu_op", "name": name, "ts": ts, "dur": dur, "tid": tid}


def _launch(ts, correlation, tid=1):
    return {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": ts, "dur": 2, "tid": tid,
            "args": {"correlation": correlation}}


def _kernel(name, ts, dur, correlation, stream=7):
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur,
            "args": {"stream": stream, "correlation": correlation}}


def _trace():
    """Stream 7 computes 0-100, 100-200 (back to back), idles 200-250 because the host launched the next kernel
    only at 240 inside `Step > aten::linear > aten::mm > cublasGemm`, runs 250-300, then idles 300-330 waiting (its
    kernel was launched at 150), and runs 330-400. Stream 9 copies 0-100 and 230-330, the second the one stream 7
    waited for: less work than stream 7's 320."""
    return {"traceEvents": [
        _op("Step", 0, 400), _op("aten::linear", 225, 35), _op("aten::mm", 230, 20), _op("cublasGemm", 235, 10),
        _op("aten::add", 140, 20),
        _launch(1, 1), _launch(2, 2), _launch(240, 3), _launch(150, 4),
        _kernel("first", 0, 100, 1), _kernel("second", 100, 100, 2), _kernel("third", 250, 50, 3),
        _kernel("fourth", 330, 70, 4),
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoH", "ts": 0, "dur": 100, "args": {"stream": 9}},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD", "ts": 230, "dur": 100, "args": {"stream": 9}},
        {"ph": "i", "cat": "kernel", "name": "an instant", "ts": 5},
    ]}


def test_gaps_on_the_busiest_stream_are_charged_to_the_late_launch_s_operators(tmp_path):
    trace_gaps = load_script(ROOT / "benchmarks" / "trace_gaps.py")
    gaps = trace_gaps.idle_gaps(_trace())
    assert gaps["stream"] == 7  # 320 us of work against the copy stream's 200
    assert (gaps["span_ms"], gaps["busy_ms"], gaps["idle_ms"]) == (0.4, 0.32, 0.08)
    assert (gaps["host_late_ms"], gaps["waiting_ms"]) == (0.05, 0.03)
    assert gaps["late_by_stack"] == [("Step > ... > aten::mm > cublasGemm", 1, 0.05)]  # where, and what launched
    assert [(ms, name) for ms, _, name in gaps["longest"]] == [(0.05, "third"), (0.03, "fourth")]
    assert gaps["waiting_on"] == [("stream 9's Memcpy HtoD", 0.03)]  # it ended at 330, when the kernel began
    assert gaps["longest"][1][1] == "waiting on stream 9's Memcpy HtoD"
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as file:
        json.dump(_trace(), file)
    assert trace_gaps.idle_gaps(trace_gaps.load_trace(path)) == gaps
    assert "error" in trace_gaps.idle_gaps({"traceEvents": [_op("Step", 0, 5)]})


def test_host_time_by_function_is_each_call_less_its_children():
    """With Python stacks in the profile, a function's own host time is its span less what it called (Python or
    operators), summed over its calls."""
    trace_gaps = load_script(ROOT / "benchmarks" / "trace_gaps.py")

    def py(name, ts, dur, tid=1):
        return {"ph": "X", "cat": "python_function", "name": name, "ts": ts, "dur": dur, "tid": tid}

    ms = 1000  # the trace's microseconds
    trace = {"traceEvents": [
        py("step", 0, 100 * ms), py("layer", 10 * ms, 50 * ms), _op("aten::mm", 20 * ms, 30 * ms),
        py("layer", 70 * ms, 20 * ms), py("hook", 75 * ms, 5 * ms),
        py("step", 0, 40 * ms, tid=2), _launch(5 * ms, 9, tid=2),
    ]}
    times = {name: (count, ms) for name, count, ms in trace_gaps.self_times(trace)}
    # each step less its layers (and the second its launch: 2 us), each layer less its mm or its hook
    assert times == {"step": (2, round(100 - 50 - 20 + 40 - 0.002, 2)), "layer": (2, 50 - 30 + 20 - 5), "hook": (1, 5)}
