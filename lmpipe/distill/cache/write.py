"""Writing the teacher cache: run the teacher once over the train split and store its top-k
distribution (and optionally hidden states and attention rows) in sharded `.npy` files with a
manifest that records every file's sha256 (lmpipe/distill/cache/format.py)."""


from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from lmpipe.core.artifacts import file_sha256
from lmpipe.core.progress import progress
from lmpipe.data.attention_masks import model_attention_mask
from lmpipe.data.batching import LengthGroupedBatches
from lmpipe.data.tokens import TokenSplit
from lmpipe.distill.cache.format import (
    FORMAT_VERSION,
    HIDDEN_DTYPES,
    LOGPROB_DTYPES,
    LOGPROB_STEP,
    MISSING_DTYPES,
    CacheSpec,
    cache_bytes,
    encode_logprobs,
    id_dtype,
    log_tempered_tail,
    ramp,
    shard_files,
    top_k_with_missing,
)
from lmpipe.model.hidden_states import layer_states

EMBEDDINGS_FILE = "embeddings.safetensors"


def attention_row_lengths(split: TokenSplit) -> np.ndarray:
    """Per position, the length of its attention row (keys from its document's start through
    itself), 0 for a document's last token (no next token, no row)."""
    lengths = np.zeros(split.n_tokens, dtype=np.int64)
    for start, end in split.docs:
        lengths[start:end - 1] = np.arange(1, end - start)
    return lengths


def _shard_bounds(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, max(n, 1), size)]


class _ShardWriter:
    """Open memory-maps for every shard and scatter rows into them by flat position."""

    def __init__(self, out: Path, n: int, spec: CacheSpec, vocab: int, hidden_width: int,
                 row_lengths: np.ndarray | None = None) -> None:
        """`row_lengths`: the attention row length of every position (when caching attention)."""
        self.size = spec.shard_positions
        self.bounds = _shard_bounds(n, spec.shard_positions)
        columns = {"ids": (id_dtype(vocab), (spec.top_k,)),
                   "logprobs": (np.dtype(LOGPROB_DTYPES[spec.logprobs]), (spec.top_k,)),
                   "missing": (np.dtype(MISSING_DTYPES[spec.logprobs]), ())}
        if spec.stores_tail(vocab):
            columns["tail"] = (np.dtype(MISSING_DTYPES[spec.logprobs]), ())
        for layer in spec.hidden_layers:
            columns[f"hidden{layer}"] = (np.dtype(HIDDEN_DTYPES[spec.hidden_dtype]), (hidden_width,))
        self.files: list[dict[str, str]] = []
        self.arrays: list[dict[str, np.ndarray]] = []
        self.offsets: list[np.ndarray] = []
        for i, (start, end) in enumerate(self.bounds):
            names = {name: f"{name}-{i:05d}.npy" for name in columns}
            arrays = {name: np.lib.format.open_memmap(
                out / names[name], mode="w+", dtype=dtype, shape=(end - start, *shape))
                for name, (dtype, shape) in columns.items()}
            if spec.attention_layers:
                offsets = np.zeros(end - start + 1, dtype=np.int64)
                np.cumsum(row_lengths[start:end], out=offsets[1:])
                names["attn_offsets"] = f"attn_offsets-{i:05d}.npy"
                np.save(out / names["attn_offsets"], offsets)
                self.offsets.append(offsets)
                for block in spec.attention_layers:
                    names[f"attn{block}"] = f"attn{block}-{i:05d}.npy"
                    arrays[f"attn{block}"] = np.lib.format.open_memmap(
                        out / names[f"attn{block}"], mode="w+",
                        dtype=HIDDEN_DTYPES[spec.hidden_dtype], shape=(int(offsets[-1]),))
            self.files.append({"start": start, "end": end, **names})
            self.arrays.append(arrays)

    def write(self, positions: np.ndarray, columns: dict[str, np.ndarray],
              ragged: dict[str, np.ndarray] | None = None, lengths: np.ndarray | None = None) -> None:
        """Rows at `positions`; `ragged` values are concatenated rows of `lengths` each."""
        shard = positions // self.size
        starts = np.concatenate([[0], np.cumsum(lengths)]) if ragged else None
        for s in np.unique(shard):
            pick = shard == s
            rows = positions[pick] - s * self.size
            for name, values in columns.items():
                self.arrays[s][name][rows] = values[pick]
            if ragged:
                picked = np.flatnonzero(pick)
                length = lengths[picked]
                source = np.repeat(starts[picked], length) + ramp(length)
                target = np.repeat(self.offsets[s][rows], length) + ramp(length)
                for name, values in ragged.items():
                    self.arrays[s][name][target] = values[source]

    def close(self) -> None:
        for arrays in self.arrays:
            for array in arrays.values():
                array.flush()


@torch.no_grad()
def write_cache(model: torch.nn.Module, split: TokenSplit, spec: CacheSpec, pad_id: int,
                out_dir: str | Path, batch_size: int, fingerprint: dict[str, str],
                batches=None, attention: str = "causal", loss_on: str = "mask") -> dict:
    """Run the teacher over `split` once and store its top-k next-token distribution at every
    position that has a next token (a document's last token has none; its row stays empty).

    `batches` (anything with `.sequential(batch_size)`, default whole documents) should match how
    the teacher was trained: windows for window-trained teachers, so no input exceeds its context.
    `attention` and `loss_on` are the teacher's `train.attention` and `train.loss_on`: a prefix-LM
    teacher reads each batch with the prefix-LM mask it trained with
    (lmpipe/data/attention_masks.py).

    Returns the manifest as written, plus this run's `seconds` and `tokens_per_s`, which stay
    out of the file: the folder is a function of the teacher, the tokens and the spec alone, so
    rebuilding an unchanged cache leaves its DVC hash, and the stages after it, as they were.
    """
    vocab = model.config.vocab_size
    if not 1 <= spec.top_k <= vocab:
        raise ValueError(f"teacher_cache.top_k = {spec.top_k}: expected 1 <= top_k <= {vocab} "
                         "(the teacher's vocabulary)")
    n_hidden = model.config.num_hidden_layers
    for layer in spec.hidden_layers:
        if not 0 <= layer <= n_hidden:
            raise ValueError(f"teacher_cache.hidden_layers: layer {layer} does not exist; the "
                             f"teacher has hidden states 0 (embeddings) .. {n_hidden}")
    source = batches if batches is not None else LengthGroupedBatches(split, batch_size, 0, pad_id)
    for block in spec.attention_layers:
        if not 1 <= block <= n_hidden:
            raise ValueError(f"teacher_cache.attention_layers: block {block} does not exist; the "
                             f"teacher has blocks 1..{n_hidden}")
    if spec.attention_layers and not isinstance(source, LengthGroupedBatches):
        raise ValueError("teacher_cache.attention_layers needs whole documents "
                         "(teacher.train.sampling = documents): a window's attention depends on "
                         "where the window starts")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = split.n_tokens
    lengths = attention_row_lengths(split) if spec.attention_layers else None
    writer = _ShardWriter(out, n, spec, vocab, model.config.hidden_size, lengths)
    tail = spec.stores_tail(vocab)
    model.eval()
    if spec.attention_layers:
        model.set_attn_implementation("eager")  # the only implementation that returns weights
    started, written = time.perf_counter(), 0
    # the teacher's own written tokens: the split's loss mask, whatever `batches` masks
    token_mask = split.mask if loss_on == "mask" else None
    for batch in progress(source.sequential(batch_size), desc="teacher_cache", unit="batch"):
        mask = model_attention_mask(attention, batch.positions, token_mask)
        out_ = model(input_ids=batch.input_ids, attention_mask=mask,
                     output_hidden_states=bool(spec.hidden_layers),
                     output_attentions=bool(spec.attention_layers))
        # a row is the distribution of the *next* token: only positions whose next token is in
        # the same document or window (a window's last token starts the next window)
        real = (batch.positions[:, :-1] >= 0) & (batch.positions[:, 1:] >= 0)
        logp = torch.log_softmax(out_.logits[:, :-1][real].float(), dim=-1)
        ids, values, missing = top_k_with_missing(logp, spec.top_k)
        columns = {"ids": ids.numpy().astype(writer.arrays[0]["ids"].dtype),
                   "logprobs": encode_logprobs(values, spec.logprobs),
                   "missing": missing.numpy().astype(MISSING_DTYPES[spec.logprobs])}
        if tail:
            columns["tail"] = log_tempered_tail(logp, ids, spec.temperature).numpy().astype(
                MISSING_DTYPES[spec.logprobs])
        states = layer_states(model, batch.input_ids, out_) if spec.hidden_layers else ()
        for layer in spec.hidden_layers:
            columns[f"hidden{layer}"] = states[layer][:, :-1][real].float().numpy(
            ).astype(HIDDEN_DTYPES[spec.hidden_dtype])
        ragged, row_lengths = {}, None
        if spec.attention_layers:
            # documents start at column 0, so the row at column c covers keys 0..c
            width = batch.input_ids.size(1) - 1
            columns_of = torch.arange(width).expand_as(real)[real]
            keys = torch.arange(batch.input_ids.size(1))[None, :] <= columns_of[:, None]
            row_lengths = (columns_of + 1).numpy()
            for block in spec.attention_layers:
                rows = out_.attentions[block - 1].float().mean(1)[:, :-1][real]
                ragged[f"attn{block}"] = rows[keys].numpy().astype(HIDDEN_DTYPES[spec.hidden_dtype])
        writer.write(batch.positions[:, :-1][real].numpy(), columns, ragged, row_lengths)
        written += int(real.sum())
    writer.close()
    seconds = time.perf_counter() - started
    # the teacher's token embeddings: the ground cost of the sinkhorn term (a few hundred KB)
    save_file({"embeddings": model.get_input_embeddings().weight.detach().float().contiguous()},
              str(out / EMBEDDINGS_FILE))
    hashes = {file: file_sha256(out / file) for shard in writer.files
              for file in shard_files(shard).values()}
    manifest = {"format_version": FORMAT_VERSION, "top_k": spec.top_k, "positions": n,
                "vocab_size": vocab, "ids_dtype": str(id_dtype(vocab)),
                "logprobs": spec.logprobs, "logprob_step": LOGPROB_STEP,
                "hidden_layers": list(spec.hidden_layers), "hidden_dtype": spec.hidden_dtype,
                "hidden_size": model.config.hidden_size, "teacher_layers": n_hidden,
                "attention_layers": list(spec.attention_layers),
                # the tempered tail (module docstring): exact log S_T at tail_temperature, in the
                # `tail` column when T != 1 and k < V (at T = 1 it is the `missing` column)
                "tail_model": "exact", "tail_temperature": float(spec.temperature),
                "attention": attention, "loss_on": loss_on,
                "shard_positions": spec.shard_positions, "shards": writer.files, "sha256": hashes,
                "embeddings": {"file": EMBEDDINGS_FILE,
                               "sha256": file_sha256(out / EMBEDDINGS_FILE)},
                **fingerprint}
    manifest["bytes_per_token"] = round(cache_bytes(out, manifest) / max(n, 1), 2)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return {**manifest, "seconds": round(seconds, 3),
            "tokens_per_s": round(written / max(seconds, 1e-9), 1)}
