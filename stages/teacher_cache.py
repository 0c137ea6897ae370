"""DVC stage `teacher_cache`: run the teacher once over the train tokens, keep its top-k
distribution (and optionally hidden states) per position, compressed and sharded.

The teacher runs with the attention mask it trained with (`teacher.train.attention`, its given
spans from `teacher.train.loss_on`), and the tail outside the top-k is also stored tempered at
`distill.temperature` when that is not 1 (lmpipe/distill/cache/), so this stage reads
`distill.temperature` (a DVC param of the stage)."""

from lmpipe.core.paths import PARAMS, TEACHER_CACHE, TOKENS, model_dir
from lmpipe.params.arch_support import refuse_unsupported
from lmpipe.stage import stage


@stage
def teacher_cache(params, argv):
    refuse_unsupported(params, "teacher_cache", str(PARAMS))
    # torch: only once the params are valid
    from lmpipe.core.outputs import staged
    from lmpipe.core.section import ConfigError
    from lmpipe.data.batching import make_batches
    from lmpipe.data.tokens import TokenSplit
    from lmpipe.distill.cache.format import CacheSpec, model_fingerprint
    from lmpipe.distill.cache.write import write_cache
    from lmpipe.distill.layers import teacher_layers_used
    from lmpipe.model.build import load_model

    teacher = model_dir("teacher")
    model, tokenizer = load_model(teacher)
    p = params.teacher_cache
    # read the tokens the way the teacher was trained on them (for an imported teacher,
    # teacher.train says how: windows of the student's block size, usually)
    tp = params.teacher.train
    hidden, attention = teacher_layers_used(params.distill, params.student.model.n_layers,
                                            model.config.num_hidden_layers)
    if tp.sampling != "documents":
        attention = ()  # a window's attention depends on where it starts: distill it live
    spec = CacheSpec(p.top_k, p.logprobs, p.shard_positions,
                     hidden if p.hidden_layers == "auto" else tuple(p.hidden_layers),
                     p.hidden_dtype,
                     attention if p.attention_layers == "auto" else tuple(p.attention_layers),
                     temperature=params.distill.temperature)
    split = TokenSplit.open(TOKENS, "train")
    batches = make_batches(split, tp.sampling, p.batch_size, tp.block_size, 0,
                           tokenizer.pad_token_id,
                           getattr(model.config, "max_position_embeddings", None), "all")
    if not 1 <= p.top_k <= model.config.vocab_size:
        raise ConfigError(f"teacher_cache.top_k = {p.top_k}: the teacher's vocabulary has "
                          f"{model.config.vocab_size} ids; expected 1 <= top_k <= "
                          f"{model.config.vocab_size}")
    with staged(TEACHER_CACHE) as out:
        manifest = write_cache(model, split, spec, tokenizer.pad_token_id, out, p.batch_size,
                               model_fingerprint(teacher), batches, attention=tp.attention,
                               loss_on=tp.loss_on)
    print(f"teacher_cache: top-{p.top_k} over {manifest['positions']:,} positions, "
          f"{manifest['bytes_per_token']} bytes/token, {manifest['tokens_per_s']:,.0f} tokens/s "
          f"-> {TEACHER_CACHE}")


if __name__ == "__main__":
    teacher_cache()
