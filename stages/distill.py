"""DVC stage `distill`: train the student architecture from the teacher cache."""

from lmpipe.entry import stage
from lmpipe.paths import TEACHER_CACHE, TOKENIZER, TOKENS, run_dir
from lmpipe.runs import distill_from_cache


@stage
def distill(params, argv):
    distill_from_cache(params, TOKENS, TOKENIZER, TEACHER_CACHE, run_dir("distill"))


if __name__ == "__main__":
    distill()
