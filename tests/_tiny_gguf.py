"""A tiny Gemma 3 text model, built directly and written as a GGUF file the way llama.cpp lays one out.

Only what transformers' GGUF reader (`modeling_gguf_pytorch_utils.load_gguf_checkpoint` for gemma3,
`integrations/gguf/gguf_tokenizer_mapping.gemma_tokenizer`) reads back is written:

- config: `gemma3.*` keys for the sizes, norm eps, rope base and sliding window. Everything else
  (query_pre_attn_scalar, layer_types, local rope base, activation) comes back as the
  `Gemma3TextConfig` default, so the tiny model keeps those defaults too.
- weights: F32, named with gguf's own HF -> GGUF tensor map; every `*norm.weight` is stored as
  `w + 1` (the reader subtracts 1). No `output.weight`: the head is tied to the embedding.
- tokenizer: a SentencePiece-style ("llama") vocabulary with Gemma's special ids; no merges (the
  reader rebuilds them from the vocabulary, in file order).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# Gemma's layout of the special tokens (without `<mask>` in the vocabulary GemmaTokenizer would add
# one past the embedding); 3 = CONTROL, 2 = UNKNOWN, 1 = NORMAL in llama.cpp's token types.
SPECIALS = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 2), ("<mask>", 3)]
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
# Pieces, best merge first (the order in the file is the merge priority for Gemma GGUFs).
PIECES = ["▁t", "he", "▁the", "ll", "llo", "▁he", "▁hello", "or", "ld", "▁w", "▁wor", "▁world",
          "▁a", "▁c", "at", "▁cat", "▁s", "▁sat"]
CHARS = ["▁", *"abcdefghijklmnopqrstuvwxyz", ".", ",", "!", "?"]


def vocabulary() -> list[str]:
    tokens = [t for t, _ in SPECIALS]
    for t in CHARS + PIECES:
        if t not in tokens:
            tokens.append(t)
    return tokens


def tiny_gemma3(seed: int = 0, num_layers: int = 6):
    """A seeded random `Gemma3ForCausalLM` (6 layers: the 6th is the global-attention one).

    Norm weights are multiples of 1/256 in [-0.5, 0.5), so `w + 1` and back is exact in fp32.
    """
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=len(vocabulary()), hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=128,
        sliding_window=8, rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 50_000.0},
                                           "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.randint(-128, 128, p.shape, generator=gen).float() / 256)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def write_gguf(model, path: str | Path) -> Path:
    """Write `model` (a tiny `Gemma3ForCausalLM`) and the vocabulary above as an F32 gemma3 GGUF."""
    import gguf

    cfg = model.config
    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch="gemma3")
    w.add_name("tiny-gemma3")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
    w.add_sliding_window(cfg.sliding_window)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    tokens = vocabulary()
    types = [dict(SPECIALS).get(t, 1) for t in tokens]
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_pad_token_id(PAD_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight":  # tied to token_embd: llama.cpp writes no output.weight
            continue
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(base)
        assert gguf_name is not None, f"no GGUF name for {hf_name}"
        data = tensor.detach().to(torch.float32).numpy()
        if hf_name.endswith("norm.weight"):
            data = data + 1  # Gemma's RMSNorm scales by (1 + w); GGUF stores the factor itself
        w.add_tensor(f"{gguf_name}.{suffix}", np.ascontiguousarray(data, dtype=np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
