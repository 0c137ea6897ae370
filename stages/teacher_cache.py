"""DVC stage `teacher_cache`: run the teacher once over the train tokens, keep its top-k log-probs."""

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
    manifest = write_cache(model, TokenSplit.open(TOKENS, "train"), p.top_k, tokenizer.pad_token_id,
                           TEACHER_CACHE, p.batch_size, model_fingerprint(teacher))
    print(f"teacher_cache: top-{p.top_k} over {manifest['positions']} positions -> {TEACHER_CACHE}")


if __name__ == "__main__":
    teacher_cache()
