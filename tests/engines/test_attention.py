"""Attention layers: the fused CPU kernels (flash attention, the Transformer fast path) have no
forward-mode derivative or double backward; the analysis must not depend on them."""

import torch
from torch import nn

from lightning_influence import ArnoldiInfluence
from lightning_influence.losses import cross_entropy_loss


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(7, 8)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True),
            num_layers=1,
            enable_nested_tensor=False,
        )
        self.head = nn.Linear(8, 7)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens))).transpose(1, 2)  # [B, C, T]


def data():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 7, (12, 5), generator=g)
    return [(tokens[i : i + 4], tokens[i : i + 4].flip(1)) for i in range(0, 12, 4)]


def test_transformer_layers_fit_and_score_on_both_routes_and_auto():
    batches = data()
    scores = {}
    for projection in ("grad", "jvp", "auto"):
        for hvp_mode in ("fwd-rev", "rev-rev"):
            engine = ArnoldiInfluence(
                Tagger(), cross_entropy_loss, n_iters=8, top_k=3, projection=projection,
                hvp_mode=hvp_mode, progress=False,
            )  # fmt: skip
            engine.fit(batches)
            scores[projection, hvp_mode] = engine.self_influence(batches)
    reference = scores["grad", "fwd-rev"]
    assert torch.isfinite(reference).all() and reference.shape == (12,)
    for value in scores.values():
        torch.testing.assert_close(value, reference, rtol=1e-3, atol=1e-6)
    # the analysis leaves the global switches as it found them
    assert torch.backends.mha.get_fastpath_enabled()


def test_auto_falls_back_to_per_example_gradients_when_forward_mode_fails(recwarn):
    class NoForwardMode(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x.tanh()

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(output)

        @staticmethod
        def backward(ctx, grad):
            (y,) = ctx.saved_tensors
            return grad * (1 - y**2)

        @staticmethod
        def vmap(info, in_dims, x):
            return NoForwardMode.apply(x), in_dims[0]

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
            self.scale = nn.Parameter(torch.ones(3))  # outside any layer: no hooks route

        def forward(self, x):
            return self.b(NoForwardMode.apply(self.a(x))) * self.scale

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g))]
    engine = ArnoldiInfluence(Model(), cross_entropy_loss, n_iters=6, top_k=3, hvp_mode="rev-rev")
    engine.config.progress = False
    engine.fit(batches)
    assert engine.projection_mode_ == "grad"
    assert any("forward-mode route fails" in str(w.message) for w in recwarn.list)
    assert torch.isfinite(engine.self_influence(batches)).all()
