"""Where a profiled step leaves the GPU idle: the gaps on its busiest stream, read from torch.profiler's Chrome trace.

A kernel sum says how long the GPU computed; the step's wall time minus that is time the compute stream sat idle.
Each gap ends with a kernel (or copy) that some host call launched. If the launch came after the stream went idle,
the host was late: the gap is charged to the operators that were running on the launching thread then (innermost
last). If it came before, the stream was waiting on something else (another stream's copy, an event).

    python3 benchmarks/trace_gaps.py trace.json.gz     # the table for a saved trace (and, where the profile kept
                                                       # Python stacks, host time by function)
"""

import gzip
import json
import sys
from bisect import bisect_right
from collections import defaultdict
from pathlib import Path

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")


def _stacks_at(ops: list[dict], times: list[float], depth: int) -> dict:
    """For each of `times`, the names of the operators of one thread (`ops`, nested as a thread's are) running then,
    outermost first, the innermost `depth`: one sweep over both in time order."""
    ops = sorted(ops, key=lambda op: (op["ts"], -op.get("dur", 0)))
    stacks, stack, index = {}, [], 0

    def ended(op, time):
        return op["ts"] + op.get("dur", 0) < time

    for time in sorted(times):
        while index < len(ops) and ops[index]["ts"] <= time:
            while stack and ended(stack[-1], ops[index]["ts"]):
                stack.pop()
            stack.append(ops[index])
            index += 1
        while stack and ended(stack[-1], time):
            stack.pop()
        names = [op["name"] for op in stack]
        if len(names) > depth + 1:  # the outermost (where in the step) and the innermost (what launched)
            names = [names[0], "...", *names[-depth:]]
        stacks[time] = " > ".join(names) if names else "(no operator)"
    return stacks


def _ended_within(others: list[dict], ends: list[float], start: float, stop: float) -> str:
    """The name of the last work of another stream to end in the gap from `start` to `stop` (what the stream waited
    for, most likely), from `others` sorted by their `ends`."""
    index = bisect_right(ends, stop + 2.0) - 1  # the profiler's clocks of two streams agree to a microsecond or two
    if index >= 0 and ends[index] >= start:
        return f"stream {others[index]['args'].get('stream')}'s {others[index]['name'][:50]}"
    return "nothing seen"


def idle_gaps(trace: dict, min_gap_us: float = 10.0, depth: int = 2, top: int = 15) -> dict:
    """The busiest stream's busy and idle time (ms) over the trace's span of device work, its idle split into host
    late and waiting, the late gaps summed by the operator stack that launched the work ending them, and the
    longest gaps."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    device = [e for e in events if e.get("cat") in DEVICE_CATEGORIES]
    if not device:
        return {"error": "no device events in the trace"}
    per_stream: dict = defaultdict(list)
    for event in device:
        per_stream[event.get("args", {}).get("stream")].append(event)
    stream, work = max(per_stream.items(), key=lambda item: sum(e.get("dur", 0) for e in item[1]))
    work.sort(key=lambda e: e["ts"])
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in LAUNCH_CATEGORIES and "correlation" in e.get("args", {})}
    others = sorted((e for e in device if e.get("args", {}).get("stream") != stream),
                    key=lambda e: e["ts"] + e.get("dur", 0))
    ends = [e["ts"] + e.get("dur", 0) for e in others]
    busy = idle = late = 0.0
    gaps, late_launches, waited = [], [], defaultdict(float)
    end = work[0]["ts"]
    for event in work:
        gap = event["ts"] - end
        if gap >= min_gap_us:
            idle += gap
            launch = launches.get(event.get("args", {}).get("correlation"))
            if launch is not None and launch["ts"] > end:  # the host launched it after the stream went idle
                late += gap
                late_launches.append((gap, launch.get("tid"), launch["ts"], event["name"][:70]))
            else:
                gaps.append((gap, f"waiting on {_ended_within(others, ends, end, event['ts'])}", event["name"][:70]))
                waited[_ended_within(others, ends, end, event["ts"])] += gap
        busy += max(0.0, event["ts"] + event.get("dur", 0) - max(end, event["ts"]))
        end = max(end, event["ts"] + event.get("dur", 0))
    ops_by_thread: dict = defaultdict(list)
    for event in events:
        if event.get("cat") == "cpu_op":
            ops_by_thread[event.get("tid")].append(event)
    times_by_thread: dict = defaultdict(list)
    for _, tid, time, _ in late_launches:
        times_by_thread[tid].append(time)
    stacks = {tid: _stacks_at(ops_by_thread.get(tid, []), times, depth) for tid, times in times_by_thread.items()}
    by_stack: dict = defaultdict(lambda: [0, 0.0])
    for gap, tid, time, name in late_launches:
        stack = stacks[tid][time]
        by_stack[stack][0] += 1
        by_stack[stack][1] += gap
        gaps.append((gap, stack, name))
    span = end - work[0]["ts"]
    gaps.sort(key=lambda g: -g[0])
    return {
        "stream": stream, "span_ms": round(span / 1e3, 2), "busy_ms": round(busy / 1e3, 2),
        "idle_ms": round(idle / 1e3, 2), "host_late_ms": round(late / 1e3, 2),
        "waiting_ms": round((idle - late) / 1e3, 2),
        "waiting_on": sorted(((name, round(us / 1e3, 2)) for name, us in waited.items()), key=lambda w: -w[1])[:top],
        "late_by_stack": sorted(((stack, n, round(us / 1e3, 2)) for stack, (n, us) in by_stack.items()),
                                key=lambda s: -s[2])[:top],
        "longest": [(round(us / 1e3, 2), stack, name) for us, stack, name in gaps[:top]],
    }


def self_times(trace: dict, categories=("python_function",), top: int = 40) -> list:
    """Host time by function (a profile taken with Python stacks): each event's duration less its direct children's
    on its thread, summed by name for events of `categories`, the largest `top` as (name, count, ms)."""
    by_thread: dict = defaultdict(list)
    for event in trace.get("traceEvents", []):
        if event.get("ph") == "X" and event.get("cat") in (*categories, "cpu_op", "cuda_runtime", "cuda_driver"):
            by_thread[event.get("tid")].append(event)
    totals: dict = defaultdict(lambda: [0, 0.0])
    for events in by_thread.values():
        events.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        stack: list = []  # [event, time taken by its children so far]

        def close(entry):
            event, children = entry
            if event.get("cat") in categories:
                totals[event["name"]][0] += 1
                totals[event["name"]][1] += event.get("dur", 0) - children

        for event in events:
            while stack and stack[-1][0]["ts"] + stack[-1][0].get("dur", 0) <= event["ts"]:
                close(stack.pop())
            if stack:
                stack[-1][1] += event.get("dur", 0)
            stack.append([event, 0.0])
        while stack:
            close(stack.pop())
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])[:top]
    return [(name, count, round(us / 1e3, 2)) for name, (count, us) in ranked]


def load_trace(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as file:
        return json.load(file)


def print_gaps(gaps: dict) -> None:
    if "error" in gaps:
        print(f"  idle: {gaps['error']}")
        return
    print(f"  stream {gaps['stream']}: {gaps['span_ms']} ms from its first to its last work, busy {gaps['busy_ms']}, "
          f"idle {gaps['idle_ms']} (host late {gaps['host_late_ms']}, waiting {gaps['waiting_ms']})")
    for name, ms in gaps["waiting_on"]:
        print(f"  wait {ms:8.2f} ms        on {name}")
    for stack, count, ms in gaps["late_by_stack"]:
        print(f"  late {ms:8.2f} ms {count:5d}x  {stack[:150]}")
    for ms, stack, name in gaps["longest"]:
        print(f"  gap  {ms:8.2f} ms before {name}  <- {stack[:110]}")


def print_self_times(times: list) -> None:
    for name, count, ms in times:
        print(f"  host {ms:8.2f} ms {count:6d}x  {name[:120]}")


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(argument)
        trace = load_trace(Path(argument))
        print_gaps(idle_gaps(trace))
        print_self_times(self_times(trace))
