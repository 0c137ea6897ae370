"""The teacher cache: the teacher's top-k next-token distribution at every training position.

The teacher runs once; every distillation run then reads its signal from disk. Per position the
cache keeps the top-k token ids (at the smallest unsigned integer width the vocabulary allows),
their log-probs (`u8`: quantized in steps of 1/16 nat, `fp16` or `fp32`) and the log of the
probability mass outside the top-k (the *missing mass*), plus, optionally, the teacher's hidden
states at chosen layers and its head-averaged attention rows at chosen blocks (documents only: a
position's row covers the keys from its document's start, so rows are ragged and stored flat
with offsets). Arrays are split into shards of `shard_positions` positions, each its own
`.npy` file, memory-mapped on read and addressed by the flat position in the train token stream.

`manifest.json` records the format version, k, the encodings, the shards, the sha256 of every
shard file (checked before a file is memory-mapped, so a corrupt or truncated shard is refused by
name), and the teacher weights' and tokenizer's identities, so a distillation run refuses a cache
built for other inputs.

The tempered tail. A distillation at temperature T != 1 needs, besides the missing mass m, the
tail's tempered sum (lmpipe/distill/support.py):

    log S_T = log sum_{j not in top-k} p_j^(1/T)      (S_1 = m)

which m does not determine (m^(1/T) <= S_T <= (V - k)^(1 - 1/T) m^(1/T) for T > 1). When the
cache is written for a temperature T != 1 (`CacheSpec.temperature`, the stage passes
`distill.temperature`) and k < V, each shard gets one more column, `tail` (log S_T, exact: a
logsumexp over the teacher's V - k other log-probs / T, in the missing mass's float type), and
the manifest records `tail_model: exact` and `tail_temperature: T`; a distillation at another
T != 1 is refused by the reader (lmpipe/distill/teacher.py). A cache without `tail_temperature`
(written before it existed) holds the tail at T = 1 only. The addition is optional per cache and
leaves every other file as it was, so the format version stays 3: a reader that knows nothing of
`tail` reads such a cache as before, and this reader knows what an older cache lacks.

The teacher runs with its own attention mask (`attention`: causal, or prefix-LM as it was trained
with `train.attention: prefix_lm`, the given spans taken from the split's loss mask when it trained
with `loss_on: mask`; lmpipe/data/attention_masks.py), recorded in the manifest as `attention`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmpipe.core.progress import progress
from lmpipe.data.attention_masks import model_attention_mask
from lmpipe.data.batching import LengthGroupedBatches
from lmpipe.data.tokens import TokenSplit

# file_sha256 stays importable from here: other modules take it from lmpipe.distill.cache
from lmpipe.params.artifacts import ArtifactError, file_sha256, tokenizer_identity, verify_sha256
from lmpipe.params.config import ConfigError

FORMAT_VERSION = 3  # 3: the manifest holds every shard file's sha256 (+ optional `tail` column)
REBUILD = "rebuild it: dvc repro -f teacher_cache"
SHARD_BOUNDS = ("start", "end")
LOGPROB_STEP = 1.0 / 16.0  # u8 log-prob codes: logp = -code * step, so codes span [-15.94, 0]
LOGPROB_DTYPES = {"u8": np.uint8, "fp16": np.float16, "fp32": np.float32}
# the missing mass is a log, often tiny or -inf: keep it in a float, wide when log-probs are fp32
MISSING_DTYPES = {"u8": np.float16, "fp16": np.float16, "fp32": np.float32}
HIDDEN_DTYPES = {"fp16": np.float16, "fp32": np.float32}


def model_fingerprint(model_dir: str | Path) -> dict[str, str]:
    """What identifies a model directory: its weights' file hash and its tokenizer's identity
    (`tokenizer_identity`: what maps text to ids, not transient padding state)."""
    model_dir = Path(model_dir)
    return {"teacher_sha256": file_sha256(model_dir / "model.safetensors"),
            "tokenizer_sha256": tokenizer_identity(model_dir)}


def shard_files(shard: dict) -> dict[str, str]:
    """A manifest shard entry's arrays: name -> file name."""
    return {name: file for name, file in shard.items() if name not in SHARD_BOUNDS}


def id_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned integer type that holds every token id."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"vocabulary of {vocab_size} ids does not fit 32 bits")


def encode_logprobs(logprobs: torch.Tensor, fmt: str) -> np.ndarray:
    """Top-k log-probs (<= 0) in the cache's storage format."""
    values = logprobs.float().numpy()
    if fmt == "u8":
        return np.clip(np.rint(-values / LOGPROB_STEP), 0, 255).astype(np.uint8)
    return values.astype(LOGPROB_DTYPES[fmt])


def decode_logprobs(stored: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "u8":
        return stored.astype(np.float32) * np.float32(-LOGPROB_STEP)
    return stored.astype(np.float32)


def top_k_with_missing(logprobs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                 torch.Tensor]:
    """(ids, log-probs) of the k most likely tokens, sorted, and the log of the remaining mass
    (computed exactly over the other tokens, -inf when k is the whole vocabulary)."""
    top = logprobs.topk(k, dim=-1)
    rest = logprobs.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
    return top.indices, top.values, rest


def log_tempered_tail(logprobs: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log sum_{j not in ids} p_j^(1/T) per row (the tempered tail, module docstring), exactly
    from the full log-probs; -inf when `ids` covers the vocabulary."""
    rest = logprobs.float().scatter(-1, ids, float("-inf"))
    return (rest / temperature).logsumexp(-1)


@dataclass(frozen=True)
class CacheSpec:
    """What to store: k, the log-prob encoding, the shard size and the hidden layers to keep
    (indices into the model's `hidden_states`: 0 is the embedding output, L the last layer) and
    the blocks whose attention rows to keep (1..L)."""

    top_k: int
    logprobs: str = "u8"
    shard_positions: int = 1 << 20
    hidden_layers: tuple[int, ...] = ()
    hidden_dtype: str = "fp16"
    attention_layers: tuple[int, ...] = ()  # blocks 1..L; stored in hidden_dtype
    temperature: float = 1.0  # the distill temperature whose tempered tail to store (if != 1)

    def stores_tail(self, vocab_size: int) -> bool:
        """Whether the tempered tail needs its own column: T != 1 and a non-empty tail."""
        return self.temperature != 1.0 and self.top_k < vocab_size


def _ramp(lengths: np.ndarray) -> np.ndarray:
    """0..l-1 for each l in `lengths`, concatenated."""
    total = int(lengths.sum())
    return np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)


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
                source = np.repeat(starts[picked], length) + _ramp(length)
                target = np.repeat(self.offsets[s][rows], length) + _ramp(length)
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
    teacher reads each batch with the prefix-LM mask it trained with (lmpipe/data/attention_masks.py).
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
        for layer in spec.hidden_layers:
            columns[f"hidden{layer}"] = out_.hidden_states[layer][:, :-1][real].float().numpy(
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
                "seconds": round(seconds, 3), "tokens_per_s": round(written / max(seconds, 1e-9), 1),
                **fingerprint}
    manifest["bytes_per_token"] = round(cache_bytes(out, manifest) / max(n, 1), 2)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def cache_bytes(folder: str | Path, manifest: dict, hidden: bool = False) -> int:
    """Bytes on disk of the distribution files (ids, log-probs, missing mass), headers included;
    with `hidden`, the cached hidden states and attention rows too."""
    total = 0
    for shard in manifest["shards"]:
        for name, file in shard_files(shard).items():
            if name.startswith(("hidden", "attn")) and not hidden:
                continue
            total += (Path(folder) / file).stat().st_size
    return total


@dataclass
class CachedRows:
    """The cache's rows for some positions, as tensors ready for a loss."""

    ids: torch.Tensor            # (n, k) int64
    logprobs: torch.Tensor       # (n, k) float32, decoded
    log_missing: torch.Tensor    # (n,) float32
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (n, d) float32
    attention: dict[int, torch.Tensor] = field(default_factory=dict)  # block -> (n, keys)
    log_tail: torch.Tensor | None = None  # (n,) float32 log S_T at the cache's tail_temperature


def _load_verified(path: Path, manifest_path: Path, expected: str | None) -> np.ndarray:
    """Memory-map one shard file after checking its bytes against the manifest's sha256."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard file listed in {manifest_path} is missing")
    if expected is None:
        raise ArtifactError(f"{manifest_path}: no sha256 recorded for {path.name}; {REBUILD}")
    verify_sha256(path, expected, REBUILD)
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:  # numpy's messages ("mmap length ...") name no file
        raise ArtifactError(f"{path}: unreadable shard file ({exc}); {REBUILD}") from None


def _open_shard(folder: Path, manifest_path: Path, manifest: dict,
                shard: dict) -> dict[str, np.ndarray]:
    """One shard's arrays, each verified and checked against the row counts the manifest and
    the attention offsets imply."""
    arrays = {}
    for name, file in shard_files(shard).items():
        path = folder / file
        arrays[name] = _load_verified(path, manifest_path, manifest["sha256"].get(file))
        rows = shard["end"] - shard["start"] + (name == "attn_offsets")
        if not name.startswith("attn") or name == "attn_offsets":
            if len(arrays[name]) != rows:
                raise ArtifactError(f"{path}: {len(arrays[name])} rows, the manifest says "
                                    f"{rows}; {REBUILD}")
        elif len(arrays[name]) != arrays["attn_offsets"][-1]:
            raise ArtifactError(f"{path}: {len(arrays[name])} values, its offsets say "
                                f"{arrays['attn_offsets'][-1]}; {REBUILD}")
    return arrays


@dataclass
class TeacherCache:
    folder: Path
    manifest: dict
    shards: list[dict[str, np.ndarray]]

    @classmethod
    def open(cls, folder: str | Path, expect: dict[str, str] | None = None) -> "TeacherCache":
        """Memory-map a cache after checking every shard file against the manifest's sha256;
        `expect` (e.g. the tokenizer identity) must match the manifest."""
        folder = Path(folder)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: no teacher cache (run teacher_cache first)")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{manifest_path}: format_version {manifest.get('format_version')}, "
                             f"expected {FORMAT_VERSION}; rebuild the cache")
        for key, value in (expect or {}).items():
            if manifest.get(key) != value:
                raise ConfigError(f"{manifest_path}: {key} is {manifest.get(key)}, expected {value}; "
                                 "the cache was built for other inputs, rebuild it")
        shards = [_open_shard(folder, manifest_path, manifest, shard)
                  for shard in manifest["shards"]]
        return cls(folder, manifest, shards)

    @property
    def top_k(self) -> int:
        return self.manifest["top_k"]

    @property
    def tail_temperature(self) -> float:
        """The T != 1 whose tempered tail the cache holds besides T = 1 (1.0: none; a cache
        written before the field existed holds T = 1 only)."""
        return float(self.manifest.get("tail_temperature", 1.0))

    @property
    def has_tail(self) -> bool:
        return any("tail" in shard for shard in self.shards)

    def rows(self, positions: np.ndarray, hidden_layers: tuple[int, ...] = (),
             attention_layers: tuple[int, ...] = ()) -> CachedRows:
        """The cached rows at flat train-stream `positions`, gathered across shards. Attention
        rows come back zero-padded to the longest: key j is the document's j-th token."""
        missing_layers = set(hidden_layers) - set(self.manifest["hidden_layers"])
        if missing_layers:
            raise ValueError(f"{self.folder}: hidden states of teacher layer(s) "
                             f"{sorted(missing_layers)} are not cached (it has "
                             f"{self.manifest['hidden_layers']}); set teacher_cache.hidden_layers")
        missing_blocks = set(attention_layers) - set(self.manifest.get("attention_layers", []))
        if missing_blocks:
            raise ValueError(f"{self.folder}: attention of teacher block(s) "
                             f"{sorted(missing_blocks)} is not cached (it has "
                             f"{self.manifest.get('attention_layers', [])}); set "
                             "teacher_cache.attention_layers")
        positions = np.asarray(positions, dtype=np.int64)
        n, k = len(positions), self.top_k
        ids = np.empty((n, k), dtype=np.int64)
        logprobs = np.empty((n, k), dtype=np.float32)
        missing = np.empty(n, dtype=np.float32)
        tail = np.empty(n, dtype=np.float32) if self.has_tail else None
        hidden = {layer: np.empty((n, self.manifest["hidden_size"]), dtype=np.float32)
                  for layer in hidden_layers}
        size = self.manifest["shard_positions"]
        shard = positions // size
        ragged_rows = []
        for s in np.unique(shard):
            pick = shard == s
            rows = np.sort(positions[pick] - s * size)  # sorted reads are sequential on disk
            order = np.argsort(positions[pick] - s * size, kind="stable")
            arrays = self.shards[s]
            target = np.flatnonzero(pick)[order]
            ids[target] = arrays["ids"][rows]
            logprobs[target] = decode_logprobs(arrays["logprobs"][rows], self.manifest["logprobs"])
            missing[target] = arrays["missing"][rows]
            if tail is not None:
                tail[target] = arrays["tail"][rows]
            for layer in hidden_layers:
                hidden[layer][target] = arrays[f"hidden{layer}"][rows]
            if attention_layers:
                offsets = arrays["attn_offsets"]
                starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
                ragged_rows.append((target, starts, lengths, arrays))
        attention = {}
        if attention_layers:
            width = max(int(r[2].max()) for r in ragged_rows if len(r[2])) if n else 0
            for block in attention_layers:
                padded = np.zeros((n, width), dtype=np.float32)
                for target, starts, lengths, arrays in ragged_rows:
                    ramp = _ramp(lengths)
                    padded[np.repeat(target, lengths), ramp] = \
                        arrays[f"attn{block}"][np.repeat(starts, lengths) + ramp]
                attention[block] = torch.from_numpy(padded)
        return CachedRows(torch.from_numpy(ids), torch.from_numpy(logprobs),
                          torch.from_numpy(missing),
                          {layer: torch.from_numpy(h) for layer, h in hidden.items()}, attention,
                          None if tail is None else torch.from_numpy(tail))


def reconstruct(rows: CachedRows, vocab_size: int) -> torch.Tensor:
    """The full next-token distribution (log-probs, (n, V)) the cache stands for: the top-k as
    stored, the missing mass spread evenly over the other ids, renormalized to sum to one."""
    n, k = rows.ids.shape
    top = rows.logprobs.exp()
    mass = rows.log_missing.exp()
    total = top.sum(-1) + mass
    spread = (mass / max(vocab_size - k, 1)).unsqueeze(-1).expand(n, vocab_size).clone()
    full = spread.scatter(-1, rows.ids, top) / total.unsqueeze(-1)
    return full.clamp_min(1e-38).log()
