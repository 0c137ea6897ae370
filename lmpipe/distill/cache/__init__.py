"""The teacher cache: the teacher's top-k next-token distribution at every training position
(format.py: what is stored and how; write.py: the teacher's one pass; read.py: memory-mapped reads).

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
