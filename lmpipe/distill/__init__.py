"""Distillation: a catalogue of objectives, one teacher interface, one combined objective.

Logit losses (each module's docstring has its formula; p is the teacher, q the student, both at
temperature T over the same support, and every loss is summed over target positions only):

    forward_kl        KL(p || q)                              forward_kl.py
    reverse_kl        KL(q || p)                              reverse_kl.py
    jsd               generalized JSD(beta), TRL/GKD endpoints jsd.py
    tvd               total variation distance                tvd.py
    skew_kl           KL(p || a p + (1-a) q)  (DistiLLM)      skew_kl.py
    skew_reverse_kl   KL(q || a q + (1-a) p)  (DistiLLM)      skew_kl.py
    cakld             g KL(q||p) + (1-g) KL(p||q), g = mean teacher confidence (BitDistiller)
    ce                cross-entropy on the labels

Hidden-state losses (hidden.py, attention_kl.py) compare layer pairs chosen by `layers.py`
through a projector (`projector.py`). `teacher.py` hides whether the teacher's signals come from
the cache or a live model; `objective.py` sums the weighted terms, logs each, and optionally
resolves gradient conflicts (`pcgrad.py`); `student_init.py` copies teacher weights into the
student.
"""
