"""Whole runs as the stages call them: training from scratch, importing a teacher, distillation
and quantization, each writing one run folder."""
