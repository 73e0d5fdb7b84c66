"""benchmarks/gpu_multi.py: the token counting and scaling arithmetic on hand-made numbers, and (slow) its CPU smoke
mode end to end: two gloo processes, a tiny model, the same timed window and counting as on GPUs."""

import json
import sys
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    return load_script(ROOT / "benchmarks" / "gpu_multi.py")


def test_the_rate_sums_every_ranks_tokens_rather_than_multiplying_rank_0s(bench):
    # Packed rows differ in length, so ranks train different token counts in the same steps.
    rate = bench.window_rate([9_000, 7_000], [2.0, 2.0])
    assert rate == 8_000
    assert rate != 9_000 * 2 / 2.0  # the old figure: rank 0's count times the number of processes


def test_the_rate_is_taken_over_the_slowest_ranks_window(bench):
    assert bench.window_rate([4_000, 4_000], [2.0, 2.5]) == 8_000 / 2.5


def test_ranks_as_fast_as_the_single_gpu_scale_exactly_linearly_and_never_above(bench):
    one = bench.window_rate([3_000], [1.5])  # 2,000 tok/s
    for processes in (2, 3, 8):
        same = bench.window_rate([3_000] * processes, [1.5] * processes)
        assert bench.scaling_efficiency(same, processes, one) == pytest.approx(1.0)
        # each rank at the 1-GPU rate, but windows that end at different times: the slowest one counts
        windows = [1.5 + 0.1 * i for i in range(processes)]
        uneven = bench.window_rate([2_000 * w for w in windows], windows)
        assert bench.scaling_efficiency(uneven, processes, one) < 1.0


def test_efficiency_is_not_clamped_so_a_flawed_measurement_shows(bench):
    assert bench.scaling_efficiency(8_920, 2, 3_445) == pytest.approx(1.2946, abs=1e-4)


def test_the_loss_compared_is_the_first_step_that_reached_the_token_count(bench):
    steps = [{"step": 1, "tokens": 16_000, "loss": 6.0}, {"step": 2, "tokens": 32_500, "loss": 5.5},
             {"step": 3, "tokens": 48_000, "loss": 5.1}]
    assert bench.loss_after(steps, 32_000)["step"] == 2
    assert bench.loss_after(steps, 16_000)["loss"] == 6.0
    assert bench.loss_after(steps, 60_000) is None


def test_a_failed_leg_says_whether_it_ran_out_of_memory_loading_or_training(bench):
    assert bench.failure("rank 0 loaded: 4.1 GB\ntorch.OutOfMemoryError: CUDA out of memory.") == \
        "out of memory while training"
    assert bench.failure("torch.OutOfMemoryError: CUDA out of memory.") == "out of memory while loading"
    assert bench.failure("ValueError: bad shape\n") == "ValueError: bad shape"


def test_the_default_cap_lies_between_loading_and_training_memory(bench):
    assert bench.capped_gb(4.4, 5.4) == pytest.approx(4.9)
    assert bench.capped_gb(4.4, 4.45) is None  # nothing to tell apart


@pytest.mark.slow
def test_cpu_smoke_runs_one_and_two_gloo_processes_and_counts_both_ranks(tmp_path):
    import subprocess

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_multi.py"), "--cpu", "--out", str(out),
                           "--warmup", "1", "--steps", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    one, ddp = json.loads((out / "one.json").read_text()), json.loads((out / "ddp2.json").read_text())
    assert one["processes"] == 1 and ddp["processes"] == 2
    assert len(ddp["window_tokens"]) == 2 and all(t > 0 for t in ddp["window_tokens"])
    assert ddp["tokens_per_s"] == pytest.approx(sum(ddp["window_tokens"]) / max(ddp["window_seconds"]))
    # every step's count is all ranks' together: two processes train about twice the tokens a step of one does
    per_step = [s["tokens"] for s in ddp["step_records"]]
    assert per_step == sorted(per_step) and len(per_step) == 3
    assert 1.5 < per_step[-1] / one["step_records"][-1]["tokens"] < 2.5
    assert all(s["loss"] is not None for s in ddp["step_records"])
    table = (out / "table.txt").read_text()
    assert "DDP, 2 processes" in table and "needs CUDA GPUs" in table
    assert table == done.stdout
