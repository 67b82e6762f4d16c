"""normlib.lab.ddp.step_by_step: SyncBatchNorm over processes retraces one process on the whole batch."""

import pytest
import torch

from normlib.lab.ddp import STEP_BY_STEP_VARIANTS, step_by_step


def test_sync_batchnorm_retraces_one_process_and_per_process_batchnorm_does_not():
    steps = 3
    runs = step_by_step(world_size=2, per_rank_batch=2, steps=steps)
    assert tuple(runs) == STEP_BY_STEP_VARIANTS
    for states in runs.values():
        assert len(states) == steps
        assert set(states[0]) == {"parameters", "running means", "running variances"}
        assert all(v.dtype == torch.float64 for v in states[0].values())
    single = runs["one process"]
    # the runs move: the parameters change from step to step
    assert (single[-1]["parameters"] - single[0]["parameters"]).abs().max() > 1e-3
    for sync, one in zip(runs["SyncBatchNorm"], single, strict=True):
        for quantity in one:
            torch.testing.assert_close(sync[quantity], one[quantity], rtol=0, atol=1e-10)
    local = runs["per-process BatchNorm"][-1]
    for quantity in single[-1]:
        assert (local[quantity] - single[-1][quantity]).abs().max() > 1e-3


def test_step_by_step_refuses_more_steps_than_the_data_holds():
    with pytest.raises(ValueError, match="training digits"):
        step_by_step(world_size=2, per_rank_batch=2, steps=1000)


def test_step_times_times_both_variants_on_every_step():
    from normlib.lab.ddp import STEP_TIME_VARIANTS, step_times

    timed = step_times(world_size=2, per_rank_batch=4, steps=3)
    assert tuple(timed["step_s"]) == STEP_TIME_VARIANTS
    assert all(len(t) == 3 and min(t) > 0 for t in timed["step_s"].values())
    assert timed["sync_layers"] == 3  # LeNet: two BatchNorm2d and one BatchNorm1d
    assert len(timed["all_gather_s"]) == 3 and min(timed["all_gather_s"]) > 0
    with pytest.raises(ValueError, match="steps"):
        step_times(steps=0)
