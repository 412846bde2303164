"""A causal text decoder for captioning: ``transformers``' GPT-2 with cross-attention, plus a
per-caption condition vector added to every input embedding.

Why the vector: with cross-attention alone, the only road from the condition to a word runs
through several freshly initialised projections in a row (value, output, MLP, tied embedding),
so training first learns the caption grammar and only much later, if at all within a CPU
budget, starts to read the condition.
A summary of the condition added to the token embeddings is one matrix away from the words, as
in Show, Attend and Tell (Xu et al. 2015), whose LSTM starts from the mean annotation vector;
cross-attention then learns *where* to look. The projection that makes the vector starts at
zero, so at initialisation the decoder is exactly GPT-2.

``condition`` is an ordinary forward argument, so ``generate()`` passes it on at every step and
expands it for beam search like ``encoder_hidden_states``, with or without the KV cache.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from transformers import GPT2LMHeadModel


class ConditionedGPT2(GPT2LMHeadModel):
    """GPT-2 language model (build it from a ``GPT2Config`` with ``add_cross_attention=True``)
    whose forward also takes ``condition: B,D``, added to the embedding of every input token."""

    # the cross-attention arguments are spelt out: generate() checks its keyword arguments against this signature
    def forward(self, input_ids: Tensor | None = None, condition: Tensor | None = None,
                encoder_hidden_states: Tensor | None = None, encoder_attention_mask: Tensor | None = None,
                inputs_embeds: Tensor | None = None, **kwargs: Any):
        if condition is not None:
            if inputs_embeds is None:
                inputs_embeds = self.transformer.wte(input_ids)
            inputs_embeds = inputs_embeds + condition[:, None].to(inputs_embeds.dtype)
            input_ids = None
        return super().forward(input_ids=input_ids, inputs_embeds=inputs_embeds,
                               encoder_hidden_states=encoder_hidden_states,
                               encoder_attention_mask=encoder_attention_mask, **kwargs)
