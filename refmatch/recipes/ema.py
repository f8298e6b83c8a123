"""The mean teacher: an exponential moving average of the student's weights and statistics."""
import torch


@torch.no_grad()
def ema_update(teacher, student, decay):
    """teacher = decay * teacher + (1 - decay) * student, for the weights and for floating
    buffers (BatchNorm's running statistics, which must fit the averaged weights: copied from
    the student until session 24, they skewed every norm=batch teacher); counters are copied."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        if t.dtype.is_floating_point:
            t.mul_(decay).add_(s, alpha=1 - decay)
        else:
            t.copy_(s)


def ema_decay_at(step, decay):
    """The EMA decay after optimiser step ``step`` (0, 1, ...): 1 - 1/(step + 1) until that reaches
    ``decay``, so the teacher is the plain average of the student's weights so far and holds
    none of the random initialisation (at a flat 0.99 it kept 0.99^300 = 5 % at step 300)."""
    return min(decay, 1.0 - 1.0 / (step + 1))
