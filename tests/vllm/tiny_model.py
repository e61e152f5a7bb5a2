"""A tiny Llama made on the spot, for running the real vLLM without a download or a GPU.

Random weights (`transformers`, a fixed seed, so every build is the same model), a byte-level BPE
tokenizer trained with `tokenizers` on a few lines of ASCII text, starting from every printable
ASCII character (so whatever the model says is plain text, and JSON — braces, quotes, digits —
can be written: structured outputs and tool calls are constrained for real), a chat template,
and bos/eos set. Hidden size 256 over 4 heads: vLLM's CPU
attention refuses a head size of 16, and 64 works. The output rows of the special tokens are
zeroed, so the model never ends an answer by itself: answers run to `max_tokens` or to a stop
string, which is what tests of lengths, aborts and failover need.

`python -m tests.vllm.tiny_model DIR` writes one.
"""

from __future__ import annotations

import sys
from pathlib import Path

CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "dim is a distributed inference mesh on NATS JetStream.",
    "Count from one to five: one, two, three, four, five.",
    "Hello, world! How are you today?",
    "Tokens stream to the client as server-sent events.",
    "A worker that dies mid-answer is replaced, and the answer carries on.",
)
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def build(out: Path, *, seed: int = 0) -> Path:
    """Write the model and tokenizer into `out`; returns `out`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<pad>"],
        # byte-level form: space is "Ġ", newline "Ċ"
        initial_alphabet=[chr(c) for c in range(33, 127)] + ["Ġ", "Ċ"],
    )
    bpe.train_from_iterator(list(CORPUS) * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=16384,  # room for answers long enough to hang up on
        initializer_range=0.3,  # wide enough that greedy decoding wanders over the vocabulary
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for special in tokenizer.all_special_ids:
            model.lm_head.weight[special].zero_()
    model.to(torch.bfloat16).save_pretrained(out)
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
