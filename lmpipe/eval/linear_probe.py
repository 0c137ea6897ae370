"""Linear probes: when, and at which layer, do a model's facts about a person become linearly
readable from its hidden state at that person's name?

For every checkpoint of a run (`RUN/checkpoints/step_*/`) and its final model (`RUN/model`), we
run each trained person's name through the model and keep the hidden state at the name's last
token at every layer (transformers' `output_hidden_states`: layer 0 is the token embedding, layer k
the residual stream after block k; the last layer is taken after the final RMSNorm, as transformers
returns it; Mamba's, which has no embedding entry, is re-indexed to match:
lmpipe/model/hidden_states.py). Then, per attribute and per layer, a multinomial logistic
regression on standardized features is fit on 70% of the people and scored on the other 30%.
People, not examples, are split: a test person's name was never seen by the probe, so a probe can
only succeed if the model writes the attribute into the name's representation along directions
shared across people ("born in Paris" is a direction), not if the probe memorizes people itself.

Context. The default (`bio`) is the opening of a biography, `{name}` after the BOS: two of the
three biography templates start "{name} was born on ..." / "{name} is a graduate of ...", so the model
saw exactly this prefix in training, and the position is the same for every attribute (nothing
after the name says which fact comes next), so all six probes read one representation. A causal
model's state at the name's last token depends only on the tokens up to it, so the prefix is all
we feed. Worlds without biographies (the default experiment: tool dialogs only) never show a name
after BOS; `question` then uses each attribute's own recall question, cut after the name
("<|user|>Where was Ada Brown" after the BOS), the context in which Q&A and tool dialogs name a
person.
With a subword tokenizer the cut may merge differently at the boundary than the full text does;
with the byte tokenizer it is exact. `answer` is not a name position: the whole recall prompt, read
at its last token (`<|assistant|>`), where the model retrieves the fact to write it. Measured on
2- and 4-layer byte-level models that recall 97-99% of a small world's facts, the name position
(`bio`, `question`) stays at chance at every layer and checkpoint (the fact is looked up at the
answer position, by attention to the name's bytes), while at `answer` the top layer reads it
(0.7-0.8 against ~0.25 chance); see tests/eval/test_linear_probe.py. What it reads there is the
answer's first byte and, as far as a linear probe can tell, nothing more: its accuracy matches the
next-token baseline below, also when values share first letters in pairs and the model still
writes them whole (bench/name_probe.py, `--values shared`).

Labels. Attributes are probed as stored, except `birth_date`, a date with ~17,000 values, which is
probed as its month (12 values): the year would be a 50-way label like a city, and the month gives
the most examples per class for the same people. A test person whose label never occurs among the
train people cannot be classified by any probe, so the test set is restricted to people whose
label the probe has seen (`n_test` says how many were kept) and `chance`, the accuracy of always
answering the most frequent train label (averaged over labels tied for most frequent), is
measured on the same people. With 24-45 values per attribute, a few hundred people are needed for
every value to appear a few times in training.

Controls (issue 15). A probe's accuracy alone does not say what the model adds: at `answer` the
position is the one whose next token is the answer's first, and a model that has learned to write
the answer holds that token there, so a probe can read "the next byte" and nothing else. Each
probe is therefore reported beside two controls, on the same split and the same test people:

- `control_next_token_accuracy`, the next-token baseline: an exact lookup classifier whose only
  input is the identity of the token that follows the probed position in training text (the
  answer's first token at `answer`; the token after the name at `bio` and `question`, the same for
  everyone, so there the baseline is chance). It answers, for a test person's next token, the
  label most frequent among the train people with that token (the overall most frequent for a
  token no train person has; ties averaged, as for `chance`): the best any classifier of that
  token alone can do on the train people, so `accuracy - control_next_token_accuracy` is what the
  probe reads beyond the next token. It does not depend on the layer.
- `control_task_accuracy` and `selectivity` (Hewitt & Liang 2019): the same probe, fit on a control
  task in which each person's label is replaced by a random label fixed per person (a seeded
  permutation of the people's labels, so the control labels have the real labels' frequencies;
  H&L assign them per word type, and the type here is the person), and `selectivity = accuracy -
  control_task_accuracy`. H&L's control catches a probe that memorizes types; with the split by
  person no test person is ever seen in training, so the control task cannot be memorized and its
  accuracy is an empirical chance level for this probe on these test people: selectivity is the
  probe's margin over it. It does not separate the next token from the fact (a state holding only
  the next token has high selectivity whenever that token predicts the label): that is the
  next-token baseline's job.

Results go to `RUN/linear_probes.jsonl` (overwritten on every run), one line per (checkpoint,
layer, attribute): step, checkpoint (`step_00000200` or `final`), layer, attribute, accuracy,
chance, n_train, n_test, n_classes, control_next_token_accuracy, control_task_accuracy,
selectivity and context (a control is null only when it has no test person to score); `lmpipe
index` loads it into the store's `linear_probes` table. An attribute none of whose test people has
a label seen in training has no accuracy to report and no line (only with very few people).
`lmpipe probe RUN` is the command line (it prints the controls beside the accuracies);
`eval.linear_probe: true` adds the final model's accuracies to the eval stage's records (without
the controls).
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import torch

from lmpipe.core import protocol
from lmpipe.core.run_folder import LINEAR_PROBES_FILE
from lmpipe.data.world import BIO_TEMPLATES
from lmpipe.model.hidden_states import layer_states

PROBE_FILE = LINEAR_PROBES_FILE
CONTEXTS = ("bio", "question", "answer")
Context = Literal["bio", "question", "answer"]
FINAL = "final"
MIN_PEOPLE = 4  # at least one test person and a few to fit on; useful figures need hundreds


def require_sklearn() -> None:
    """Fail before any model is loaded when the optional dependency is missing."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ImportError("linear probes need scikit-learn: pip install 'lmpipe[probes]'") from None


# -- what is probed ------------------------------------------------------------------------------
def probe_label(person: Mapping[str, str], attribute: str) -> str:
    """The class a probe predicts: the attribute's value, but a birth date's month (see module
    docstring: 12 classes instead of ~17,000)."""
    value = person[attribute]
    if attribute == "birth_date":
        return value[5:7]  # ISO dates, YYYY-MM-DD (lmpipe/data/world.py)
    return value


def probe_text(name: str, attribute: str, context: Context = "bio") -> str:
    """The text whose last token is read: up to the name's last character (`bio`, `question`),
    or the whole recall prompt (`answer`)."""
    if context == "bio":
        return name  # the tokenizer adds the BOS
    text = protocol.prompt(attribute, name, with_tool=False)
    if context == "question":
        return text[:text.index(name) + len(name)]
    if context == "answer":
        return text
    raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")


def probe_continuation(person: Mapping[str, str], attribute: str,
                       context: Context = "bio") -> str:
    """What follows the probed position in training text, whose first token the next-token
    baseline sees: the answer as a recall dialog writes it (`answer`), the rest of the question
    (`question`), or the rest of a biography opening with the name (`bio`)."""
    name = person["name"]
    if context == "answer":
        return f"{person[attribute]}{protocol.END}"  # protocol.qa_dialog: prompt, answer, END
    if context == "question":
        text = protocol.question(attribute, name)
        return f"{text[text.index(name) + len(name):]}{protocol.END}{protocol.ASSISTANT}"
    if context == "bio":
        # the first template that opens with the name, up to its next fact: " was born on "
        template = next(t for t in BIO_TEMPLATES if t.startswith("{name}"))
        return template[len("{name}"):].split("{", 1)[0]
    raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")


def next_token_ids(tokenizer, texts: Sequence[str], continuations: Sequence[str]) -> list[int]:
    """The id of the token that follows each text's last token when the text is followed by its
    continuation, as in training. Where a subword tokenizer merges across the boundary (the text's
    own tokens are not a prefix of the whole's), the continuation's first token on its own."""
    heads = tokenizer(list(texts))["input_ids"]
    wholes = tokenizer([t + c for t, c in zip(texts, continuations)])["input_ids"]
    ids = []
    for head, whole, continuation in zip(heads, wholes, continuations):
        if len(whole) > len(head) and whole[:len(head)] == head:
            ids.append(whole[len(head)])
        else:
            ids.append(tokenizer(continuation, add_special_tokens=False)["input_ids"][0])
    return ids


@torch.no_grad()
def last_token_states(model: torch.nn.Module, tokenizer, texts: Sequence[str],
                      batch_size: int = 256) -> np.ndarray:
    """Hidden states at each text's last token, every layer: float32 (n_texts, n_layers + 1, d)."""
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(list(texts[start:start + batch_size]))["input_ids"]
        width = max(len(ids) for ids in encoded)
        # right padding and no attention mask: under causal attention (or a recurrence) a real
        # token never sees the pads after it, so each row's last real state is exactly what the
        # unpadded text gives
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        for row, seq in enumerate(encoded):
            ids[row, :len(seq)] = torch.tensor(seq)
        last = torch.tensor([len(seq) - 1 for seq in encoded])
        ids = ids.to(device)
        # the same layer numbers for every architecture (a recurrent model is causal too)
        hidden = layer_states(model, ids, model(input_ids=ids, output_hidden_states=True))
        rows, last = torch.arange(len(encoded), device=device), last.to(device)
        # one position per row from each layer (not a stack of every position of every layer)
        out.append(torch.stack([h[rows, last] for h in hidden], dim=1).float().cpu().numpy())
    return np.concatenate(out)


# -- the split and the probe ---------------------------------------------------------------------
def split_people(names: Iterable[str], test_fraction: float = 0.3,
                 seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, test) names: a seeded shuffle of the sorted names, so the split depends on who is
    in it, not on the order the database returned them, and every checkpoint, layer and attribute
    sees the same split."""
    order = sorted(set(names))
    if len(order) < 2:
        raise ValueError(f"a linear probe needs at least 2 people, got {len(order)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    random.Random(f"linear-probe-{seed}").shuffle(order)
    n_test = min(len(order) - 1, max(1, round(len(order) * test_fraction)))
    return order[n_test:], order[:n_test]


@dataclass(frozen=True)
class ProbeScore:
    accuracy: float
    chance: float  # always the most frequent train label, on the same test people
    n_train: int
    n_test: int   # test people whose label occurs in train (the only ones a probe can get right)
    n_classes: int  # distinct labels among the train people


def fit_probe(train_x: np.ndarray, train_y: Sequence[str], test_x: np.ndarray,
              test_y: Sequence[str], c: float = 1.0, seed: int = 0) -> ProbeScore | None:
    """Fit a standardized multinomial logistic regression and score it; None when no test person's
    label occurs in train (nothing can be measured)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    counts = Counter(train_y.tolist())
    keep = np.isin(test_y, list(counts))
    if not keep.any():
        return None
    test_x, test_y = test_x[keep], test_y[keep]
    # always answering the most frequent train label; when several tie, the expected accuracy
    # of picking one of them at random (a name order would make the baseline arbitrary)
    top = max(counts.values())
    chance = float(np.mean([np.mean(test_y == label) for label, n in counts.items() if n == top]))
    if len(counts) == 1:  # one class: the probe can only answer it, as the baseline does
        accuracy = chance
    else:
        probe = make_pipeline(StandardScaler(),
                              LogisticRegression(C=c, max_iter=2000, random_state=seed))
        with warnings.catch_warnings():
            # lbfgs may stop short of full convergence on separable data: the score is still
            # what the probe reads, and a warning per (layer, attribute) would drown the table
            warnings.simplefilter("ignore", ConvergenceWarning)
            # few people with many values: sklearn suspects a regression target; it is not one
            warnings.filterwarnings("ignore", message="The number of unique classes")
            probe.fit(train_x, train_y)
        accuracy = float(probe.score(test_x, test_y))
    return ProbeScore(accuracy, chance, len(train_y), int(keep.sum()), len(counts))


def _expected_hit(counts: Counter, label: str) -> float:
    """Accuracy of answering the most frequent label of `counts` on one person labelled `label`;
    when several tie, the expectation over picking one of them (as `chance` does)."""
    top = max(counts.values())
    tied = [value for value, n in counts.items() if n == top]
    return (label in tied) / len(tied)


def next_token_baseline(train_tokens: Sequence[int], train_y: Sequence[str],
                        test_tokens: Sequence[int], test_y: Sequence[str]) -> float | None:
    """Accuracy of the exact lookup classifier from the next token's identity to the label, on
    the test people whose label occurs in train (those the probe is scored on); None when there
    are none. A token no train person has gets the overall most frequent train label."""
    overall = Counter(train_y)
    by_token: dict[int, Counter] = {}
    for token, label in zip(train_tokens, train_y):
        by_token.setdefault(token, Counter())[label] += 1
    hits = [_expected_hit(by_token.get(token, overall), label)
            for token, label in zip(test_tokens, test_y) if label in overall]
    return float(np.mean(hits)) if hits else None


def control_labels(names: Sequence[str], labels: Sequence[str], seed: int = 0,
                   attribute: str = "") -> list[str]:
    """Hewitt & Liang's control task, with the person as the type: each person's label replaced by
    a random one fixed per person, in the order of `names`. A seeded permutation of the labels
    over the sorted names, so the control labels have the real ones' frequencies (its chance is
    the probe's) and a person's control label depends on who is probed and the seed, not on the
    order the names come in; each attribute gets its own permutation."""
    if len(names) != len(labels):
        raise ValueError(f"{len(names)} names but {len(labels)} labels")
    order = sorted(range(len(names)), key=lambda i: names[i])
    shuffled = [labels[i] for i in order]
    random.Random(f"linear-probe-control-{seed}-{attribute}").shuffle(shuffled)
    control = [""] * len(names)
    for i, label in zip(order, shuffled):
        control[i] = label
    return control


def probe_model(model: torch.nn.Module, tokenizer, people: Sequence[Mapping[str, str]],
                attributes: Sequence[str] = protocol.ATTRIBUTES, context: Context = "bio",
                test_fraction: float = 0.3, seed: int = 0, batch_size: int = 256,
                c: float = 1.0, controls: bool = True) -> list[dict[str, Any]]:
    """One record per (layer, attribute): layer, attribute, the ProbeScore fields and, with
    `controls`, control_next_token_accuracy, control_task_accuracy and selectivity (module
    docstring; the control task fits a second probe per layer and attribute)."""
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    by_name = {p["name"]: p for p in people}
    train_names, test_names = split_people(by_name, test_fraction, seed)
    names = train_names + test_names
    n_train = len(train_names)
    states: np.ndarray | None = None
    records = []
    for attribute in attributes:
        texts = [probe_text(n, attribute, context) for n in names]
        if states is None or context != "bio":  # only a bio prefix is the same for every attribute
            states = last_token_states(model, tokenizer, texts, batch_size)
        labels = [probe_label(by_name[n], attribute) for n in names]
        if controls:
            tokens = next_token_ids(tokenizer, texts, [probe_continuation(by_name[n], attribute,
                                                                          context) for n in names])
            control = control_labels(names, labels, seed, attribute)
        for layer in range(states.shape[1]):
            score = fit_probe(states[:n_train, layer], labels[:n_train],
                              states[n_train:, layer], labels[n_train:], c, seed)
            if score is None:
                continue
            record = {"layer": layer, "attribute": attribute, **asdict(score)}
            if controls:
                record.update(control_scores(states[:, layer], labels, tokens, control, n_train,
                                             score.accuracy, c, seed))
            records.append(record)
    return records


def control_scores(states: np.ndarray, labels: Sequence[str], tokens: Sequence[int],
                   control: Sequence[str], n_train: int, accuracy: float, c: float = 1.0,
                   seed: int = 0) -> dict[str, float | None]:
    """The controls of one probe whose people are the first `n_train` rows (train) and the rest
    (test): the next-token baseline on `tokens`, the same probe fit on the `control` labels, and
    selectivity, the probe's `accuracy` less the control task's."""
    baseline = next_token_baseline(tokens[:n_train], labels[:n_train], tokens[n_train:],
                                   labels[n_train:])
    task = fit_probe(states[:n_train], control[:n_train], states[n_train:], control[n_train:], c,
                     seed)
    return {"control_next_token_accuracy": baseline,
            "control_task_accuracy": None if task is None else task.accuracy,
            "selectivity": None if task is None else accuracy - task.accuracy}


# -- a run's checkpoints -------------------------------------------------------------------------


def eval_records(model: torch.nn.Module, tokenizer, people: Sequence[Mapping[str, str]],
                 context: Context = "bio", seed: int = 0,
                 batch_size: int = 256) -> list[dict[str, Any]]:
    """The eval stage's records: `linear_probe_accuracy` per layer (split `layer<k>`) and
    attribute, the mean over attributes per layer (attribute None), and `linear_probe_chance` per
    attribute and on average (split `people`: the baseline does not depend on the layer)."""
    require_sklearn()
    # the eval stage reports accuracy and chance only: no control probes to fit
    scores = probe_model(model, tokenizer, people, context=context, seed=seed,
                         batch_size=batch_size, controls=False)
    records = [{"metric": "linear_probe_accuracy", "split": f"layer{r['layer']}",
                "attribute": r["attribute"], "value": r["accuracy"], "n": r["n_test"]}
               for r in scores]
    for layer in sorted({r["layer"] for r in scores}):
        mine = [r for r in scores if r["layer"] == layer]
        records.append({"metric": "linear_probe_accuracy", "split": f"layer{layer}",
                        "attribute": None, "value": float(np.mean([r["accuracy"] for r in mine])),
                        "n": sum(r["n_test"] for r in mine)})
    chance = {r["attribute"]: r for r in scores if r["layer"] == 0}
    records += [{"metric": "linear_probe_chance", "split": "people", "attribute": a,
                 "value": r["chance"], "n": r["n_test"]} for a, r in chance.items()]
    if chance:
        records.append({"metric": "linear_probe_chance", "split": "people", "attribute": None,
                        "value": float(np.mean([r["chance"] for r in chance.values()])),
                        "n": sum(r["n_test"] for r in chance.values())})
    return records
