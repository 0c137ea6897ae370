"""Put the teacher's and the student's next-token distributions on one support, at temperature T.

A live teacher gives full distributions: both sides are plain softmaxes over the vocabulary. A
cached teacher gives only its top-k (ids, log-probs) and what it left out, so both sides become
k + 1 buckets: the k cached tokens, then the rest R (the V - k other ids).

    teacher:  softmax([log p_1 / T .. log p_k / T, log S_T])   S_T = sum_{j in R} p_j^(1/T)
              softmax([log p_1 / T .. log p_k / T, -inf])      the tail taken as zero (`zero`)
    student:  [log q_1 .. log q_k, log (1 - sum_i q_i)]        q = softmax(z / T)

The teacher's line is the full tempered teacher p_i^(1/T) / sum_j p_j^(1/T) with its tail summed
into one bucket (`residual`), so the rest bucket's weight is the tail's tempered sum S_T, not its
mass m tempered. At T = 1, S_1 = m. At T > 1, x^(1/T) is concave with 0^(1/T) = 0, hence
subadditive, so S_T >= m^(1/T), with equality only for a one-token tail: the old model
`log m / T` took the tail as one token and underweighted it (mass 0.01 spread over 233 byte ids
at T = 2: S_T = sqrt(233 * 0.01) = 1.53 against m^(1/2) = 0.1). S_T cannot be recovered from m,
so the cache stores it at the distill temperature (lmpipe/distill/cache/: the `tail` column)
and the live teacher computes it from its logits (teacher_cache.log_tempered_tail). A
distribution without it at the asked T is an error, never a silent approximation; an empty tail
(k = V) is empty at every T.

The student's rest bucket is exact to float32 (floored at 1e-7: one full-vocabulary softmax is
the whole cost, which matters with a 49k vocabulary). With k equal to the vocabulary both rest
buckets are empty and the result equals the full-distribution computation (the offline = online
test checks it); with k < V the cached and live truncated teachers agree to storage precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class TailTemperatureError(ValueError):
    """The teacher's tail is not known at the temperature a loss asks for."""


@dataclass
class TeacherDistribution:
    """Teacher next-token log-probs (at T = 1) at n positions, and what the top-k leaves out."""

    logprobs: torch.Tensor                  # (n, k) at `ids`, or (n, V) when `ids` is None
    ids: torch.Tensor | None = None         # (n, k) int64 token ids
    log_missing: torch.Tensor | None = None  # (n,) log m: the mass outside `ids` (T = 1)
    log_tail: torch.Tensor | None = None    # (n,) log S_T at `tail_temperature` (module docstring)
    tail_temperature: float | None = None   # the T of `log_tail`

    def label_logprobs(self, labels: torch.Tensor) -> torch.Tensor:
        """log p(label) per position; a label outside the cached top-k counts as probability 0."""
        if self.ids is None:
            return self.logprobs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        hit = self.ids == labels.unsqueeze(-1)
        found = torch.where(hit, self.logprobs, torch.full_like(self.logprobs, float("-inf")))
        return found.max(-1).values

    def tempered_tail(self, temperature: float) -> torch.Tensor:
        """(n,) log S_T = log sum_{j outside ids} p_j^(1/T): the rest bucket's unnormalized log
        weight next to the top-k's log p_i / T. Raises TailTemperatureError when the tail is
        non-empty and known only at another temperature."""
        if self.log_missing is None:
            raise TailTemperatureError("no missing mass recorded for this teacher distribution")
        if temperature == 1.0:
            return self.log_missing
        if self.log_tail is not None and self.tail_temperature == temperature:
            return self.log_tail
        empty = self.log_missing == float("-inf")
        if bool(empty.all()):  # k = V: nothing outside, at any temperature
            return self.log_missing
        known = ("T = 1 only" if self.log_tail is None
                 else f"T = 1 and T = {self.tail_temperature}")
        raise TailTemperatureError(
            f"the teacher's tail (the mass outside its top-{self.logprobs.size(-1)}) is known at "
            f"{known}, not at T = {temperature}: sum_j p_j^(1/T) over the tail cannot be derived "
            "from the tail's mass")


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x <= 0, accurate at both ends (Maechler 2012); the mass left outside the
    top-k, floored at 1e-7 (float32 cannot resolve less out of a total of 1)."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def aligned(student: torch.Tensor, teacher: TeacherDistribution, temperature: float,
            missing_mass: str = "residual") -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher log-probs, student log-probs) on a shared support, both at `temperature`.

    `student` is the student's full log_softmax(z / T) (the caller computes it once and may
    reuse it, e.g. for the cross-entropy term at T = 1). Every logit term reads its two sides
    from here, so the rest bucket is tempered the same way for all of them."""
    if teacher.ids is None:
        return torch.log_softmax(teacher.logprobs.float() / temperature, dim=-1), student
    student_top = student.gather(-1, teacher.ids)
    if teacher.ids.size(-1) >= student.size(-1):
        student_rest = torch.full_like(student_top[:, :1], float("-inf"))  # nothing outside
    else:
        student_rest = _log1mexp(student_top.logsumexp(-1, keepdim=True))
    if missing_mass == "residual" and teacher.log_missing is not None:
        # already tempered: log S_T sits beside log p_i / T (module docstring)
        teacher_rest = teacher.tempered_tail(temperature).float().unsqueeze(-1)
    else:
        teacher_rest = torch.full_like(student_rest, float("-inf"))
    teacher_side = torch.log_softmax(
        torch.cat([teacher.logprobs.float() / temperature, teacher_rest], dim=-1), dim=-1)
    return teacher_side, torch.cat([student_top, student_rest], dim=-1)
