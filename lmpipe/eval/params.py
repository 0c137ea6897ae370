"""The eval section of params.yaml: the people sampled, generation, lm-eval tasks, linear probes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmpipe.core.section import Section


class EvalParams(Section):
    seed: int = 0
    trained_people: int = Field(200, ge=1, description="trained people sampled for recall/tool eval")
    heldout_people: int = Field(200, ge=0)
    batch_size: int = Field(256, ge=1)
    max_new_tokens: int = Field(48, ge=1)
    conversations: int = Field(0, ge=0, description="people per split (trained, held-out) whose "
                               "conversation trees are asked through the tool "
                               "(lmpipe/eval/conversations.py): conversation_accuracy per turn")
    conversation_turns: int = Field(6, ge=1, le=6, description="questions in a conversation's "
                                    "main line, each a different attribute of its person")
    conversation_branches: int = Field(3, ge=0, description="follow-ups per conversation, each "
                                       "forking after a turn of the main line")
    tool_error_rate: float = Field(0.0, ge=0.0, lt=1.0, description="conversations: share of "
                                   "queries the database first answers 'ERROR: busy, try again' "
                                   "(the model may call twice a turn)")
    conversation_cache: bool = Field(True, description="conversations: a prefix-tree cache "
                                     "(lmpipe/eval/prefix_cache.py: KV; recurrent models: state "
                                     "snapshots, lmpipe/eval/recurrent_prefix_cache.py) carries "
                                     "each conversation from turn to turn, so a turn prefills "
                                     "only its new tokens; same answers, prefix_cache_* eval "
                                     "records")
    conversation_cache_mb: float | None = Field(None, gt=0, description="conversations: memory "
                                                "budget of that cache in MB (host; the device's "
                                                "too on a GPU), least-recently-used pages beyond "
                                                "it paged out to a temporary folder on disk; "
                                                "None = unbounded, no disk")
    sample_prompt: str = Field("", description="if set, each model continues this prompt into "
                               "runs/eval/samples.jsonl (sampling with temperature and top_k)")
    sample_tokens: int = Field(200, ge=1)
    temperature: float = Field(0.8, ge=0.0, description="0 = greedy")
    top_k: int = Field(40, ge=1)
    knowledge_bits: bool | Literal["auto"] = Field(
        "auto", description="knowledge bits (lmpipe/eval/knowledge.py: every candidate value of "
        "every sampled fact scored, about 40% of the eval stage's time); auto = when the training "
        "text states facts a model could recall (world.qa_dialogs or world.bios_per_person > 0), "
        "since a world taught only through tool replies stores none and recall without the tool "
        "already shows it")
    harness_tasks: list[str] = Field(
        default_factory=list, description="lm-evaluation-harness tasks run on every model (needs "
        "pip install 'lmpipe[harness]'); 'people' expands to lmpipe's generated people_recall "
        "(generation, exact match) and people_recall_mc (multiple choice) on the sampled trained "
        "people; 'val_text' (lm-eval's perplexity and bits per byte) and 'val_next_line' (the "
        "true next line among four) run over the validation documents of any corpus; 'distily' "
        "is the preset mmlu, hendrycks_math, cola, mnli, squad_completion, triviaqa, "
        "lmpipe_hotpotqa, lmpipe_conll2003 (lmpipe/eval/task_names.py); any task lm-eval knows "
        "runs if its data is in the local Hugging Face datasets cache. Empty by default: it "
        "slows the eval stage")
    harness_limit: int | None = Field(None, ge=1, description="at most this many samples per "
                                      "harness task; None = all")
    linear_probe: bool = Field(False, description="fit linear probes on every model's hidden "
                               "states (lmpipe/eval/linear_probe.py, needs scikit-learn: pip "
                               "install 'lmpipe[probes]'): linear_probe_accuracy per layer and "
                               "attribute")
    linear_probe_people: int = Field(1000, ge=4, description="trained people the probes use "
                                     "(a seeded sample; 70% fit the probe, 30% score it)")
    linear_probe_context: Literal["bio", "question", "answer"] = Field(
        "bio", description="where the probe reads: bio = the name's last token at the start of a "
        "biography; question = the name's last token in the recall question; answer = the recall "
        "prompt's last token, where the model is about to answer")
