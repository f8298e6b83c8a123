"""An independent check: exact search with faiss-cpu (optional test dependency)."""
import pytest
import torch

import refmatch

faiss = pytest.importorskip("faiss", reason="faiss-cpu is not installed")


@pytest.mark.parametrize("metric, index_type", [("dot", "IndexFlatIP"), ("l2", "IndexFlatL2")])
@pytest.mark.parametrize("k", [1, 8])
def test_torch_backend_agrees_with_faiss_flat(metric, index_type, k):
    query, reference = torch.randn(3000, 48), torch.randn(4000, 48)
    index = getattr(faiss, index_type)(48)
    index.add(reference.numpy())
    faiss_score, faiss_index = index.search(query.numpy(), k)
    result = refmatch.match(query, reference, k=k, metric=metric, backend="torch")
    score = result.score.reshape(3000, k)
    torch.testing.assert_close(score, torch.from_numpy(faiss_score), atol=2e-4, rtol=1e-5)
    agree = (result.index.reshape(3000, k) == torch.from_numpy(faiss_index)).float().mean().item()
    assert agree > 0.999  # rows may differ only on near-ties
