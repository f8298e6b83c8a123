"""The EMA teacher: its decay warm-up and what it averages."""
import pytest
import torch

from refmatch.recipes.ema import ema_decay_at, ema_update
from refmatch.recipes.unet import UNet


def test_the_decay_warms_up_to_the_configured_one():
    assert [ema_decay_at(step, 0.99) for step in (0, 1, 3, 98, 99, 100, 10_000)] == \
        [0.0, 0.5, 0.75, pytest.approx(0.98989898), 0.99, 0.99, 0.99]
    assert ema_decay_at(5, 0.0) == 0.0  # ema_decay=0: the teacher is the student


def test_the_warm_teacher_is_the_mean_of_the_trained_students_without_the_initialisation():
    """A flat decay kept 0.99^t of the random initialisation in the teacher: 5 % at step 300."""
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)  # the teacher starts from other weights
    seen = []
    for step in range(4):
        with torch.no_grad():
            student.weight.add_(torch.randn(2, 3))
        seen.append(student.weight.detach().clone())
        ema_update(teacher, student, ema_decay_at(step, 0.99))
    torch.testing.assert_close(teacher.weight, torch.stack(seen).mean(0))


def test_the_ema_teacher_averages_batchnorm_statistics_as_its_weights():
    """Running statistics that fit the averaged weights: copying the student's (before session
    24) paired the teacher's slow weights with the student's current statistics."""
    student = UNet(1, 3, width=4, depth=2, norm="batch")
    teacher = UNet(1, 3, width=4, depth=2, norm="batch")
    teacher.load_state_dict(student.state_dict())
    before = {name: buffer.clone() for name, buffer in teacher.named_buffers()}
    student(torch.randn(2, 1, 16, 16) * 3 + 1)  # train mode: moves the student's running statistics
    ema_update(teacher, student, decay=0.9)
    students = dict(student.named_buffers())
    for name, buffer in teacher.named_buffers():
        if buffer.dtype.is_floating_point:
            torch.testing.assert_close(buffer, 0.9 * before[name] + 0.1 * students[name])
        else:
            assert torch.equal(buffer, students[name]), name  # num_batches_tracked
