"""Local language models for the pipeline (student, teacher, RL policy) and the teacher's
primitive proposals.

`LocalModel` is a Hugging Face-format directory (config.json + safetensors + tokenizer) run
through our own sampler. The teacher is prompted with the task's library and the student's
failure traces (`proposal_prompt`) and answers with lines `Strategy: <description>`;
`parse_proposals` keeps the well-formed, new ones and gives a reason for every line it drops.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

from tailor_jax.errors import TailorError
from tailor_jax.eval.evaluator import Completions
from tailor_jax.primitives.base import Primitive
from tailor_jax.tasks.prompt import Prompt, render_prompt


@dataclasses.dataclass
class LocalModel:
    model: object
    tokenizer: object
    sampler: object
    path: str

    @classmethod
    def load(cls, path: str | Path) -> "LocalModel":
        from tailor_jax.data import tokenizer as tok_lib
        from tailor_jax.model.hf_io import load_pretrained
        from tailor_jax.sampling import Sampler

        path = Path(path)
        if not (path / "config.json").is_file():
            raise TailorError(f"{path} has no config.json; give a local Hugging Face-format model directory")
        tokenizer = tok_lib.load_tokenizer(path)
        model = load_pretrained(path)
        return cls(model, tokenizer, Sampler(model, pad_id=tok_lib.pad_id(tokenizer)), str(path))

    def complete(
        self,
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        num_samples: int = 1,
        seed: int = 0,
        max_prompt_tokens: int | None = None,
    ) -> Completions:
        """`num_samples` completions per prompt (the evaluator's `sample_completions`: `.texts`
        with the prompt's prefill, `.decoded` without, `.finished`). Prompts longer than
        `max_prompt_tokens` (default: what fits before `max_new_tokens`) keep their last tokens."""
        from tailor_jax.eval.evaluator import sample_completions

        limit = max_prompt_tokens or max(16, self.model.config.max_position_embeddings - max_new_tokens)
        return sample_completions(self.sampler, self.tokenizer, prompts, max_new_tokens=max_new_tokens,
                                  temperature=temperature, num_samples=num_samples, seed=seed, max_prompt_tokens=limit)

    def sample(self, prompts: Sequence[Prompt], **options) -> tuple[list[str], list[bool]]:
        """Decoded completions (without the prompt's prefill), grouped by prompt, and whether
        each ended with EOS (`complete`'s options)."""
        done = self.complete(prompts, **options)
        return done.decoded, done.finished


# --- proposals ----------------------------------------------------------------------------------
PROPOSAL_TEMPLATE = """You design reasoning strategies for a student model that solves {task} problems.
Strategies it already knows:
{library}
Problems it got wrong, with its attempts:
{failures}
Propose {count} new strategies that would avoid these mistakes. Write each on its own line as
Strategy: <one or two sentences describing how to reason, step by step>
"""

PROPOSAL_PREFIX = re.compile(r"^\s*(?:[-*]|\d+[.)])?\s*strategy\s*:\s*(.*)$", re.IGNORECASE)
MIN_WORDS, MAX_WORDS = 5, 80


def proposal_prompt(task: str, library: Sequence[Primitive], failures: Sequence[dict], count: int) -> str:
    """The text asking the teacher for `count` new primitive descriptions."""
    known = "\n".join(f"- {p.name}: {p.description}" for p in library) or "- (none)"
    shown = "\n".join(
        f"Problem: {f['question'][:400]}\nAttempt: {f['completion'][:400]}" for f in failures
    ) or "(no failures recorded)"
    return PROPOSAL_TEMPLATE.format(task=task, library=known, failures=shown, count=count)


def _normal(text: str) -> str:
    return " ".join(re.findall(r"[a-z]+", text.lower()))


def check_proposal(description: str, seen: set[str]) -> str | None:
    """Why a proposal is junk (None: keep it)."""
    words = description.split()
    if len(words) < MIN_WORDS:
        return f"too short ({len(words)} words, need {MIN_WORDS})"
    if len(words) > MAX_WORDS:
        return f"too long ({len(words)} words, at most {MAX_WORDS})"
    letters = sum(ch.isalpha() for ch in description)
    if letters < 0.6 * len(description.replace(" ", "")):
        return "mostly not letters"
    if "<" in description and ">" in description:
        return "contains markup"
    if _normal(description) in seen:
        return "duplicate of a known strategy"
    return None


def parse_proposals(text: str, known_descriptions: Sequence[str] = ()) -> tuple[list[str], list[dict]]:
    """(accepted descriptions, rejected [{"text", "reason"}]) from one teacher generation."""
    seen = {_normal(d) for d in known_descriptions}
    accepted, rejected = [], []
    found = False
    for line in (text or "").split("\n"):
        match = PROPOSAL_PREFIX.match(line)
        if not match:
            continue
        found = True
        description = " ".join(match.group(1).split())
        reason = check_proposal(description, seen)
        if reason:
            rejected.append({"text": description[:300], "reason": reason})
            continue
        seen.add(_normal(description))
        accepted.append(description)
    if not found:
        rejected.append({"text": (text or "")[:300], "reason": "no line of the form 'Strategy: ...'"})
    return accepted, rejected


def conditioned_prompt(z: str, question: str, style: str = "plain") -> Prompt:
    """The prompt that asks for a demonstration of primitive z (z is never part of the SFT example)."""
    return render_prompt(f"{z}\n\n{question}", style=style)


def strip_instruction(completion: str, z: str) -> str:
    """The completion without any verbatim echo of the instruction z."""
    return completion.replace(z, "").strip() if z else completion
