"""Class-aligned bank ranges of the CUDA and Triton class-wise max (host logic, runs on the CPU)."""
import pytest
import torch

from refmatch.backends.class_ranges import MIN_RANGE_ROWS, class_ranges, sorted_by_label


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target_ranges", [1, 7, 264])
def test_every_counted_row_lies_in_a_range_of_its_class(seed, target_ranges):
    generator = torch.Generator().manual_seed(seed)
    num_classes = int(torch.randint(1, 9, (1,), generator=generator))
    sizes = torch.randint(0, 900, (num_classes,), generator=generator)  # some classes empty
    labels = torch.repeat_interleave(torch.arange(num_classes), sizes)
    if labels.numel() == 0:
        labels = torch.zeros(1, dtype=torch.long)
    ignored = torch.rand(labels.shape[0], generator=generator) < 0.2
    labels = labels.masked_fill(ignored, 0)  # as ops passes them: ignored rows carry label 0
    starts, owners = class_ranges(labels, ignored, num_classes, target_ranges)
    assert starts[0] >= 0 and starts[-1] == labels.shape[0] and (starts[1:] >= starts[:-1]).all()
    assert owners.shape[0] == starts.shape[0] - 1
    size = max(MIN_RANGE_ROWS, -(-labels.shape[0] // target_ranges))
    assert ((starts[1:] - starts[:-1]) <= size).all()
    range_of_row = torch.searchsorted(starts, torch.arange(labels.shape[0]), right=True) - 1
    counted = ~ignored & (torch.arange(labels.shape[0]) >= starts[0])
    assert (~ignored).sum() == counted.sum(), "a counted row before the first range"
    assert torch.equal(owners[range_of_row[counted]], labels[counted])


def test_ranges_when_nothing_counts():
    starts, owners = class_ranges(torch.tensor([1, 1, 1]), torch.tensor([True, True, True]), 3, 4)
    assert starts.tolist() == [0, 0] and owners.tolist() == [0]


def test_banks_out_of_class_order_are_sorted_stably():
    reference = torch.arange(12.0).view(6, 2)
    labels, stat = torch.tensor([2, 0, 1, 0, 2, 1]), torch.arange(6.0)
    rows, sorted_labels, sorted_stat, ignored = sorted_by_label(reference, labels, stat, None)
    assert sorted_labels.tolist() == [0, 0, 1, 1, 2, 2] and sorted_stat.tolist() == [1, 3, 2, 5, 0, 4]
    assert torch.equal(rows[:, 0], 2 * sorted_stat) and ignored is None
    grouped = torch.tensor([0, 0, 1, 2])
    same = sorted_by_label(reference[:4], grouped, stat[:4], torch.tensor([False, True, False, False]))
    assert same[0].data_ptr() == reference.data_ptr() and same[1] is grouped  # in order: used in place


def test_refuses_cuda_graph_capture_with_a_reason(monkeypatch):
    from refmatch.backends import cuda_classwise

    monkeypatch.setattr(cuda_classwise, "host_read_allowed", lambda tensor: False)  # as while capturing
    with pytest.raises(RuntimeError, match="CUDA graph capture does not allow"):
        cuda_classwise.classwise_fused(torch.randn(1, 4, 2, 1), torch.randn(5, 4), torch.zeros(5, dtype=torch.long),
                                       None, 2, "dot")



@pytest.mark.parametrize("starts", [
    torch.tensor([0, 5, 10], dtype=torch.int32),  # read as int64, pairs of these would be one start
    torch.tensor([0, 10]),                        # not splits + 1 entries
    torch.tensor([0, 0, 5, 5, 10, 10])[::2],      # not contiguous
])
def test_cuda_ranges_are_checked_before_a_launch(starts):
    """The kernel reads split_starts as a contiguous int64 [splits + 1] (and clamps each range
    into the bank): anything else is refused by name."""
    from refmatch.backends.cuda_backend import launch_match

    with pytest.raises(ValueError, match=r"split_starts must be a contiguous int64 \[splits \+ 1\] = \[3\]"):
        launch_match(torch.randn(1, 4, 3, 1), torch.randn(10, 4), torch.empty(0), "dot", splits=2, split_starts=starts)
