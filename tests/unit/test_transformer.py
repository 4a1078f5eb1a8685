"""Fast CPU tests for model/transformer.py on tiny configs."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from model.transformer import (
    DecoderLayer,
    EncoderLayer,
    MultiHeadAttention,
    Seq2SeqConfig,
    Seq2SeqTransformer,
    SinusoidalPositionalEncoding,
    causal_mask,
    padding_mask,
    sequence_loss,
)

PAD = 0


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine
    OpenMP threads waiting for each other made a step up to 80x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_config(**overrides) -> Seq2SeqConfig:
    base = dict(src_vocab_size=11, tgt_vocab_size=13, d_model=16, n_heads=2, d_ff=32,
                n_encoder_layers=2, n_decoder_layers=2, dropout=0.0, max_len=24)
    return Seq2SeqConfig(**{**base, **overrides})


def tiny_model(seed: int = 0, **overrides) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    return Seq2SeqTransformer(tiny_config(**overrides)).eval()


def random_ids(B: int, T: int, vocab: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (B, T), generator=g)  # no special ids


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(d_model=30, n_heads=4), "d_model"),
        (dict(d_model=15, n_heads=3), "d_model"),  # odd: sinusoidal pairs
        (dict(n_heads=0), "n_heads"),
        (dict(d_ff=-1), "d_ff"),
        (dict(src_vocab_size=0), "src_vocab_size"),
        (dict(n_decoder_layers=0), "n_decoder_layers"),
        (dict(max_len=0), "max_len"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
        (dict(eos_id=13), "eos_id"),
        (dict(pad_id=11), "pad_id"),  # valid for the target side, not for the source vocabulary
        (dict(bos_id=-1), "bos_id"),
        (dict(bos_id=0), "pad_id/bos_id/eos_id"),
        (dict(d_model="16"), "d_model"),
        (dict(n_heads=2.0), "n_heads"),
        (dict(norm_first=1), "norm_first"),
        (dict(dropout=True), "dropout"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_config_dict_roundtrip_and_unknown_keys():
    cfg = tiny_config(norm_first=False)
    assert Seq2SeqConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"n_layer.*typo"):
        Seq2SeqConfig.from_dict({**cfg.to_dict(), "n_layer": 2, "typo": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 32  # type: ignore[misc]


def test_model_code_imports_no_ray_mlflow_or_distributed():
    root = Path(__file__).resolve().parents[2] / "model"
    for name in ("transformer.py", "decoding.py"):
        for node in ast.walk(ast.parse((root / name).read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for mod in mods:
                    assert not mod.startswith(("ray", "mlflow", "torch.distributed")), (name, mod)


# --------------------------------------------------------------------------- masks and positions


def test_masks_shapes_and_values():
    ids = torch.tensor([[5, 6, PAD], [7, PAD, PAD]])
    m = padding_mask(ids, PAD)
    assert m.shape == (2, 1, 1, 3) and m.dtype == torch.bool
    assert m[:, 0, 0].tolist() == [[True, True, False], [True, False, False]]
    c = causal_mask(3)
    assert c.shape == (1, 1, 3, 3)
    assert torch.equal(c[0, 0], torch.ones(3, 3, dtype=torch.bool).tril())
    # With a cache of 2 past tokens, 2 new queries see positions <= their own.
    assert causal_mask(2, past_len=2)[0, 0].tolist() == [[True, True, True, False], [True, True, True, True]]


def test_positional_encoding_buffer_and_too_long_input():
    pe = SinusoidalPositionalEncoding(d_model=8, max_len=10)
    assert pe.pe.shape == (1, 10, 8)
    assert "pe" not in pe.state_dict()  # derived from the config, not a checkpointed tensor
    x = torch.zeros(2, 10, 8)
    assert torch.allclose(pe(x)[0, 0], torch.tensor([0.0, 1.0] * 4))  # sin(0), cos(0)
    assert torch.equal(pe(x[:, :3], offset=4), pe(x[:, :7])[:, 4:])
    with pytest.raises(ValueError, match="max_len"):
        pe(torch.zeros(1, 11, 8))
    with pytest.raises(ValueError, match="max_len"):
        pe(torch.zeros(1, 3, 8), offset=8)
    model = tiny_model(max_len=6)
    with pytest.raises(ValueError, match="max_len"):
        model(random_ids(1, 7, 11), random_ids(1, 3, 13))


# --------------------------------------------------------------------------- attention


def _torch_mha_copy(mine: MultiHeadAttention, d_model: int, n_heads: int) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mine.q_proj.weight, mine.k_proj.weight, mine.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([mine.q_proj.bias, mine.k_proj.bias, mine.v_proj.bias]))
        ref.out_proj.weight.copy_(mine.out_proj.weight)
        ref.out_proj.bias.copy_(mine.out_proj.bias)
    return ref.eval()


@pytest.mark.parametrize("with_padding", [False, True])
def test_mha_matches_torch_multihead_attention(with_padding):
    torch.manual_seed(0)
    D, H = 16, 4
    mine = MultiHeadAttention(D, H).eval()
    for lin in (mine.q_proj, mine.k_proj, mine.v_proj, mine.out_proj):
        nn.init.normal_(lin.bias)  # non-zero biases so a dropped bias would show
    ref = _torch_mha_copy(mine, D, H)
    q, kv = torch.randn(3, 5, D), torch.randn(3, 7, D)
    key_padding = torch.zeros(3, 7, dtype=torch.bool)  # torch: True = ignore
    if with_padding:
        key_padding[0, 4:] = True
        key_padding[2, 1:] = True
    mask = ~key_padding[:, None, None, :]  # ours: True = attend, (B, 1, 1, Tk)
    ref_kpm = key_padding if with_padding else None
    with torch.no_grad():
        expected, expected_w = ref(q, kv, kv, key_padding_mask=ref_kpm, need_weights=True)
        _, expected_heads = ref(q, kv, kv, key_padding_mask=ref_kpm, need_weights=True, average_attn_weights=False)
        fused, none_w = mine(q, kv, mask)
        explicit, w = mine(q, kv, mask, need_weights=True)
        _, w_heads = mine(q, kv, mask, need_weights=True, average_weights=False)
    assert none_w is None
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, expected_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w_heads, expected_heads, atol=1e-6, rtol=1e-5)
    if with_padding:
        assert (w[0, :, 4:] == 0).all() and (w[2, :, 1:] == 0).all()


def test_mha_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)


@pytest.mark.parametrize("layer_cls", [EncoderLayer, DecoderLayer])
def test_pre_ln_layer_has_residual_around_every_sublayer(layer_cls):
    # If every sub-layer's output projection is zero, a pre-LN block must be the identity;
    # a missing residual (e.g. around the FFN, as in the tutorial) would zero the stream.
    torch.manual_seed(0)
    layer = layer_cls(tiny_config()).eval()
    with torch.no_grad():
        for mod in layer.modules():
            if isinstance(mod, MultiHeadAttention):
                mod.out_proj.weight.zero_()
                mod.out_proj.bias.zero_()
        layer.ffn.fc2.weight.zero_()
        layer.ffn.fc2.bias.zero_()
        x, memory = torch.randn(2, 4, 16), torch.randn(2, 5, 16)
        src_mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
        if layer_cls is EncoderLayer:
            out = layer(x, torch.ones(2, 1, 1, 4, dtype=torch.bool))
        else:
            out = layer(x, memory, causal_mask(4), src_mask)[0]
    torch.testing.assert_close(out, x)


# --------------------------------------------------------------------------- model invariances


@pytest.mark.parametrize("norm_first", [True, False])
def test_future_target_tokens_do_not_change_earlier_logits(norm_first):
    model = tiny_model(norm_first=norm_first)
    src, tgt = random_ids(2, 6, 11), random_ids(2, 7, 13)
    with torch.no_grad():
        base = model(src, tgt)
        for t in range(1, 7):
            changed = tgt.clone()
            changed[:, t] = (changed[:, t] - 3 + 1) % 10 + 3  # a different non-special token
            out = model(src, changed)
            torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-5, rtol=1e-5)
            assert not torch.allclose(out[:, t], base[:, t])  # the change is visible where allowed


@pytest.mark.parametrize("norm_first", [True, False])
def test_source_padding_does_not_change_outputs(norm_first):
    model = tiny_model(norm_first=norm_first)
    src, tgt = random_ids(2, 5, 11), random_ids(2, 4, 13)
    src[1, 3:] = PAD
    with torch.no_grad():
        base = model(src, tgt)
        padded = model(torch.cat([src, torch.full((2, 3), PAD)], dim=1), tgt)
        # Row 1 alone with its real length, vs. inside a batch that pads it.
        alone = model(src[1:, :3], tgt[1:])
    torch.testing.assert_close(padded, base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, base[1:], atol=1e-5, rtol=1e-5)


def test_target_padding_does_not_change_real_positions():
    model = tiny_model()
    src, tgt = random_ids(2, 5, 11), random_ids(2, 6, 13)
    tgt[0, 4:] = PAD
    with torch.no_grad():
        base = model(src, tgt)
        longer = model(src, torch.cat([tgt, torch.full((2, 2), PAD)], dim=1))
        alone = model(src[:1], tgt[:1, :4])
    torch.testing.assert_close(longer[:, :6], base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, base[:1, :4], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [True, False])
def test_pre_and_post_ln_train_and_every_parameter_gets_a_gradient(norm_first):
    model = tiny_model(norm_first=norm_first, dropout=0.1).train()
    assert isinstance(model.encoder.norm, nn.LayerNorm if norm_first else nn.Identity)
    assert isinstance(model.decoder.norm, nn.LayerNorm if norm_first else nn.Identity)
    src, tgt = random_ids(2, 5, 11), random_ids(2, 6, 13)
    logits = model(src, tgt[:, :-1])
    assert logits.shape == (2, 5, 13)
    sequence_loss(logits, tgt[:, 1:], PAD, label_smoothing=0.1).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_tied_target_embeddings_share_one_parameter():
    tied, untied = tiny_model(), tiny_model(tie_target_embeddings=False)
    assert tied.output_proj.weight is tied.decoder.embed.embedding.weight
    assert untied.output_proj.weight is not untied.decoder.embed.embedding.weight
    assert num_params(untied) - num_params(tied) == 13 * 16  # parameters() lists a shared one once
    assert "output_proj.weight" in tied.state_dict()  # both names saved; load_state_dict keeps the tie
    reloaded = Seq2SeqTransformer(tied.config)
    reloaded.load_state_dict(tied.state_dict())
    assert reloaded.output_proj.weight is reloaded.decoder.embed.embedding.weight


def test_embedding_init_scale():
    model = tiny_model(d_model=64, n_heads=4, tgt_vocab_size=500, src_vocab_size=500)
    std = model.encoder.embed.embedding.weight.std().item()
    assert abs(std - 64 ** -0.5) < 0.02  # scaled by sqrt(D) this gives ~unit variance


def test_label_smoothed_loss_ignores_pad():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 13)
    targets = torch.tensor([[5, 6, 2, PAD], [7, 2, PAD, PAD]])
    real = targets != PAD
    for ls in (0.0, 0.1):
        loss = sequence_loss(logits, targets, PAD, label_smoothing=ls)
        expected = nn.functional.cross_entropy(logits[real], targets[real], label_smoothing=ls)
        torch.testing.assert_close(loss, expected)
        noisy = logits.clone()
        noisy[~real] = 100 * torch.randn_like(noisy[~real])
        torch.testing.assert_close(sequence_loss(noisy, targets, PAD, label_smoothing=ls), loss)


def test_eval_is_deterministic_and_dropout_free():
    noisy = tiny_model(dropout=0.5)
    clean = Seq2SeqTransformer(tiny_config(dropout=0.0))
    clean.load_state_dict(noisy.state_dict())
    src, tgt = random_ids(2, 5, 11), random_ids(2, 6, 13)
    with torch.no_grad():
        noisy.eval()
        clean.eval()
        a, b = noisy(src, tgt), noisy(src, tgt)
        assert torch.equal(a, b)
        torch.testing.assert_close(a, clean(src, tgt))
        noisy.train()
        assert not torch.allclose(noisy(src, tgt), a)  # dropout is really active in training
