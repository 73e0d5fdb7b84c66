"""sampling.Together: rows that each bring their own Sampler (serve's batch) draw in one call per kind of sampler,
and every row still gets exactly what its own sampler draws alone: its seed's random stream, its temperature, its
blocked tokens, its steer share, its habits."""

import torch

from talkalike.decode.config import GenerationConfig
from talkalike.decode.language import Steer
from talkalike.decode.sampling import Sampler, Together

VOCAB = 1100  # not a whole number of the two-stage draw's blocks: the padding columns are in play


def steer() -> Steer:
    masks = torch.zeros(VOCAB, 2)
    masks[:600, 0] = 1.0  # "Latin" tokens
    masks[600:900, 1] = 1.0  # the other script's
    return Steer(other="HEBREW", shares={"other": 0.7, "latin": 0.2, "any": 0.3}, masks=masks, start_tail=[5])


def rows():
    """(config, sampler options, blocked mask) per row: two kinds of sampler (top_p and penalty differ), seeds,
    temperatures from greedy to 1.3, some rows blocking tokens, the steer and habits on every row."""
    habits, shared_steer = [torch.arange(1000, 1040), torch.arange(1050, 1060)], steer()
    blocked = torch.zeros(VOCAB, dtype=torch.bool)
    blocked[::3] = True
    plain = dict(repetition_penalty=1.3, no_repeat_ngram=3)
    nucleus = dict(repetition_penalty=1.1, top_p=0.8, no_repeat_ngram=0)
    settings = [(plain | dict(temperature=1.0, seed=7), 0.1, None), (plain | dict(temperature=0.5, seed=3), 0.9, blocked),
                (plain | dict(temperature=0.0), None, None), (nucleus | dict(temperature=1.3, seed=11), 0.5, blocked),
                (plain | dict(temperature=0.8, seed=5), None, blocked), (nucleus | dict(temperature=0.6, seed=2), 0.3,
                                                                       None)]
    made = []
    for fields, share, mask in settings:
        config = GenerationConfig(**fields)
        made.append((Sampler(config, VOCAB, rows=1, device="cpu", separator_ids=[9], steer=shared_steer,
                             shares=[share], habits=habits), config.temperature, mask))
    return made


def test_rows_drawn_together_get_exactly_what_their_own_samplers_draw_alone():
    generator = torch.Generator().manual_seed(0)
    alone_rows, together_rows = rows(), rows()
    together = Together(rows=8)
    replies = [torch.randint(0, VOCAB, (4 + k,), generator=generator) for k in range(len(alone_rows))]
    replies[1] = torch.tensor([3, 1, 5])  # at a message start: the steer acts on this row
    seen = torch.randint(0, VOCAB, (len(alone_rows), 20), generator=generator)
    for _ in range(6):  # several draws: each row's generator moves on as it would alone
        logits = torch.randn(len(alone_rows), VOCAB, generator=generator) * 3
        alone = [int(sampler(logits[k: k + 1], seen[k: k + 1], [t], [replies[k]], mask)[0])
                 for k, (sampler, t, mask) in enumerate(alone_rows)]
        drawn = together([s for s, _, _ in together_rows], logits, seen, [t for _, t, _ in together_rows], replies,
                         [mask for _, _, mask in together_rows]).tolist()
        assert drawn == alone
        replies = [torch.cat([reply, torch.tensor([token])]) for reply, token in zip(replies, drawn, strict=True)]
    assert together.calls == 6 * 2  # one call per kind of sampler and draw, not one per row


def test_a_row_drawn_with_another_seed_reads_otherwise():
    """The per-row generators are really used: the same rows with one seed changed draw something else."""
    logits = torch.zeros(2, VOCAB)  # flat: every draw is the generator's alone
    seen = torch.zeros(2, 1, dtype=torch.long)
    draws = []
    for seed in (1, 2):
        samplers = [Sampler(GenerationConfig(temperature=1.0, seed=s, repetition_penalty=1.0), VOCAB, 1, "cpu")
                    for s in (seed, 40)]
        together = Together(rows=2)
        draws.append([together(samplers, logits, seen, [1.0, 1.0], [torch.tensor([1])] * 2, [None, None]).tolist()
                      for _ in range(5)])
    assert [row[0] for row in draws[0]] != [row[0] for row in draws[1]]  # the reseeded row moved
    assert [row[1] for row in draws[0]] == [row[1] for row in draws[1]]  # the other kept its stream
