"""Qwen2/Qwen2.5, Qwen3 and Llama with l2reason's layer loop (SGLang's classes, same names, same weights)."""

from sglang.srt.models import llama, qwen2, qwen3

from l2reason_sglang.runtime import l2_causal_lm

EntryClass = [
    l2_causal_lm(qwen2.Qwen2ForCausalLM),
    l2_causal_lm(qwen3.Qwen3ForCausalLM),
    l2_causal_lm(llama.LlamaForCausalLM),
]
