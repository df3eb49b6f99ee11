"""Human feedback on the cold-start policy's candidates (the demo's annotator is simulated)."""
from __future__ import annotations

import random
import threading

from ...data import build_prompt
from ...errors import UserError
from ...feedback import FeedbackStore, make_server
from ...feedback.simulated import simulate_annotator
from ...models import RewardModel
from ...sft.translate import translate
from ..config import PipelineConfig
from ..data import directions, load_split
from ..models import as_response, load_policy, load_reward
from ..run import Run


def candidates(policy, tok, reward: RewardModel, examples, n: int, max_new_tokens: int, pairs: dict):
    """For each example: n sampled translations, deduplicated, ranked by the reward model."""
    out = []
    for direction, (src, tgt) in pairs.items():
        chunk = [ex for ex in examples if ex.direction == direction]
        if not chunk:
            continue
        samples = translate(policy, tok, [ex.source for ex in chunk], src, tgt, do_sample=True,
                            num_return_sequences=n, max_new_tokens=max_new_tokens)
        for ex, cands in zip(chunk, samples):
            texts = list(dict.fromkeys(c.strip() for c in cands if c.strip()))
            if len(texts) < 2:
                continue
            prompt = build_prompt(ex.source, src, tgt, tok)
            scores = reward.score([prompt] * len(texts), [as_response(t) for t in texts]).tolist()
            ranked = sorted(zip(texts, scores), key=lambda ts: -ts[1])
            out.append((ex, ranked))
    return out



def run(run: Run, cfg: PipelineConfig) -> dict:
    f = cfg.feedback
    if f.annotator != "simulated":
        # TODO(ownloop): stop after the cold start and say how to open the page and continue.
        raise UserError(f"setting feedback.annotator = {f.annotator!r}: human annotation from the pipeline is "
                        "not implemented in this version; use 'simulated'")
    store = FeedbackStore(run / "feedback.sqlite", shown=f.shown)
    # Feedback sources come from the validation split: never the test split used for chrF.
    examples = load_split(cfg, "valid")
    random.Random(cfg.seed + 2).shuffle(examples)
    examples = examples[: f.items]
    if store.stats()["items"] == 0:
        policy, tok = load_policy(run / "ppo_model_coldstart", cfg)
        policy.eval()
        reward = load_reward(run / "reward_model_coldstart", cfg.model).eval()
        ranked = candidates(policy, tok, reward, examples, f.candidates, cfg.generation.max_new_tokens,
                             directions(cfg))
        store.add_items([{"source": ex.source, "direction": ex.direction, "reference": ex.target,
                          "candidates": [(t, s) for t, s in cands], "model_version": "ppo_model_coldstart"}
                         for ex, cands in ranked])
    server = make_server(store, port=f.port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        references = {(ex.source, ex.direction): ex.target for ex in examples}
        n = simulate_annotator(server.url.rstrip("/"), references, custom_every=f.custom_every)
    finally:
        server.shutdown()
        server.server_close()
    path = store.export_jsonl(run.path)
    pairs = sum(1 for _ in open(path, encoding="utf-8"))
    result = {"annotated_this_run": n, "pairs": pairs, **{k: v for k, v in store.stats().items() if k != "annotators"},
              "annotator": "simulated (ranks by sentence chrF against the reference; no human present)"}
    run.log("feedback", result)
    return result
