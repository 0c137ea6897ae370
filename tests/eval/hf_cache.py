"""Tiny stand-ins for the distily preset's datasets, written into a Hugging Face datasets cache
exactly where a first online `load_dataset(repo, config)` prepares them
(`<namespace>___<name>/<config>/0.0.0/<hash>/`: dataset_info.json and one Arrow file per split),
so `datasets` loads them offline through its cache fallback, as it would a user's real cache.

Each dataset has the real one's schema (column names, nesting, ClassLabel names) for the columns
lm-eval's task and lmpipe's task files read, and a couple of rows per split.
"""

from __future__ import annotations

from pathlib import Path

from datasets import ClassLabel, Dataset, Features, Sequence, Value
from datasets.arrow_writer import ArrowWriter
from datasets.info import DatasetInfo
from datasets.splits import SplitDict, SplitInfo

from lmpipe.eval.task_names import MATH_TOPICS, MMLU_SUBJECTS, PRESET_DATASETS


def write_cached(cache: Path, repo: str, config: str, splits: dict[str, list[dict]],
                 features: Features) -> Path:
    """Write `splits` (name -> rows) of `repo`'s `config` into the datasets cache `cache`."""
    namespace, name = repo.split("/")
    folder = cache / f"{namespace}___{name}" / config / "0.0.0" / "fixture"
    folder.mkdir(parents=True, exist_ok=True)
    infos = SplitDict(dataset_name=name)
    for split, rows in splits.items():
        table = Dataset.from_list(rows, features=features).data.table
        with ArrowWriter(path=str(folder / f"{name}-{split}.arrow"), features=features) as writer:
            writer.write_table(table)
            count, size = writer.finalize()
        infos.add(SplitInfo(name=split, num_bytes=size, num_examples=count, dataset_name=name))
    DatasetInfo(features=features, config_name=config, dataset_name=name,
                splits=infos).write_to_directory(str(folder))
    return folder


MMLU = Features({"question": Value("string"), "subject": Value("string"),
                 "choices": Sequence(Value("string")),
                 "answer": ClassLabel(names=["A", "B", "C", "D"])})
MATH = Features({"problem": Value("string"), "level": Value("string"), "type": Value("string"),
                 "solution": Value("string")})
COLA = Features({"sentence": Value("string"),
                 "label": ClassLabel(names=["unacceptable", "acceptable"]),
                 "idx": Value("int32")})
MNLI = Features({"premise": Value("string"), "hypothesis": Value("string"),
                 "label": ClassLabel(names=["entailment", "neutral", "contradiction"]),
                 "idx": Value("int32")})
SQUAD = Features({"doc_id": Value("string"), "title": Value("string"),
                  "context": Value("string"), "question": Value("string"),
                  "text": Value("string"), "value": Value("string")})
TRIVIA = Features({"question": Value("string"), "question_id": Value("string"),
                   "question_source": Value("string"),
                   "answer": {"aliases": Sequence(Value("string")),
                              "normalized_aliases": Sequence(Value("string")),
                              "normalized_value": Value("string"), "type": Value("string"),
                              "value": Value("string")}})
HOTPOT = Features({"id": Value("string"), "question": Value("string"),
                   "answer": Value("string"), "type": Value("string"), "level": Value("string"),
                   "supporting_facts": {"title": Sequence(Value("string")),
                                        "sent_id": Sequence(Value("int32"))},
                   "context": {"title": Sequence(Value("string")),
                               "sentences": Sequence(Sequence(Value("string")))}})
CONLL_NAMES = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
CONLL = Features({"id": Value("string"), "tokens": Sequence(Value("string")),
                  "pos_tags": Sequence(Value("int32")), "chunk_tags": Sequence(Value("int32")),
                  "ner_tags": Sequence(ClassLabel(names=CONLL_NAMES))})

# two CoNLL test sentences: EU (ORG), German (MISC), British (MISC); Peter Blackburn (PER);
# BRUSSELS (LOC) -> 5 entity questions
CONLL_TEST = [
    {"id": "0", "tokens": ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb",
                           "."],
     "pos_tags": [0] * 9, "chunk_tags": [0] * 9, "ner_tags": [3, 0, 7, 0, 0, 0, 7, 0, 0]},
    {"id": "1", "tokens": ["Peter", "Blackburn", "in", "BRUSSELS"], "pos_tags": [0] * 4,
     "chunk_tags": [0] * 4, "ner_tags": [1, 2, 0, 5]},
]


def _mmlu(subject: str, n: int) -> list[dict]:
    return [{"question": f"Which letter is the {i}th of ABCD?", "subject": subject,
             "choices": ["one", "two", "three", "four"], "answer": i % 4} for i in range(n)]


def _math(topic: str, n: int) -> list[dict]:
    return [{"problem": f"What is {i} + {i}?", "level": "Level 1", "type": topic,
             "solution": f"It is $\\boxed{{{2 * i}}}$."} for i in range(n)]


def write_preset_fixtures(cache: Path, rows: int = 2) -> dict[str, int]:
    """Every dataset of the distily preset, `rows` rows per split (CoNLL: the two sentences
    above); returns the number of documents each preset task evaluates."""
    def write(task: str, config: str, splits: dict[str, list[dict]], features: Features):
        write_cached(cache, PRESET_DATASETS[task][0], config, splits, features)

    for subject in MMLU_SUBJECTS:
        write("mmlu", subject, {"test": _mmlu(subject, rows), "dev": _mmlu(subject, 1)}, MMLU)
    for topic in MATH_TOPICS:
        write("hendrycks_math", topic, {"train": _math(topic, 1), "test": _math(topic, rows)},
              MATH)
    cola = [{"sentence": f"The cat sat on mat {i}.", "label": i % 2, "idx": i}
            for i in range(rows)]
    write("cola", "cola", {"train": cola, "validation": cola, "test": cola}, COLA)
    mnli = [{"premise": f"A man plays guitar {i}.", "hypothesis": "A man plays music.",
             "label": i % 3, "idx": i} for i in range(rows)]
    write("mnli", "mnli", {s: mnli for s in ("train", "validation_matched",
                                             "validation_mismatched", "test_matched",
                                             "test_mismatched")}, MNLI)
    squad = [{"doc_id": str(i), "title": "Paris", "context": "Paris is the capital of France.",
              "question": "What is the capital of France?",
              "text": "Paris is the capital of France. The capital of France is",
              "value": "Paris"} for i in range(rows)]
    write("squad_completion", "default", {"validation": squad}, SQUAD)
    trivia = [{"question": f"Which planet is third from the sun {i}", "question_id": str(i),
               "question_source": "fixture",
               "answer": {"aliases": ["Earth", "the Earth"],
                          "normalized_aliases": ["earth", "the earth"],
                          "normalized_value": "earth", "type": "WikipediaEntity",
                          "value": "Earth"}} for i in range(rows)]
    write("triviaqa", "rc.nocontext", {"train": trivia, "validation": trivia}, TRIVIA)
    hotpot = [{"id": str(i), "question": "Which city is the capital of the country Ada lives in?",
               "answer": "Paris", "type": "bridge", "level": "easy",
               "supporting_facts": {"title": ["Ada", "France"], "sent_id": [0, 0]},
               "context": {"title": ["Ada", "Mars", "France"],
                           "sentences": [["Ada lives in France."], ["Mars is red."],
                                         ["France's capital is Paris.", " It is large."]]}}
              for i in range(rows)]
    write("lmpipe_hotpotqa", "distractor", {"train": hotpot, "validation": hotpot}, HOTPOT)
    write("lmpipe_conll2003", "conll2003",
          {"train": CONLL_TEST, "validation": CONLL_TEST, "test": CONLL_TEST}, CONLL)
    return {"mmlu": rows * len(MMLU_SUBJECTS), "hendrycks_math": rows * len(MATH_TOPICS),
            "cola": rows, "mnli": rows, "squad_completion": rows, "triviaqa": rows,
            "lmpipe_hotpotqa": rows, "lmpipe_conll2003": 5}
