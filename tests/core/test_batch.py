"""Packing maths: labels stay inside documents, loss masks, positions, CP padding."""

import numpy as np
import pytest
import torch

from megatron_ext.config import load_recipe
from megatron_ext.config.validate import cp_padding_multiple, sequence_multiple
from megatron_ext.data.sample import PackedSample
from megatron_ext.training.batch import pack_micro_batch, padding_joins_documents, split_for_context_parallel
from megatron_ext.training.step import dense_document_mask


def sample(doc_lengths, loss_mask=None, domain=0, start=1):
    n = sum(doc_lengths)
    return PackedSample(tokens=np.arange(start, start + n), doc_lengths=np.array(doc_lengths),
                        loss_mask=None if loss_mask is None else np.array(loss_mask), domain=domain)


def test_labels_never_cross_a_document_boundary():
    mb = pack_micro_batch([sample([3, 2, 3])])
    tokens, labels, w = mb.tokens[0].tolist(), mb.labels[0].tolist(), mb.loss_weight[0].tolist()
    assert tokens == [1, 2, 3, 4, 5, 6, 7, 8]
    # position t predicts t+1 only inside a document; document ends carry no loss
    assert w == [1, 1, 0, 1, 0, 1, 1, 0]
    assert [labels[i] for i in range(8) if w[i]] == [2, 3, 5, 7, 8]
    assert mb.cu_seqlens.tolist() == [0, 3, 5, 8] == mb.cu_seqlens_padded.tolist()
    assert mb.position_ids[0].tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    assert mb.doc_lengths == [3, 2, 3] and mb.num_real_tokens == 8


def test_sft_loss_mask_marks_targets():
    # assistant tokens are 3, 4 (indices 2, 3) in a single 5-token conversation and 6 in the next
    mb = pack_micro_batch([sample([5, 3], loss_mask=[0, 0, 1, 1, 0, 0, 1, 1])])
    w = mb.loss_weight[0].tolist()
    # position t is trained iff token t+1 is an assistant token of the same document
    assert w == [0, 1, 1, 0, 0, 1, 1, 0]
    assert mb.labels[0][torch.tensor(w).bool()].tolist() == [3, 4, 7, 8]


def test_single_document_samples_stay_plain_causal_rows():
    mb = pack_micro_batch([sample([8]), sample([8], start=50)], pad_multiple=4, total_multiple=8)
    assert not mb.is_thd and mb.tokens.shape == (2, 8)
    assert mb.loss_weight[:, -1].tolist() == [0, 0] and mb.loss_weight[:, :-1].all()


def test_documents_are_padded_for_context_parallelism():
    mb = pack_micro_batch([sample([5, 3]), sample([6, 2], start=20, domain=1)], pad_multiple=4, total_multiple=8)
    assert mb.is_thd and mb.tokens.shape == (1, 24)
    assert mb.cu_seqlens.tolist() == [0, 5, 8, 14, 16]                   # real lengths
    assert mb.cu_seqlens_padded.tolist() == [0, 8, 12, 20, 24]           # each a multiple of 4
    tokens, w = mb.tokens[0], mb.loss_weight[0]
    assert tokens[5:8].tolist() == [0, 0, 0] and w[5:8].sum() == 0       # padding: no loss
    assert tokens[8:11].tolist() == [6, 7, 8]
    assert mb.domain_ids[0, 12:].unique().tolist() == [1]
    assert float(w.sum()) == 16 - 4                                      # real tokens minus document ends
    assert mb.position_ids[0, 8:12].tolist() == [0, 1, 2, 3]


def test_tail_padding_joins_the_last_document():
    mb = pack_micro_batch([sample([5, 4])], pad_multiple=2, total_multiple=8)
    assert mb.cu_seqlens_padded.tolist() == [0, 6, 16] and mb.tokens.shape == (1, 16)
    assert all(int(d) % 2 == 0 for d in mb.cu_seqlens_padded.diff())


def test_total_multiple_must_be_a_multiple_of_pad_multiple():
    with pytest.raises(ValueError):
        pack_micro_batch([sample([4])], pad_multiple=4, total_multiple=6)


def zigzag_reference(cu_padded, cp, rank):
    """Per document of padded length L: chunks rank and 2*cp-1-rank of size L/(2*cp)."""
    idx = []
    for start, end in zip(cu_padded[:-1], cu_padded[1:]):
        c = (end - start) // (2 * cp)
        for chunk in (rank, 2 * cp - 1 - rank):
            idx += range(start + chunk * c, start + (chunk + 1) * c)
    return torch.tensor(idx)


def test_context_parallel_split_keeps_every_token_once():
    cp = 2
    mb = pack_micro_batch([sample([5, 3, 9])], pad_multiple=2 * cp, total_multiple=2 * cp)
    cu = mb.cu_seqlens_padded.tolist()
    parts = [split_for_context_parallel(mb, zigzag_reference(cu, cp, r)) for r in range(cp)]
    seen = torch.cat([p.tokens[0] for p in parts]).sort().values
    assert seen.tolist() == mb.tokens[0].sort().values.tolist()
    assert sum(float(p.loss_weight.sum()) for p in parts) == float(mb.loss_weight.sum())
    assert parts[0].tokens.shape == parts[1].tokens.shape  # balanced


class ToyAttentionModel(torch.nn.Module):
    """Embedding, two masked softmax-attention layers with MLPs, a head: every way tokens mix."""

    def __init__(self, vocab=64, dim=16):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, dim)
        self.qkv = torch.nn.ModuleList([torch.nn.Linear(dim, 3 * dim) for _ in range(2)])
        self.mlp = torch.nn.ModuleList([torch.nn.Linear(dim, dim) for _ in range(2)])
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, mb):
        blocked = dense_document_mask(mb)[0, 0]
        x = self.embed(mb.tokens[0])
        for qkv, mlp in zip(self.qkv, self.mlp):
            q, k, v = qkv(x).chunk(3, dim=-1)
            scores = (q @ k.T).masked_fill(blocked, float("-inf"))
            # a fully blocked row (padding kept apart) attends to nothing: zero output, no NaN
            attn = torch.nan_to_num(scores.softmax(-1))
            x = x + attn @ v
            x = x + torch.tanh(mlp(x))
        per_token = torch.nn.functional.cross_entropy(self.head(x), mb.labels[0], reduction="none")
        return (per_token * mb.loss_weight[0]).sum() / mb.loss_weight.sum()


def test_padding_joining_its_document_changes_no_loss_or_gradient():
    # documents of 1 and 3 tokens: at CP=2 (padding to 4) these are the chunks holding padding only
    mb = pack_micro_batch([sample([1, 3, 9, 6], start=3)], pad_multiple=4, total_multiple=8)
    joined = padding_joins_documents(mb)
    assert joined.cu_seqlens is joined.cu_seqlens_padded and joined.doc_lengths == mb.doc_lengths
    assert not torch.equal(dense_document_mask(mb), dense_document_mask(joined))  # padding now attends

    results = []
    for batch in (mb, joined):
        model = ToyAttentionModel()
        loss = model(batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_apart, grads_apart), (loss_joined, grads_joined) = results
    torch.testing.assert_close(loss_joined, loss_apart, rtol=0, atol=1e-6)
    for name in grads_apart:
        torch.testing.assert_close(grads_joined[name], grads_apart[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("cp, tp", [(2, 1), (4, 1), (2, 2)])
def test_every_rank_holds_a_multiple_of_16_tokens_under_fp8(cp, tp):
    # The 128K stage-2 proxy under FP8 (2xH200) packed documents padded to 2 x CP into 131,076
    # tokens: 65,538 per rank, which Transformer Engine's FP8 GEMMs refuse.
    recipe = load_recipe("recipes/bench/llama3_8b_512k.yaml", [
        "train.seq_length=131072", "model.max_position_embeddings=131072", "precision.fp8=hybrid",
        f"parallel.context_parallel_size={cp}", f"parallel.tensor_model_parallel_size={tp}",
        f"parallel.sequence_parallel={tp > 1}"])
    ranks_sharing = cp * tp

    def round_up(n, m):
        return -(-n // m) * m

    for docs in ([49153, 50001, 31918], [131071, 1], [16383] * 8 + [8]):
        mb = pack_micro_batch([sample(docs)], cp_padding_multiple(recipe), sequence_multiple(recipe))
        assert mb.tokens.numel() == round_up(sum(round_up(d, 2 * cp) for d in docs), 16 * ranks_sharing), (cp, tp, docs)
