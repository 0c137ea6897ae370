"""Document processing and scoring for lmpipe's own lm-eval tasks (the YAML files beside this
module): benchmarks of the distily preset that lm-eval has no task for.

- HotpotQA (`lmpipe_hotpotqa.yaml`, hotpotqa/hotpot_qa, distractor config): the question with
  its two gold paragraphs (the titles its supporting facts name, all their sentences), not the
  eight distractors, which would not fit a small model's context. Scored with HotpotQA's own
  answer metrics: exact match and token F1 after its normalization (lowercase, no punctuation, no
  articles a/an/the, single spaces), where yes/no/noanswer F1 counts only on an exact match.
- CoNLL-2003 (`lmpipe_conll2003.yaml`, eriktks/conll2003): every gold entity of a test sentence
  becomes a question, "What kind of entity is X?", answered by the log-likelihood of person,
  organization, location or other (MISC); accuracy. A causal LM scores the four answers; no tag
  decoding is involved, so any tokenizer works.
"""

from __future__ import annotations

import re
import string
from collections import Counter

# eriktks/conll2003's ner_tags ClassLabel order
CONLL_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
CONLL_TYPES = {"PER": 0, "ORG": 1, "LOC": 2, "MISC": 3}  # index into the task's doc_to_choice


def normalize_answer(text: str) -> str:
    """HotpotQA's (and SQuAD's) answer normalization."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_f1(prediction: str, gold: str) -> float:
    """HotpotQA's token F1 between a prediction and the gold answer."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if (pred in ("yes", "no", "noanswer") or ref in ("yes", "no", "noanswer")) and pred != ref:
        return 0.0
    common = Counter(pred.split()) & Counter(ref.split())
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred.split()), same / len(ref.split())
    return 2 * precision * recall / (precision + recall)


def hotpotqa_context(doc: dict) -> str:
    """The gold paragraphs of a HotpotQA question, in the order the dataset lists them."""
    gold = set(doc["supporting_facts"]["title"])
    paragraphs = [f"{title}: {''.join(sentences).strip()}"
                  for title, sentences in zip(doc["context"]["title"], doc["context"]["sentences"])
                  if title in gold]
    return "\n".join(paragraphs)


def hotpotqa_docs(dataset):
    return dataset.map(lambda doc: {"gold_context": hotpotqa_context(doc)})


def hotpotqa_results(doc: dict, results: list[str]) -> dict[str, float]:
    prediction = results[0].strip()
    return {"exact_match": float(normalize_answer(prediction) == normalize_answer(doc["answer"])),
            "f1": answer_f1(prediction, doc["answer"])}


def conll_entities(tokens: list[str], tags: list[int]) -> list[tuple[str, str]]:
    """The (text, type) of each entity in a BIO-tagged sentence (an I- after O or after another
    type starts an entity too, as conlleval reads it)."""
    entities, words, kind = [], [], None
    for token, tag in zip([*tokens, ""], [*tags, 0]):
        name = CONLL_TAGS[tag]
        prefix, label = (name.split("-", 1) + [None])[:2]
        if kind is not None and (prefix != "I" or label != kind):
            entities.append((" ".join(words), kind))
            words, kind = [], None
        if prefix in ("B", "I") and kind is None:
            words, kind = [token], label
        elif prefix == "I":
            words.append(token)
    return entities


def conll_docs(dataset):
    """One question per gold entity of every sentence."""
    def expand(batch):
        out = {"sentence": [], "entity": [], "label": []}
        for tokens, tags in zip(batch["tokens"], batch["ner_tags"]):
            for text, kind in conll_entities(tokens, tags):
                out["sentence"].append(" ".join(tokens))
                out["entity"].append(text)
                out["label"].append(CONLL_TYPES[kind])
        return out

    return dataset.map(expand, batched=True, remove_columns=dataset.column_names)
