"""DVC stage `teacher_cache`: run the teacher once over the train tokens, keep its top-k log-probs."""

from lmpipe.batching import make_batches
from lmpipe.entry import stage
from lmpipe.model import load_model
from lmpipe.paths import TEACHER_CACHE, TOKENS, model_dir
from lmpipe.teacher_cache import model_fingerprint, write_cache
from lmpipe.tokens import TokenSplit


@stage
def teacher_cache(params, argv):
    teacher = model_dir("teacher")
    model, tokenizer = load_model(teacher)
    p = params.teacher_cache
    split = TokenSplit.open(TOKENS, "train")
    tp = params.teacher.train  # read the tokens the way the teacher was trained on them
    batches = make_batches(split, tp.sampling, p.batch_size, tp.block_size, 0, tokenizer.pad_token_id,
                           model.config.max_position_embeddings, "all")
    manifest = write_cache(model, split, p.top_k, tokenizer.pad_token_id, TEACHER_CACHE,
                           p.batch_size, model_fingerprint(teacher), batches)
    print(f"teacher_cache: top-{p.top_k} over {manifest['positions']} positions -> {TEACHER_CACHE}")


if __name__ == "__main__":
    teacher_cache()
