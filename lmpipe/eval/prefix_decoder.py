"""The attention decoder of a prefix-cached batch (lmpipe/eval/prefix_cache.py): its prefill
starts from each row's cached prefix KV and runs only the suffixes, and it hands back each row's
KV for the cache to store; its steps are AttentionDecoder's (lmpipe/eval/decoders.py).

A row's cache and mask read [pad | prefix_i | pad | suffix_i]: the prefixes left-padded to the
longest one, the suffixes left-padded to theirs. The mask marks the real tokens; a suffix's
positions go on from its own prefix length, so every real token sits at the position (hence has
the RoPE'd key) it has when the prompt is computed whole, and the masked slots in the middle
are never attended to. The prefixes are copied straight into the batch cache's buffers
(lmpipe/eval/kv_buffer.py), which have room for the suffixes and the decoding steps after them.
"""

from __future__ import annotations

import torch

from lmpipe.eval.decoders import AttentionDecoder
from lmpipe.eval.kv_buffer import SPARE, buffered_cache


class PrefixDecoder(AttentionDecoder):
    """AttentionDecoder whose prefill starts from cached prefixes; its steps are the parent's."""

    def prefill_after(self, prefixes: list[list[torch.Tensor]], ids: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after each row's cached prefix, its KV in consecutive parts (each
        (L, 2, heads, n, head_dim); none for a miss), then its suffix `ids`/`mask` (B, S)
        left-padded."""
        lengths = [sum(part.shape[3] for part in parts) for parts in prefixes]
        width = max(lengths)
        device = ids.device
        prefix_mask = torch.zeros((len(ids), width), dtype=torch.long, device=device)
        first = next((parts[0] for parts in prefixes if parts), None)
        # room for the suffixes and the decoding steps after them
        cache = buffered_cache(None if first is None else first.shape[0],
                               spare=ids.shape[1] + SPARE)
        if width:
            _, _, heads, _, head_dim = first.shape
            # the prefixes go straight into the cache's buffers, right-aligned
            buffers = [layer.allocate(len(ids), heads, head_dim, width, first.dtype, device)
                       for layer in cache.layers]
            for row, parts in enumerate(prefixes):
                if parts:
                    kv = torch.cat(parts, dim=3) if len(parts) > 1 else parts[0]
                    for (keys, values), layer_kv in zip(buffers, kv):
                        keys[row, :, width - lengths[row]:width] = layer_kv[0]
                        values[row, :, width - lengths[row]:width] = layer_kv[1]
                    prefix_mask[row, width - lengths[row]:] = 1
            # zeros before them: masked out, never attended to, but read
            padding = (prefix_mask == 0)[:, None, :, None]
            for keys, values in buffers:
                keys[:, :, :width].masked_fill_(padding, 0)
                values[:, :, :width].masked_fill_(padding, 0)
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

    def row_kv(self, row: int, start: int, stop: int) -> torch.Tensor:
        """The KV (L, 2, heads, stop - start, head_dim) of a row's real tokens start:stop."""
        real = self.mask[row].nonzero().squeeze(1)[start:stop]
        first, last = int(real[0]), int(real[-1])
        # usually one run of positions (a turn's new tokens follow each other): a slice, cheaper
        # than gathering; a copy either way, so the stored KV does not hold the batch's buffer
        where = slice(first, last + 1) if last - first + 1 == len(real) else real
        return torch.stack([torch.stack([layer.keys[row][:, where], layer.values[row][:, where]])
                            for layer in self.past.layers])
