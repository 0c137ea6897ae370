"""The attention decoder of a prefix-cached batch (lmpipe/eval/prefix_cache.py): its prefill
starts from each row's cached prefix KV and runs only the suffixes, and it hands back each row's
KV for the cache to store; its steps are AttentionDecoder's (lmpipe/eval/decoders.py).

A row's cache and mask read [pad | prefix_i | pad | suffix_i]: the prefixes left-padded to the
longest one, the suffixes left-padded to theirs. The mask marks the real tokens; a suffix's
positions go on from its own prefix length, so every real token sits at the position (hence has
the RoPE'd key) it has when the prompt is computed whole, and the masked slots in the middle
are never attended to. The prefixes are copied straight into the batch cache's buffers, one
buffer stacked behind every layer (lmpipe/eval/kv_buffer.py, `stacked_buffers`) so that each
cached part goes in with one copy and each row's KV comes out with one, with room for the
suffixes and the decoding steps after them.
"""

from __future__ import annotations

import torch

from lmpipe.eval.decoders import AttentionDecoder
from lmpipe.eval.kv_buffer import Workspace, buffered_cache, stacked_buffers


class PrefixDecoder(AttentionDecoder):
    """AttentionDecoder whose prefill starts from cached prefixes; its steps are the parent's.
    `workspace`: where the batch's KV buffer is taken from (the cache's, reused batch after
    batch, lmpipe/eval/kv_buffer.py)."""

    def __init__(self, model: torch.nn.Module, spare: int, workspace: Workspace | None = None
                 ) -> None:
        super().__init__(model, spare)
        self.workspace = workspace

    def prefill_after(self, prefixes: list[list[torch.Tensor]], ids: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after each row's cached prefix, its KV in consecutive parts (each
        (L, 2, heads, n, head_dim); none for a miss), then its suffix `ids`/`mask` (B, S)
        left-padded."""
        lengths = [sum(part.shape[3] for part in parts) for parts in prefixes]
        width = max(lengths)
        device = ids.device
        # right-aligned: each row reads [pad | prefix]
        prefix_mask = (torch.arange(width, device=device)
                       >= width - torch.tensor(lengths, device=device)[:, None]).long()
        first = next((parts[0] for parts in prefixes if parts), None)
        # room for the suffixes and the decoding steps after them
        cache = buffered_cache(None if first is None else first.shape[0],
                               spare=ids.shape[1] + self.spare)
        self.stack = None
        if width:
            _, _, heads, _, head_dim = first.shape
            self.stack = stacked_buffers(cache, len(ids), heads, head_dim, width,
                                         ids.shape[1] + self.spare, first.dtype, device,
                                         self.workspace)
            for row, parts in enumerate(prefixes):
                # the pad is masked out, never attended to, but read: it must hold no NaN
                at = width - lengths[row]
                if at:
                    self.stack[:, :, row, :, :at] = 0
                if parts:  # every layer's keys and values of every part in one copy
                    torch.cat(parts, dim=3, out=self.stack[:, :, row, :, at:width])
        # each row's suffix goes on from its own prefix length (a padded slot's position is
        # never read: it is masked)
        start = torch.tensor(lengths, device=device)[:, None]
        positions = (start + mask.cumsum(-1) - 1).clamp(min=0)
        self.mask = torch.cat([prefix_mask, mask], dim=1)
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                         cache=cache, use_cache=True, logits_to_keep=1)
        self.past = out.cache
        self.next_position = positions[:, -1] + 1
        return out.logits[:, -1].float()

    def _on_stack(self) -> bool:
        # every layer still in the prefill's stacked buffer (none has grown or dropped rows)
        return self.stack is not None and all(
            layer._keys.untyped_storage().data_ptr() == self.stack.untyped_storage().data_ptr()
            for layer in self.past.layers)

    def row_kv(self, row: int, start: int, stop: int) -> torch.Tensor:
        """The KV (L, 2, heads, stop - start, head_dim) of a row's real tokens start:stop."""
        real = self.mask[row].nonzero().squeeze(1)[start:stop]
        first, last = int(real[0]), int(real[-1])
        # usually one run of positions (a turn's new tokens follow each other): a slice, cheaper
        # than gathering; a copy either way, so the stored KV does not hold the batch's buffer
        where = slice(first, last + 1) if last - first + 1 == len(real) else real
        if self._on_stack():
            kv = self.stack[:, :, row]  # every layer's in one copy
            return (kv[:, :, :, where].clone(memory_format=torch.contiguous_format)
                    if isinstance(where, slice)
                    else kv.index_select(3, where))
        return torch.stack([torch.stack([layer.keys[row][:, where], layer.values[row][:, where]])
                            for layer in self.past.layers])
