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
from lmpipe.eval.kv_buffer import buffered_cache


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
                               spare=ids.shape[1] + self.spare)
        if width:
            _, _, heads, _, head_dim = first.shape
            # every prefix's parts side by side, then a zero column for the padding (masked
            # out, never attended to, but read: it must hold no NaN)
            flat = torch.cat([part for parts in prefixes for part in parts]
                             + [first.new_zeros((*first.shape[:3], 1, head_dim))], dim=3)
            # each slot of the batch's [pad | prefix] its column of `flat`, right-aligned
            size = torch.tensor(lengths, device=device)[:, None]
            slot = torch.arange(width, device=device)
            real = slot >= width - size
            prefix_mask[real] = 1
            column = torch.where(real, size.cumsum(0) - width + slot, flat.shape[3] - 1)
            buffers = [layer.allocate(len(ids), heads, head_dim, width, first.dtype, device)
                       for layer in cache.layers]
            for layer, pair in enumerate(buffers):
                for kind, buffer in enumerate(pair):  # keys, values
                    gathered = flat[layer, kind].index_select(1, column.flatten())
                    buffer[:, :, :width] = gathered.view(heads, len(ids), width,
                                                         head_dim).transpose(0, 1)
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
