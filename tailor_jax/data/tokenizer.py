"""Tokenizers: train a small byte-level BPE for from-scratch models, load a checkpoint's own
tokenizer (and chat template) for pretrained ones, and encode prompts the same way for SFT,
sampling and evaluation.

Both kinds are `transformers.PreTrainedTokenizerFast` objects saved/loaded as a directory with
`tokenizer.json` + `tokenizer_config.json`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tailor_jax.errors import TailorError
from tailor_jax.tasks.prompt import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, Prompt

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|pad|>", "<|bos|>", "<|eos|>"
# The reasoning markup is kept as whole tokens but is *not* "special": decoding with
# skip_special_tokens=True must keep it, since the rewards parse it.
MARKUP_TOKENS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
MIN_VOCAB_SIZE = 256 + 3 + len(MARKUP_TOKENS)  # the byte alphabet + special + markup tokens


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    whole_words: Sequence[str] = (),
    min_frequency: int = 2,
):
    """Train a byte-level BPE on `texts` with pad/bos/eos specials and the think/answer markup.

    `whole_words` (e.g. the GF numeral symbols) must each end up as a single token, with or
    without a leading space; the ones the merges did not produce are added as whole-word tokens.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB_SIZE:
        raise TailorError(f"tokenizer vocab_size must be at least {MIN_VOCAB_SIZE} (bytes + markup), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *MARKUP_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Trained specials are "special" in the tokenizers sense; re-register the markup as plain
    # added tokens so decoding keeps it.
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in MARKUP_TOKENS])
    missing = [w for w in whole_words if not _is_single_token(tok, w)]
    if missing:
        tok.add_tokens([AddedToken(w, single_word=True, normalized=False) for w in missing])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD_TOKEN, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN
    )


def _is_single_token(tok, word: str) -> bool:
    return len(tok.encode(word).ids) == 1 and len(tok.encode(" " + word).ids) == 1


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> Path:
    """Write `tokenizer.json` and `tokenizer_config.json` into `directory` (created if needed)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise TailorError(f"tokenizer path {directory} is a file; give a directory")
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return directory


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer (and chat template, if any) from a local directory; never downloads."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise TailorError(
            f"no tokenizer found in {path} (expected tokenizer.json); set the SFT config's "
            "`tokenizer.path: null` to train one, or point `tokenizer.path` at a checkpoint directory"
        )
    try:
        if (path / "tokenizer.json").is_file():
            # tokenizer.json is the tokenizer. AutoTokenizer would instead pick a class from the
            # model config beside it (Qwen2Tokenizer for any qwen2 model) and rebuild the
            # pre-tokenizer in code, which silently re-tokenizes our own BPE differently.
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any parse failure is a bad file for the user
        raise TailorError(f"cannot load the tokenizer in {path}: {type(err).__name__}: {err}".splitlines()[0]) from None
    if tokenizer.eos_token_id is None:
        raise TailorError(f"the tokenizer in {path} has no eos token; set eos_token in its tokenizer_config.json")
    return tokenizer


def pad_id(tokenizer) -> int:
    """The padding id: the pad token, else eos (Qwen-style checkpoints have no separate pad)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def prompt_text(tokenizer, prompt: Prompt) -> str:
    """The exact text the model is conditioned on, ending with the assistant prefill.

    Plain prompts are used as written; chat prompts go through the tokenizer's chat template
    with the generation prompt appended.
    """
    if prompt.style == "plain":
        return prompt.text
    if prompt.style == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise TailorError(
                "prompt style 'chat' needs a tokenizer with a chat template; use style 'plain' "
                "or a checkpoint whose tokenizer_config.json has chat_template"
            )
        text = tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
        return text + prompt.prefill
    raise TailorError(f"unknown prompt style {prompt.style!r}")


def encode_prompt(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of the prompt: BOS (if the tokenizer has one and the text lacks it) + text."""
    text = prompt_text(tokenizer, prompt)
    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = tokenizer.bos_token_id
    if bos is not None and not (ids and ids[0] == bos):
        ids = [bos, *ids]
    return ids


def encode_completion(tokenizer, completion: str, prompt: Prompt) -> list[int]:
    """Token ids of the assistant completion (without the prefill already in the prompt) + EOS."""
    if prompt.prefill:
        if not completion.startswith(prompt.prefill):
            raise TailorError(f"the completion does not start with the prompt prefill {prompt.prefill!r}")
        completion = completion[len(prompt.prefill) :]
    return [*tokenizer.encode(completion, add_special_tokens=False), tokenizer.eos_token_id]
