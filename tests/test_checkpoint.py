"""ppolab.models.checkpoint: one layout for every trained model; a LoRA model's adapter saved beside it."""
from __future__ import annotations

import pytest
import torch

from ppolab.config import ModelConfig
from ppolab.models import build_policy, build_tokenizer
from ppolab.models.checkpoint import ADAPTER_DIR, load_model_checkpoint, save_model_checkpoint


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(["hello world", "bonjour le monde", "مرحبا بالعالم"], vocab_size=300)


def lora_policy(tok):
    torch.manual_seed(0)
    cfg = ModelConfig(arch="llama", n_layers=2, hidden_size=32, n_heads=4, n_kv_heads=2, intermediate_size=64,
                      lora=True, lora_r=4, lora_target_modules=("q_proj", "v_proj"))
    policy = build_policy(cfg, tok)
    with torch.no_grad():  # lora_B starts at 0: make the adapter matter
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return policy


def test_lora_adapter_saved_beside_the_merged_model(tok, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    policy = lora_policy(tok).eval()
    ids = torch.tensor([tok("hello world")["input_ids"]])
    with torch.no_grad():
        want = policy(input_ids=ids).logits
        base = policy.get_base_model()
        with policy.disable_adapter():
            base_logits = policy(input_ids=ids).logits
    assert (want - base_logits).abs().max() > 1e-3  # the adapter changes the output

    out = save_model_checkpoint(policy, tok, tmp_path / "ckpt", {"log.json": {"a": 1}})
    assert (out / "config.json").is_file() and (out / "log.json").is_file()
    assert (out / ADAPTER_DIR / "adapter_config.json").is_file()
    assert hasattr(policy, "peft_config") and base is policy.get_base_model()  # the caller's model is untouched

    merged, _ = load_model_checkpoint(out)
    assert not hasattr(merged, "peft_config")
    # The adapter loads onto a fresh copy of the base (the policy without its adapter).
    fresh_base = AutoModelForCausalLM.from_config(base.config)
    unwrapped = {k.replace(".base_layer", ""): v for k, v in policy.get_base_model().state_dict().items()
                 if "lora_" not in k}
    fresh_base.load_state_dict(unwrapped)
    adapted = peft.PeftModel.from_pretrained(fresh_base, out / ADAPTER_DIR).eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merged(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)


def test_plain_model_has_no_adapter_folder_and_keep_carries_a_folder(tok, tmp_path):
    from ppolab.models import build_tiny_causal_lm

    model = build_tiny_causal_lm(ModelConfig(arch="llama", n_layers=1, hidden_size=32, n_heads=4, n_kv_heads=2,
                                             intermediate_size=64), tok)
    best = save_model_checkpoint(model, tok, tmp_path / "run" / "best")
    out = save_model_checkpoint(model, tok, tmp_path / "run", keep={"best": best})
    assert not (out / ADAPTER_DIR).exists()
    assert (out / "best" / "config.json").is_file() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporaries left


def test_sft_names_still_import():
    from ppolab.sft import load_sft, save_sft

    assert save_sft is save_model_checkpoint and load_sft is load_model_checkpoint
