"""The combined objective: cache and live teacher agree, non-targets never count, each term is
logged, layer maps, projectors, gradient surgery and student initialization."""

import json
import math

import numpy as np
import pytest
import torch

from lmpipe.core.run_folder import RunLog
from lmpipe.core.section import ConfigError
from lmpipe.data.batching import LengthGroupedBatches
from lmpipe.data.tokenizer import VOCAB_SIZE
from lmpipe.data.tokens import TokenSplit
from lmpipe.distill.cache.format import CacheSpec
from lmpipe.distill.cache.read import TeacherCache
from lmpipe.distill.cache.write import write_cache
from lmpipe.distill.hidden import hidden_infonce
from lmpipe.distill.layers import layer_pairs
from lmpipe.distill.objective import build_objective
from lmpipe.distill.params import DistillParams
from lmpipe.distill.pcgrad import project_conflicting, surgery_loss
from lmpipe.distill.projector import make_projector
from lmpipe.distill.student_init import init_student_from_teacher
from lmpipe.distill.support import aligned
from lmpipe.distill.teacher import CachedTeacher, LiveTeacher
from lmpipe.model.build import build_model
from lmpipe.model.params import ModelParams
from lmpipe.train.loop import train
from lmpipe.train.params import TrainParams
from tests.distill.cache_vs_live import cache_and_live_runs, losses

STUDENT = ModelParams(d_model=8, n_layers=2, n_heads=2, max_seq_len=256)
TERMS = ["ce", "forward_kl", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl", "cakld",
         "sinkhorn",
         "hidden_mse", "hidden_cosine", "hidden_infonce", "attention_kl"]


@pytest.fixture(scope="module")
def full_cache(tiny_tokens, tmp_path_factory, tokenizer):
    """The tiny teacher's whole distribution (k = V, fp32), hidden states and attention, cached."""
    teacher = build_model(ModelParams(d_model=16, n_layers=1, n_heads=2, max_seq_len=256), seed=0)
    with torch.no_grad():  # peaked attention, unlike a fresh student's near-uniform one
        teacher.model.layers[0].self_attn.q_proj.weight.mul_(40.0)
    folder = tmp_path_factory.mktemp("cache")
    write_cache(teacher.eval(), TokenSplit.open(tiny_tokens, "train"),
                CacheSpec(VOCAB_SIZE, "fp32", hidden_layers=(0, 1), hidden_dtype="fp32",
                          attention_layers=(1,)),
                tokenizer.pad_token_id, folder, 5, {})
    return teacher, TeacherCache.open(folder)


@pytest.fixture(scope="module")
def tempered_cache(tiny_tokens, tmp_path_factory, tokenizer):
    """A peaked tiny teacher (its top-32 holds 0.99 of the mass, as a trained teacher's does),
    cached at k = 32 < V = 265 in fp32 with its tail tempered for T = 2."""
    teacher = build_model(ModelParams(d_model=16, n_layers=1, n_heads=2, max_seq_len=256), seed=0)
    with torch.no_grad():  # the final norm scales the logits: a sharp, trained-looking teacher
        teacher.model.norm.weight.mul_(40.0)
    folder = tmp_path_factory.mktemp("tempered")
    write_cache(teacher.eval(), TokenSplit.open(tiny_tokens, "train"),
                CacheSpec(32, "fp32", temperature=2.0), tokenizer.pad_token_id, folder, 5, {})
    return teacher, TeacherCache.open(folder)


def _batch(tiny_tokens, tokenizer, step=0, size=6):
    return LengthGroupedBatches(TokenSplit.open(tiny_tokens, "train"), size, 0,
                                tokenizer.pad_token_id)(step)


def _objective(teacher, term, temperature=1.5, **dp):
    student = build_model(STUDENT, seed=1)
    d = DistillParams(objective={term: 1.0}, temperature=temperature, **dp)
    return student, build_objective(d, teacher, student)


@pytest.mark.parametrize("term", TERMS)
def test_cache_with_the_whole_vocabulary_equals_the_live_teacher(term, full_cache, tiny_tokens,
                                                                  tokenizer):
    teacher, cache = full_cache
    batch = _batch(tiny_tokens, tokenizer)
    losses = []
    # sinkhorn over the whole vocabulary is (n, V, V) an update: a few updates show agreement
    few = {"sinkhorn_iterations": 3} if term == "sinkhorn" else {}
    for source in (CachedTeacher(cache), LiveTeacher(teacher)):
        student, objective = _objective(source, term, layers="uniform", projector="linear",
                                        **few)
        losses.append(objective(student, batch)[0] / batch.n_targets)
    assert losses[0].item() > 1e-3
    assert abs(losses[0].item() - losses[1].item()) < 1e-5


def test_training_from_the_cache_follows_the_live_run_step_for_step(full_cache, tiny_tokens,
                                                                   tokenizer, tmp_path):
    """Five optimizer steps of forward KL + CE + attention KL through the real training loop:
    the logged losses from the cache equal the live teacher's to 1e-5."""
    from lmpipe.train.params import TrainParams

    teacher, cache = full_cache
    tp = TrainParams(steps=5, batch_size=4, warmup_steps=1, log_every=1, eval_every=5)
    d = DistillParams(objective={"forward_kl": 0.5, "ce": 0.5, "attention_kl": 1.0},
                      layers=[[1, 1], [2, 1]], train=tp)
    runs = cache_and_live_runs(cache, teacher, lambda: build_model(STUDENT, seed=1), d,
                               tiny_tokens, tokenizer.pad_token_id, tmp_path)
    curves = [losses(records) for records in runs]
    assert len(curves[0]) == 5 and curves[0][0] > curves[0][-1]
    np.testing.assert_allclose(curves[0], curves[1], atol=1e-5, rtol=0)


def test_attention_kl_from_the_cache_equals_live_and_trains_attention(full_cache, tiny_tokens,
                                                                      tokenizer):
    teacher, cache = full_cache
    batch = _batch(tiny_tokens, tokenizer, step=2)
    losses = []
    for source in (CachedTeacher(cache), LiveTeacher(teacher)):
        student, objective = _objective(source, "attention_kl", layers=[[1, 1], [2, 1]])
        loss, parts = objective(student, batch)
        losses.append(loss / batch.n_targets)
    assert losses[0].item() > 1e-3 and abs(losses[0].item() - losses[1].item()) < 1e-5
    loss.backward()
    assert student.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    windows = DistillParams(objective={"attention_kl": 1.0}, train={"sampling": "windows"})
    with pytest.raises(ConfigError, match="attention_kl from the cache needs distill.train.sampling"):
        build_objective(windows, CachedTeacher(cache), build_model(STUDENT, seed=1))


def test_truncated_cache_at_t2_matches_the_live_teacher_and_the_old_tail_does_not(
        tempered_cache, tiny_tokens, tokenizer):
    """k = 32 < V = 265 at T = 2. Truth: the live teacher's full distribution tempered,
    softmax(log p / 2), with the 233 ids outside the cached top-32 summed into one bucket.

    Tolerance 1e-5, both for each bucket's probability and for forward KL per target (fp32
    cache, float32 sums). The cache's buckets meet it (measured max error 1.2e-7), and the k = 32
    live teacher's whole objective equals the cache's (measured difference 0). The old rest
    bucket, softmax([log p_i, log m] / T), tempers the tail as one token, sqrt(m) in place of
    sum_j sqrt(p_j): it misses by 0.33 in probability at the worst position (tail bucket 0.029 on
    average where the truth is 0.223), and its T^2-scaled forward KL against this random student
    is 12.97 nats per target where the truth is 9.26, far beyond the tolerance."""
    teacher, cache = tempered_cache
    batch = _batch(tiny_tokens, tokenizer)
    targets = batch.target_mask > 0
    temperature = 2.0
    cached = CachedTeacher(cache).signals(batch, targets, temperature=temperature).distribution
    full = LiveTeacher(teacher).signals(batch, targets).distribution.logprobs
    tempered = torch.softmax(full / temperature, -1)
    truth = torch.cat([tempered.gather(-1, cached.ids),
                       tempered.scatter(-1, cached.ids, 0.0).sum(-1, keepdim=True)], -1)
    assert truth[:, -1].mean() > 0.1  # the tail bucket matters at T = 2
    student = torch.log_softmax(torch.randn(full.shape, generator=torch.Generator().manual_seed(0))
                                / temperature, -1)
    log_p, log_q = aligned(student, cached, temperature)
    assert (log_p.exp() - truth).abs().max().item() < 1e-5
    old_p = torch.log_softmax(torch.cat([cached.logprobs, cached.log_missing[:, None]], -1)
                              / temperature, -1)
    assert (old_p.exp() - truth).abs().max().item() > 0.2

    def forward_kl(p):  # per target, T^2-scaled, on the k + 1 buckets
        return (temperature ** 2 * (p.exp() * (p - log_q)).sum(-1)).mean().item()
    true_kl = forward_kl(truth.log())
    assert forward_kl(log_p) == pytest.approx(true_kl, abs=1e-5)
    assert abs(forward_kl(old_p) - true_kl) > 1.0
    # the whole objective: from the cache, and from the live teacher truncated the same way
    losses = []
    for source in (CachedTeacher(cache), LiveTeacher(teacher, top_k=32)):
        student_model, objective = _objective(source, "forward_kl", temperature)
        losses.append(objective(student_model, batch)[0].item() / batch.n_targets)
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    # a cache tempered for T = 2 refuses T = 1.5 before any compute, naming both
    with pytest.raises(ConfigError, match=r"distill.temperature = 1.5: .* tempered at T = 1 and "
                                          r"T = 2 \(manifest tail_temperature\)"):
        _objective(CachedTeacher(cache), "forward_kl")
    assert cache.manifest["tail_model"] == "exact" and cache.manifest["tail_temperature"] == 2.0


def test_a_prefix_lm_teacher_reads_its_own_mask_cached_and_live(tiny_tokens, tokenizer, tmp_path):
    """A teacher trained with `attention: prefix_lm` (loss_on: mask) is cached and run live with
    the mask it trained with, even on a student batch built with loss_on: all and causal attention:
    both equal the teacher on its own training batch, and differ from reading it causally."""
    from lmpipe.data.batching import collate

    teacher = build_model(ModelParams(d_model=16, n_layers=2, n_heads=2, max_seq_len=256), seed=0)
    split = TokenSplit.open(tiny_tokens, "train")
    write_cache(teacher.eval(), split, CacheSpec(VOCAB_SIZE, "fp32"), tokenizer.pad_token_id,
                tmp_path, 5, {}, attention="prefix_lm", loss_on="mask")
    cache = TeacherCache.open(tmp_path)
    assert cache.manifest["attention"] == "prefix_lm"
    student_batches = LengthGroupedBatches(split, 6, 0, tokenizer.pad_token_id, loss_on="all")
    batch = student_batches(0)
    targets = batch.target_mask > 0
    own = collate(split, student_batches.doc_ids(0), tokenizer.pad_token_id, "mask", "prefix_lm")
    with torch.no_grad():
        expected = torch.log_softmax(teacher(input_ids=own.input_ids,
                                             attention_mask=own.attention_mask).logits[:, :-1], -1)
    expected = expected[targets]
    rows = CachedTeacher(cache).signals(batch, targets).distribution
    cached = torch.empty_like(expected).scatter(-1, rows.ids, rows.logprobs)
    live = LiveTeacher(teacher, attention="prefix_lm", token_mask=split.mask).signals(
        batch, targets).distribution.logprobs
    causal = LiveTeacher(teacher).signals(batch, targets).distribution.logprobs
    torch.testing.assert_close(cached, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(live, expected, atol=1e-5, rtol=0)
    assert (causal - expected).abs().max() > 1e-2  # the mask reaches the teacher's rows


def test_non_target_positions_never_count(full_cache, tiny_tokens, tokenizer):
    """The loss equals a direct masked sum over a (rows x positions) grid, and a document's loss
    is the same alone or padded into a batch with longer ones."""
    teacher, cache = full_cache
    batch = _batch(tiny_tokens, tokenizer)
    student, objective = _objective(CachedTeacher(cache), "forward_kl")
    loss, _ = objective(student, batch)
    with torch.no_grad():
        s = torch.log_softmax(student(input_ids=batch.input_ids).logits[:, :-1] / 1.5, -1)
        t = torch.log_softmax(teacher(input_ids=batch.input_ids).logits[:, :-1] / 1.5, -1)
    grid = (t.exp() * (t - s)).sum(-1) * 1.5**2
    direct = (grid * batch.target_mask).sum()
    assert loss.item() == pytest.approx(direct.item(), abs=1e-4)  # float32 sums of ~300 terms
    assert (grid * (1 - batch.target_mask)).sum() > 0.1  # the mask really removes something
    alone = sum(objective(student, batch.rows(slice(i, i + 1)))[0].item()
                for i in range(batch.input_ids.size(0)))
    assert alone == pytest.approx(loss.item(), abs=1e-4)


def test_combined_objective_logs_every_term_and_weights_them(full_cache, tiny_tokens, tokenizer):
    teacher, cache = full_cache
    batch = _batch(tiny_tokens, tokenizer)
    student = build_model(STUDENT, seed=1)
    d = DistillParams(objective={"forward_kl": 0.3, "ce": 0.5, "hidden_mse": 2.0})
    objective = build_objective(d, CachedTeacher(cache), student)
    loss, parts = objective(student, batch)
    assert set(parts) == {"loss_forward_kl", "loss_ce", "loss_hidden_mse"}
    expected = 0.3 * parts["loss_forward_kl"] + 0.5 * parts["loss_ce"] + 2.0 * parts["loss_hidden_mse"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert isinstance(student.distill_projectors[0], torch.nn.Linear)  # trained with the student
    objective.detach(student)
    assert not hasattr(student, "distill_projectors")


def test_uncertainty_weighting_learns_each_terms_scale(full_cache, tiny_tokens, tokenizer):
    teacher, cache = full_cache
    batch = _batch(tiny_tokens, tokenizer)
    student = build_model(STUDENT, seed=1)
    d = DistillParams(objective={"forward_kl": 0.3, "ce": 0.5}, loss_weighting="uncertainty")
    objective = build_objective(d, CachedTeacher(cache), student)
    count = batch.target_mask.sum()
    with torch.no_grad():
        student.distill_loss_weights["ce"].fill_(0.7)
    loss, parts = objective(student, batch)
    # by hand: exp(-s) * weight * term + s a target, the terms summed over targets
    kl, ce = parts["loss_forward_kl"], parts["loss_ce"]
    expected = 0.3 * kl + math.exp(-0.7) * 0.5 * ce + 0.7 * count
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["weight_ce"].item() == pytest.approx(0.5 * math.exp(-0.7), rel=1e-6)
    assert parts["weight_forward_kl"].item() == pytest.approx(0.3, rel=1e-6)
    assert set(objective.per_step_metrics) >= {"weight_ce", "weight_forward_kl"}
    assert objective.single_process_only == "distill.loss_weighting = uncertainty"
    # the log-variances train with the student (the optimizer sees them) and, the terms held
    # fixed, settle where exp(s) is the term's weighted mean a target: Kendall et al.'s optimum
    log_variances = list(student.distill_loss_weights.parameters())
    assert {id(p) for p in log_variances} <= {id(p) for p in student.parameters()}
    terms = {"forward_kl": (0.3 * kl).detach(), "ce": (0.5 * ce).detach()}
    opt = torch.optim.Adam(log_variances, lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        (objective.uncertainty_weighted(terms, count, {}) / count).backward()
        opt.step()
    for term, value in terms.items():
        optimum = math.log(value.item() / count.item())
        assert student.distill_loss_weights[term].item() == pytest.approx(optimum, abs=1e-3)
    objective.detach(student)
    assert not hasattr(student, "distill_loss_weights")


def _weighted_run(cache, tiny_tokens, tokenizer, tmp_path, weights: dict[str, float],
                  weighting: str, **options):
    """(student, objective, the 3 logged records) of 30 distill steps with learned weights."""
    d = DistillParams(objective=weights, loss_weighting=weighting, **options,
                      train=TrainParams(steps=30, batch_size=6, lr=3e-2, warmup_steps=2,
                                        log_every=10, eval_every=30))
    student = build_model(STUDENT, seed=1)
    objective = build_objective(d, CachedTeacher(cache), student)
    with RunLog(tmp_path, "distill", weighting, {}) as run:
        train(student, TokenSplit.open(tiny_tokens, "train"), TokenSplit.open(tiny_tokens, "val"),
              d.train, run, tokenizer.pad_token_id, objective=objective)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    logged = [r for r in records if "weight_ce" in r]
    assert len(logged) == 3
    return student, objective, logged


def test_uncertainty_weighting_trains_through_the_loop(full_cache, tiny_tokens, tokenizer,
                                                       tmp_path):
    _, _, logged = _weighted_run(full_cache[1], tiny_tokens, tokenizer, tmp_path,
                                 {"forward_kl": 1.0, "ce": 1.0}, "uncertainty")
    # a step's exp(-s) (not a sum over targets), moving toward 1 / the term's size: the larger
    # cross-entropy weighed down, the smaller KL up
    ce, kl = ([r[f"weight_{t}"] for r in logged] for t in ("ce", "forward_kl"))
    assert logged[-1]["loss_ce"] > 10 * logged[-1]["loss_forward_kl"]
    assert 0.2 < ce[-1] < ce[0] < 1 < kl[0] < kl[-1] < 5
    assert logged[-1]["loss"] < logged[0]["loss"]


def test_gradnorm_trains_its_multipliers_through_the_loop(full_cache, tiny_tokens, tokenizer,
                                                         tmp_path):
    student, objective, logged = _weighted_run(full_cache[1], tiny_tokens, tokenizer, tmp_path,
                                               {"forward_kl": 1.0, "ce": 0.5}, "gradnorm",
                                               gradnorm_alpha=1.5)
    assert objective.single_process_only == "distill.loss_weighting = gradnorm"
    for r in logged:  # weight_term * w_term, the w summing to the 2 terms
        assert r["weight_forward_kl"] / 1.0 + r["weight_ce"] / 0.5 == pytest.approx(2, rel=1e-4)
    # the multipliers moved off 1, and the term that fell less since the first step (the
    # larger L~ = loss / first loss) ends with the larger multiplier
    w = student.distill_loss_weights.weights.detach()
    first = student.distill_loss_weights.initial
    assert abs(w[0].item() - 1) > 0.05
    rates = [logged[-1][f"loss_{t}"] / first[i].item()
             for i, t in enumerate(student.distill_loss_weights.terms)]
    assert (w[0] > w[1]) == (rates[0] > rates[1])
    assert logged[-1]["loss"] < logged[0]["loss"]
    objective.detach(student)
    assert not hasattr(student, "distill_loss_weights")


def test_the_product_form_multiplies_the_terms_means(full_cache, tiny_tokens, tokenizer):
    teacher, cache = full_cache
    batch = _batch(tiny_tokens, tokenizer)
    student = build_model(STUDENT, seed=1)
    weights = {"forward_kl": 0.3, "ce": 0.5}
    d = DistillParams(objective=weights, loss_weighting="product")
    objective = build_objective(d, CachedTeacher(cache), student)
    count = batch.target_mask.sum().item()
    loss, parts = objective(student, batch)
    kl, ce = parts["loss_forward_kl"].item() / count, parts["loss_ce"].item() / count
    assert loss.item() / count == pytest.approx(kl ** 0.3 * ce ** 0.5, rel=1e-5)
    # its gradient: the product times each term's weighted gradient over the term's own size
    params = [p for p in student.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss / count, params)
    terms, _ = objective.components(student, batch)
    by_hand = torch.autograd.grad(
        kl ** 0.3 * ce ** 0.5 * (0.3 * terms["forward_kl"] / count / kl
                                 + 0.5 * terms["ce"] / count / ce), params)
    for got, expected in zip(grads, by_hand):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match="loss_weighting: product weighs terms against"):
        DistillParams(objective={"ce": 1.0}, loss_weighting="product")


def test_uncertainty_weighting_needs_two_terms_and_no_pcgrad():
    with pytest.raises(ValueError, match="loss_weighting: uncertainty weighs terms against"):
        DistillParams(objective={"ce": 1.0, "forward_kl": 0.0}, loss_weighting="uncertainty")
    with pytest.raises(ValueError, match="expected one way of combining"):
        DistillParams(objective={"ce": 1.0, "hidden_mse": 1.0}, loss_weighting="uncertainty",
                      gradient_conflict="pcgrad")


def test_zero_missing_mass_refuses_divergences_that_would_be_infinite(tiny_model, tiny_tokens,
                                                                      tmp_path, tokenizer):
    # _objective distils at T = 1.5: the cache holds its tail tempered for it
    write_cache(tiny_model, TokenSplit.open(tiny_tokens, "train"), CacheSpec(8, temperature=1.5),
                0, tmp_path, 5, {})
    cache = CachedTeacher(TeacherCache.open(tmp_path))
    with pytest.raises(ConfigError, match=r"\['reverse_kl'\] with missing_mass = zero"):
        _objective(cache, "reverse_kl", missing_mass="zero")
    _, objective = _objective(cache, "reverse_kl", missing_mass="residual")
    loss, _ = objective(build_model(STUDENT, seed=2), _batch(tiny_tokens, tokenizer))
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="hidden states \\[1\\], which the cache does not hold"):
        _objective(cache, "hidden_mse")


def test_layer_maps():
    assert layer_pairs("all", 3, 3) == [(1, 1), (2, 2), (3, 3)]
    assert layer_pairs("last", 2, 30) == [(2, 30)]
    assert layer_pairs("last-2", 2, 30) == [(1, 29), (2, 30)]
    assert layer_pairs("uniform", 3, 30) == [(1, 10), (2, 20), (3, 30)]
    assert layer_pairs([[0, 0], [2, 5]], 2, 5) == [(0, 0), (2, 5)]
    with pytest.raises(ConfigError, match="the student has 2 blocks, the teacher 4"):
        layer_pairs("all", 2, 4)
    with pytest.raises(ConfigError, match="pair \\[3, 1\\] out of range"):
        layer_pairs([[3, 1]], 2, 4)


def test_hidden_infonce_against_a_hand_computation_and_the_no_information_bound():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    got = hidden_infonce(student, teacher, temperature=0.5)

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) *
                                                             sum(y * y for y in b))
    s, t = student.tolist(), teacher.tolist()
    for i in range(4):
        scores = [math.exp(cosine(s[i], t[j]) / 0.5) for j in range(4)]
        assert got[i].item() == pytest.approx(-math.log(scores[i] / sum(scores)), rel=1e-5)
    # a teacher whose state is the same everywhere tells the student nothing: log n exactly,
    # a mutual-information bound log n - loss of 0
    same = teacher[:1].expand(64, 3)
    flat = hidden_infonce(torch.randn(64, 3, generator=gen), same)
    torch.testing.assert_close(flat, torch.full((64,), math.log(64)))
    # the student matching the teacher position for position: far below log n
    distinct = torch.randn(64, 16, generator=gen)
    assert hidden_infonce(distinct, distinct).mean() < 0.1 * math.log(64)


def test_sinkhorn_reads_the_teachers_embeddings_from_the_cache(full_cache, tiny_tokens,
                                                                tokenizer, tmp_path):
    teacher, cache = full_cache
    torch.testing.assert_close(CachedTeacher(cache).token_embeddings(),
                               teacher.get_input_embeddings().weight)
    # a cache written before the embeddings were kept refuses the term by name
    import shutil
    old = tmp_path / "old"
    shutil.copytree(cache.folder, old)
    (old / "embeddings.safetensors").unlink()
    student, objective = _objective(CachedTeacher(TeacherCache.open(old)), "sinkhorn")
    with pytest.raises(ConfigError, match="holds no token embeddings"):
        objective(student, _batch(tiny_tokens, tokenizer))


def test_projectors():
    with pytest.raises(ConfigError, match="hidden width is 8, the teacher's 16"):
        make_projector("identity", 8, 16)
    rotation = make_projector("orthogonal", 8, 16)
    x = torch.randn(5, 8)
    torch.testing.assert_close(rotation(x).norm(dim=-1), x.norm(dim=-1))  # an isometry
    assert make_projector("linear", 8, 16)(x).shape == (5, 16)


def test_pcgrad_removes_the_conflict_and_keeps_agreement():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    combined, cosine = project_conflicting(g1, g2)
    assert cosine.item() == pytest.approx(-0.5 ** 0.5)
    # g1' = g1 - (g1.g2/|g2|^2) g2 = [0.5, 0.5]; g2' = g2 - (g2.g1/|g1|^2) g1 = [0, 1]
    torch.testing.assert_close(combined, torch.tensor([0.5, 1.5]))
    same, cosine = project_conflicting(g1, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(same, torch.tensor([2.0, 1.0]))
    w = torch.nn.Parameter(torch.tensor([0.0, 0.0]))
    first, second = (w * g1).sum(), (w * g2).sum()  # gradients g1 and g2
    value, _ = surgery_loss([w], first, second)
    value.backward()
    torch.testing.assert_close(w.grad, torch.tensor([0.5, 1.5]))


def test_pcgrad_objective_logs_the_gradient_cosine(full_cache, tiny_tokens, tokenizer):
    """The logged cosine is that of the logit terms' and the hidden terms' gradients, each
    computed here on its own (a separate forward pass and autograd.grad per group)."""
    teacher, cache = full_cache
    student = build_model(STUDENT, seed=1)
    d = DistillParams(objective={"forward_kl": 1.0, "hidden_cosine": 1.0}, layers="uniform",
                      gradient_conflict="pcgrad")
    objective = build_objective(d, CachedTeacher(cache), student)
    batch = _batch(tiny_tokens, tokenizer)
    params = [p for p in student.parameters() if p.requires_grad]

    def flat_gradient(term):
        terms, _ = objective.components(student, batch)
        grads = torch.autograd.grad(terms[term], params, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                          for g, p in zip(grads, params)])
    logit, hidden = flat_gradient("forward_kl"), flat_gradient("hidden_cosine")
    by_hand = (logit @ hidden / (logit.norm() * hidden.norm())).item()
    assert 1e-3 < abs(by_hand) < 0.99  # a real angle: neither orthogonal nor parallel
    loss, parts = objective(student, batch)
    assert parts["grad_cosine"].item() == pytest.approx(by_hand, abs=1e-5)
    assert loss.item() == pytest.approx((parts["loss_forward_kl"] + parts["loss_hidden_cosine"]).item(),
                                        rel=1e-6)
    loss.backward()
    assert student.distill_projectors[0].weight.grad.abs().sum() > 0
    assert objective.single_process_only == "distill.gradient_conflict = pcgrad"


def test_gradient_stats_log_each_terms_gradient_and_their_cosines(full_cache, tiny_tokens,
                                                                   tokenizer):
    """Checked against each weighted term's gradient computed here on its own (a separate
    forward pass and autograd.grad per term)."""
    teacher, cache = full_cache
    student = build_model(STUDENT, seed=1)
    weights = {"forward_kl": 0.3, "ce": 0.5, "hidden_mse": 2.0}
    d = DistillParams(objective=weights, layers="uniform", gradient_stats=True)
    objective = build_objective(d, CachedTeacher(cache), student)
    batch = _batch(tiny_tokens, tokenizer)
    params = [p for p in student.parameters() if p.requires_grad]
    count = batch.target_mask.sum().item()

    def flat_gradient(term):
        terms, _ = objective.components(student, batch)
        grads = torch.autograd.grad(weights[term] * terms[term], params, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                          for g, p in zip(grads, params)])
    by_hand = {term: flat_gradient(term) for term in weights}
    loss, parts = objective(student, batch)
    for term, g in by_hand.items():
        assert parts[f"grad_norm_{term}"].item() == pytest.approx(g.norm().item() / count,
                                                                   rel=1e-5)
    cosines = []
    for a, b in [("forward_kl", "ce"), ("forward_kl", "hidden_mse"), ("ce", "hidden_mse")]:
        cosine = (by_hand[a] @ by_hand[b] / (by_hand[a].norm() * by_hand[b].norm())).item()
        assert parts[f"grad_cosine_{a}__{b}"].item() == pytest.approx(cosine, abs=1e-5)
        cosines.append(cosine)
    assert max(cosines) - min(cosines) > 0.05  # different angles: each pair's own
    expected = sum(w * parts[f"loss_{t}"] for t, w in weights.items())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # the loss is unchanged
    assert objective.single_process_only == "distill.gradient_stats = true"
    assert {"grad_norm_ce", "grad_cosine_forward_kl__ce"} <= set(objective.per_step_metrics)


def test_student_starts_from_the_teachers_embeddings(tokenizer):
    teacher = build_model(ModelParams(d_model=8, n_layers=1, n_heads=2, tie_embeddings=False), seed=5)
    student = build_model(STUDENT.model_copy(update={"tie_embeddings": False}), seed=1)
    d = DistillParams(copy_embeddings=True, freeze_embeddings=True, copy_lm_head=True)
    assert init_student_from_teacher(student, teacher, d) == ["embeddings", "lm_head"]
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    assert not student.model.embed_tokens.weight.requires_grad and student.lm_head.weight.requires_grad
    wide = build_model(ModelParams(d_model=16, n_layers=1, n_heads=2), seed=5)
    with pytest.raises(ConfigError, match="teacher's hidden width is 16, the student's"):
        init_student_from_teacher(build_model(STUDENT, seed=1), wide, d)
    other_vocab = build_model(STUDENT, seed=1)
    other_vocab.resize_token_embeddings(300)
    with pytest.raises(ConfigError, match="vocabulary has 300 ids, the student's 265"):
        init_student_from_teacher(build_model(STUDENT, seed=1), other_vocab, d)
