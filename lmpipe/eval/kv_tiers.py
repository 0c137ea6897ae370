"""Memory tiers for the prefix cache's KV pages: the compute device (when the model is on an
accelerator), host memory, and disk (one append-only file of raw pages, `pages.bin`, in a folder of the cache's
own under a directory the caller gives). Each tier has a byte budget; the cache (lmpipe/eval/prefix_cache.py) decides which pages
move, this module moves them and counts the bytes.

The disk tier's bytes are those of its pages on disk, which include the copies of pages read back
into memory: a page's KV never changes, so its disk copy stays clean and paging it out again
writes nothing; a disk over budget drops those copies first. A page on disk is a byte range of
the one file (written with one write, read back with one `os.pread`): a file a page cost a file
creation each, which on a busy disk took longer than the prefill the cache saves
(bench/prefix_cache.py). The range of a dropped page is reused by the next page of the same size;
the file goes with `clear` and `close`.

A page (`KVPage`) is the KV of one span of tokens: one tensor (layers, 2, kv_heads, span,
head_dim), K at [:, 0] and V at [:, 1], so layer l's K and V are (kv_heads, span, head_dim), as the
model's cache holds them for one row. One tensor a page keeps a split and a disk page to a single
slice and a single file entry. The recurrent cache's pages (`StatePage`,
lmpipe/eval/recurrent_prefix_cache.py) are one row's state snapshot as raw bytes, moved the same
way; they are never split.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

DEVICE, HOST, DISK = "device", "host", "disk"
PAGES_FILE = "pages.bin"


class KVPage:
    """The KV of one span, in one tier: `kv` in memory (device or host), or a byte range of the
    disk file at `offset` (a page in memory may keep its disk copy as a clean copy)."""

    __slots__ = ("dtype", "kv", "length", "nbytes", "offset", "shape", "tier")

    def __init__(self, kv: torch.Tensor, tier: str) -> None:
        self.kv: torch.Tensor | None = kv
        self.offset: int | None = None
        self.tier = tier
        self.shape, self.dtype = tuple(kv.shape), kv.dtype
        self.length = kv.shape[3]
        self.nbytes = kv.numel() * kv.element_size()


class Tiers:
    """Where pages live and what moving them costs. `names` is the tier order, fastest first:
    (device, host, disk) or (host, disk) on CPU, or without disk when there is no directory."""

    def __init__(self, names: tuple[str, ...], budgets: dict[str, int | None],
                 compute_device: torch.device, directory: str | Path | None) -> None:
        unknown = set(budgets) - set(names)
        if unknown:
            raise ValueError(f"prefix cache budgets: unknown tier(s) {sorted(unknown)}; expected "
                             f"some of {list(names)}")
        negative = {name: b for name, b in budgets.items() if b is not None and b < 0}
        if negative:
            raise ValueError(f"prefix cache budgets: {negative} below 0; expected bytes >= 0 "
                             "(or None: unbounded)")
        self.names = names
        self.budgets = {name: budgets.get(name) for name in names}
        self.used = dict.fromkeys(names, 0)
        self.peak = dict.fromkeys(names, 0)       # the most a tier ever held, mid-batch too
        self.paged_out = dict.fromkeys(names, 0)  # bytes that left a tier for the next one
        self.paged_in = dict.fromkeys(names, 0)   # bytes that came back into a tier from below
        self.compute_device = compute_device
        self.folder: Path | None = None
        self._fd: int | None = None  # the pages file, opened at the first write
        self._end = 0  # its length
        self._holes: dict[int, list[int]] = defaultdict(list)  # nbytes -> free offsets
        self.written = 0  # bytes written to disk (a page read back keeps its copy: written once)
        if DISK in names:
            if directory is None:
                raise ValueError("prefix cache: a disk tier needs a directory")
            Path(directory).mkdir(parents=True, exist_ok=True)
            # a folder of this cache's own: pages of another cache (or a crashed run) are
            # never read, and `clear` removes exactly this cache's files
            self.folder = Path(tempfile.mkdtemp(prefix="prefix-cache-", dir=directory))

    @property
    def top(self) -> str:
        return self.names[0]

    def next_tier(self, tier: str) -> str | None:
        i = self.names.index(tier)
        return self.names[i + 1] if i + 1 < len(self.names) else None

    def over(self, tier: str) -> int:
        """Bytes above the tier's budget (0 when within it or unbounded)."""
        budget = self.budgets[tier]
        return 0 if budget is None else max(0, self.used[tier] - budget)

    def add(self, kv: torch.Tensor, kind: type[KVPage] = KVPage) -> KVPage:
        """A new page in the top tier; `kind` is the page's class (the recurrent cache's state
        snapshots are pages of another shape, lmpipe/eval/recurrent_prefix_cache.py)."""
        page = kind(kv.to(self._device_of(self.top)), self.top)
        self._grow(self.top, page.nbytes)
        return page

    def read(self, page: KVPage) -> torch.Tensor:
        """The page's KV on the compute device, paging it into the top tier first (a hit)."""
        while page.tier != self.top:
            self._move_up(page)
        return page.kv

    def page_out(self, page: KVPage) -> None:
        """Move a page one tier down (the caller checked there is one). A page that came back
        from disk kept its file (KV never changes): going down again costs no write."""
        below = self.next_tier(page.tier)
        self.used[page.tier] -= page.nbytes
        self.paged_out[page.tier] += page.nbytes
        if below == DISK:
            if page.offset is None:
                self._write(page, page.kv)
            page.kv = None
        else:
            page.kv = page.kv.to(self._device_of(below))
            self._grow(below, page.nbytes)
        page.tier = below

    def _move_up(self, page: KVPage) -> None:
        above = self.names[self.names.index(page.tier) - 1]
        if page.tier == DISK:
            page.kv = self._load(page).to(self._device_of(above))
        else:
            self.used[page.tier] -= page.nbytes
            page.kv = page.kv.to(self._device_of(above))
        page.tier = above
        self._grow(above, page.nbytes)
        self.paged_in[above] += page.nbytes

    def forget_file(self, page: KVPage) -> None:
        """Drop the disk copy of a page held in memory too (room on disk)."""
        self._unlink(page)

    def split(self, page: KVPage, k: int) -> tuple[KVPage, KVPage]:
        """The pages of the first k tokens and of the rest, in the page's tier. In memory the
        halves are copies, so the whole's storage is freed and each half's bytes are its own."""
        on_disk = page.tier == DISK
        kv = self._load(page) if on_disk else page.kv
        self._unlink(page)
        halves = []
        for part in (kv[:, :, :, :k], kv[:, :, :, k:]):
            half = KVPage(part.clone(), page.tier)
            if on_disk:
                self._write(half, half.kv)
                half.kv = None
            halves.append(half)
        # the halves' bytes sum to the whole's: the memory tier's total does not change
        return halves[0], halves[1]

    def drop(self, page: KVPage) -> None:
        """Forget a page (an evicted node)."""
        if page.tier != DISK:
            self.used[page.tier] -= page.nbytes
        self._unlink(page)
        page.kv = None

    def _write(self, page: KVPage, kv: torch.Tensor) -> None:
        if self._fd is None:
            self._fd = os.open(self.folder / PAGES_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        holes = self._holes.get(page.nbytes)
        if holes:
            page.offset = holes.pop()
        else:
            page.offset, self._end = self._end, self._end + page.nbytes
        data = kv.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()
        os.pwrite(self._fd, data, page.offset)
        self.written += page.nbytes
        self._grow(DISK, page.nbytes)

    def _load(self, page: KVPage) -> torch.Tensor:
        """A disk page's KV, read back into host memory."""
        data = bytearray(os.pread(self._fd, page.nbytes, page.offset))
        return torch.frombuffer(data, dtype=page.dtype).view(page.shape)

    def _unlink(self, page: KVPage) -> None:
        if page.offset is not None:
            self._holes[page.nbytes].append(page.offset)
            self.used[DISK] -= page.nbytes
            page.offset = None

    def disk_pages(self) -> int:
        """Bytes of the pages file (live pages and reusable holes)."""
        return self._end

    def clear(self) -> None:
        """Forget every page: memory is the caller's to drop, the pages file is deleted."""
        self._close_file()
        if self.folder is not None:
            (self.folder / PAGES_FILE).unlink(missing_ok=True)
        self.used = dict.fromkeys(self.names, 0)

    def close(self) -> None:
        """Remove this cache's disk folder."""
        self._close_file()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._end, self._holes = None, 0, defaultdict(list)

    def _grow(self, tier: str, nbytes: int) -> None:
        self.used[tier] += nbytes
        self.peak[tier] = max(self.peak[tier], self.used[tier])

    def _device_of(self, tier: str) -> torch.device:
        return self.compute_device if tier == DEVICE else torch.device("cpu")
