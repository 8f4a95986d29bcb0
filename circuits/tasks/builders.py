"""Build patching `Task`s from text: any list of prompt pairs, IOI, colored objects, kept object,
induction."""

from __future__ import annotations

from typing import Sequence

import torch

from interp.models import HookedModel
from interp.patching import Task
from circuits.tasks import ioi_data, kept_object_data


def answer_token(model: HookedModel, answer: str) -> int:
    """The single token id of `answer` as a continuation (a leading space is added for BPE
    vocabularies; word-level vocabularies ignore it). Multi-token answers are an error."""
    text = answer if answer.startswith(" ") else " " + answer
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = model.tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(f"answer {answer!r} is not a single token for {model.cfg.name}: it tokenizes to {pieces}")
    unknown = model.tokenizer.unk_token_id
    if unknown is not None and ids[0] == unknown and answer.strip() != model.tokenizer.unk_token:
        raise ValueError(f"answer {answer!r} is not in {model.cfg.name}'s vocabulary: it tokenizes to the unknown "
                         f"token {model.tokenizer.unk_token!r}")
    return ids[0]


def require_causal(model: HookedModel, task: str) -> None:
    """Refuse an encoder for a next-token task (its metric reads next-token logits)."""
    if not model.cfg.is_causal:
        raise ValueError(f"{task} is a next-token task for causal language models; {model.cfg.name} is an encoder "
                         "(bidirectional attention, no next token to predict)")


def from_prompt_pairs(model: HookedModel, clean: Sequence[str], corrupt: Sequence[str], answers: Sequence[str],
                      wrong: Sequence[str], name: str = "prompts", metric="logit_diff") -> Task:
    """A task from parallel lists: prompt pairs and each pair's right and wrong next token.

    Each clean prompt must tokenize to as many tokens as its corrupted twin (position-wise
    patching needs it); prompts of different pairs may differ in length and are right-padded,
    with the metric read at each prompt's last real token. Causal language models only.
    """
    require_causal(model, f"task {name!r}")
    lists = {"clean": clean, "corrupt": corrupt, "answers": answers, "wrong": wrong}
    if any(isinstance(v, str) for v in lists.values()):
        raise TypeError("from_prompt_pairs takes lists of strings, not single strings")
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"clean, corrupt, answers and wrong must be equally long lists, got {lengths}")
    if lengths["clean"] == 0:
        raise ValueError("from_prompt_pairs needs at least one prompt pair, got empty lists")
    rows_clean, rows_corrupt = [], []
    for i, (c, k) in enumerate(zip(clean, corrupt)):
        tc, tk = model.to_tokens(c)[0], model.to_tokens(k)[0]
        if tc.shape != tk.shape:
            raise ValueError(f"clean and corrupted prompts must tokenize to the same length; pair {i}:\n"
                             f"  clean   ({tc.shape[0]} tokens): {c!r}\n  corrupt ({tk.shape[0]} tokens): {k!r}")
        rows_clean.append(tc)
        rows_corrupt.append(tk)
    pad = model.tokenizer.pad_token_id or 0
    n_pos = max(len(t) for t in rows_clean)
    padded = lambda rows: torch.stack([torch.cat([t, t.new_full((n_pos - len(t),), pad)]) for t in rows])  # noqa: E731
    return Task(
        clean=padded(rows_clean).cpu(), corrupt=padded(rows_corrupt).cpu(),
        answer=torch.tensor([answer_token(model, a) for a in answers]),
        wrong=torch.tensor([answer_token(model, w) for w in wrong]),
        answer_pos=torch.tensor([len(t) - 1 for t in rows_clean]),
        metric=metric, name=name, clean_prompts=list(clean), corrupt_prompts=list(corrupt),
    )


def ioi_task(model: HookedModel, n: int = 32, split: str = "test", seed: int = 0, template: str | None = None) -> Task:
    """Indirect-object identification with ABC corruption (the repeated subject replaced by a
    third name): metric logit(IO) - logit(S). "test" uses name pairs held out of training.
    Use one `template` for position-wise sweeps, so positions mean the same in every prompt."""
    prompts = ioi_data.ioi_prompts(split, n, seed, template)
    return from_prompt_pairs(model, [p.clean for p in prompts], [p.corrupt for p in prompts],
                             [p.answer for p in prompts], [p.wrong for p in prompts],
                             name=f"ioi-{split}" + (f"-{template}" if template else ""))


def colored_objects_task(model: HookedModel, n: int = 32, split: str = "test", seed: int = 0,
                         template: str | None = None) -> Task:
    """Colored objects: the corrupted prompt asks about another object of the same scene;
    metric logit(asked object's color) - logit(other object's color)."""
    prompts = ioi_data.colored_object_prompts(split, n, seed, template)
    return from_prompt_pairs(model, [p.clean for p in prompts], [p.corrupt for p in prompts],
                             [p.answer for p in prompts], [p.wrong for p in prompts],
                             name=f"colored-objects-{split}" + (f"-{template}" if template else ""))


def kept_object_task(model: HookedModel, n: int = 32, split: str = "test", seed: int = 0,
                     template: str | None = None) -> Task:
    """Kept object, IOI's structure on objects ("Mary had a pen and a cup . Mary lost the cup but
    kept the" -> "pen"), ABC-corrupted (the repeated object replaced by a third): metric
    logit(kept object) - logit(repeated object). "test" uses object pairs held out of training.
    Templates are "intro/action" ids of `kept_object_data.TEMPLATES`."""
    prompts = kept_object_data.kept_object_prompts(split, n, seed, template)
    return from_prompt_pairs(model, [p.clean for p in prompts], [p.corrupt for p in prompts],
                             [p.answer for p in prompts], [p.wrong for p in prompts],
                             name=f"kept-object-{split}" + (f"-{template.replace('/', '-')}" if template else ""))


def induction_task(model: HookedModel, n: int = 32, span: int = 8, seed: int = 0) -> Task:
    """Induction: `BOS A1..Ak A1..A(k-1)` should continue with `Ak`. The corrupted prompt has
    another random first half `B1..Bk`, so no earlier occurrence predicts the next token;
    the wrong answer is `Bk`. Tokens are drawn from the vocabulary without special tokens."""
    require_causal(model, "induction_task")
    if n < 1 or span < 2:
        raise ValueError(f"induction_task needs n >= 1 and span >= 2, got n={n}, span={span}")
    if model.tokenizer.bos_token_id is None:
        raise ValueError(f"induction_task needs a model with a BOS token; {model.cfg.name} has none")
    special = set(model.tokenizer.all_special_ids)
    pool = torch.tensor([i for i in range(model.cfg.d_vocab) if i not in special])
    gen = torch.Generator().manual_seed(seed)
    draw = lambda: pool[torch.stack([torch.randperm(len(pool), generator=gen)[:span] for _ in range(n)])]  # noqa: E731
    first, other = draw(), draw()
    bos = torch.full((n, 1), model.tokenizer.bos_token_id)
    clean = torch.cat([bos, first, first[:, :-1]], dim=1)
    corrupt = torch.cat([bos, other, first[:, :-1]], dim=1)
    return Task(clean, corrupt, answer=first[:, -1], wrong=other[:, -1], name=f"induction-span{span}")
