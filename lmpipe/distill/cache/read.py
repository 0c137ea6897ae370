"""Reading the teacher cache: every shard checked against the manifest's sha256, then
memory-mapped and addressed by the flat position in the train token stream."""


from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmpipe.distill.cache.format import (FORMAT_VERSION, REBUILD, decode_logprobs, ramp,
                                         shard_files)
from lmpipe.core.artifacts import ArtifactError, verify_sha256
from lmpipe.core.section import ConfigError


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
                    offsets = ramp(lengths)
                    padded[np.repeat(target, lengths), offsets] = \
                        arrays[f"attn{block}"][np.repeat(starts, lengths) + offsets]
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
