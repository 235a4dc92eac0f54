"""Tokenizer training, saving/loading and prompt encoding."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from tailor_jax.data import tokenizer as tok_lib
from tailor_jax.errors import TailorError
from tailor_jax.tasks.prompt import render_prompt

from sft_toy import ToySumTask, toy_records, toy_tokenizer

SYMBOLS = ["ka", "bo", "zu", "xi", "mep"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return toy_tokenizer()


def test_special_and_markup_tokens_are_whole(tokenizer):
    assert tokenizer.convert_ids_to_tokens([tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id]) == [
        tok_lib.PAD_TOKEN,
        tok_lib.BOS_TOKEN,
        tok_lib.EOS_TOKEN,
    ]
    for markup in tok_lib.MARKUP_TOKENS:
        ids = tokenizer.encode(f"x{markup}y", add_special_tokens=False)
        assert markup in tokenizer.convert_ids_to_tokens(ids)
    text = "<think>1 3 6</think>\n<answer>6</answer>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    # The markup survives skip_special_tokens (rewards parse it); pad/eos do not.
    assert tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True) == text


def test_round_trip_of_task_text(tokenizer):
    task = ToySumTask()
    for record in toy_records(20, seed=5):
        text = task.prompt(record).text + task.target(record)
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
        assert max(ids) < len(tokenizer)


def test_whole_words_become_single_tokens():
    corpus = [f"{a} + {b} = {c}" for a in SYMBOLS for b in SYMBOLS for c in SYMBOLS[:2]]
    tokenizer = tok_lib.train_bpe_tokenizer(corpus, vocab_size=tok_lib.MIN_VOCAB_SIZE, whole_words=SYMBOLS)
    for symbol in SYMBOLS:
        assert len(tokenizer.encode(symbol, add_special_tokens=False)) == 1
        assert tokenizer.decode(tokenizer.encode(f"{symbol} {symbol}", add_special_tokens=False)) == f"{symbol} {symbol}"
    # A whole-word token never matches inside another word.
    assert tokenizer.decode(tokenizer.encode("kabo", add_special_tokens=False)) == "kabo"


def test_save_load_round_trip(tokenizer, tmp_path):
    tok_lib.save_tokenizer(tokenizer, tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    loaded = tok_lib.load_tokenizer(tmp_path / "tok")
    plain = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tok" / "tokenizer.json"))
    text = "User: 1 + 2 = ?\nAssistant: <think>1 3</think>\n<answer>3</answer>"
    expected = tokenizer.encode(text, add_special_tokens=False)
    assert loaded.encode(text, add_special_tokens=False) == expected
    assert plain.encode(text, add_special_tokens=False) == expected
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )


def test_load_errors_leave_files_untouched(tmp_path):
    with pytest.raises(TailorError, match="no tokenizer found"):
        tok_lib.load_tokenizer(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(TailorError, match="cannot load the tokenizer"):
        tok_lib.load_tokenizer(bad)
    assert (bad / "tokenizer.json").read_text() == "{not json"


def test_vocab_too_small():
    with pytest.raises(TailorError, match="vocab_size"):
        tok_lib.train_bpe_tokenizer(["a b"], vocab_size=100)


def test_plain_prompt_encoding(tokenizer):
    prompt = render_prompt("1 + 2 = ?", style="plain", think_prefill=True)
    ids = tok_lib.encode_prompt(tokenizer, prompt)
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids[1:]) == "User: 1 + 2 = ?\nAssistant: <think>"
    completion = tok_lib.encode_completion(tokenizer, "<think>1 3</think>\n<answer>3</answer>", prompt)
    assert completion[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(completion[:-1]) == "1 3</think>\n<answer>3</answer>"
    with pytest.raises(TailorError, match="prefill"):
        tok_lib.encode_completion(tokenizer, "no think", prompt)


def test_chat_prompt_uses_the_checkpoint_template(tokenizer, tmp_path):
    tokenizer.chat_template = CHAT_TEMPLATE
    tok_lib.save_tokenizer(tokenizer, tmp_path / "ckpt")
    loaded = tok_lib.load_tokenizer(tmp_path / "ckpt")
    prompt = render_prompt("1 + 2 = ?", style="chat", think_prefill=True)
    text = tok_lib.prompt_text(loaded, prompt)
    system = prompt.messages[0]["content"]
    assert text == f"<|system|>{system}<|end|>\n<|user|>1 + 2 = ?<|end|>\n<|assistant|><think>"
    tokenizer.chat_template = None
    with pytest.raises(TailorError, match="chat template"):
        tok_lib.prompt_text(tokenizer, prompt)


def test_own_tokenizer_next_to_a_qwen2_config_keeps_its_tokenization(tmp_path):
    # An exported model directory holds a qwen2 config.json beside our BPE tokenizer; the loaded
    # tokenizer must tokenize exactly as trained (AutoTokenizer would rebuild a Qwen2 tokenizer
    # that splits "11" into "1", "1").
    corpus = [f"In GF(11), start from {a} and apply (1) + {b}." for a in range(11) for b in range(11)] * 3
    tokenizer = tok_lib.train_bpe_tokenizer(corpus, vocab_size=tok_lib.MIN_VOCAB_SIZE + 64, whole_words=[])
    text = "In GF(11), start from 10 and apply (1) + 7."
    expected = tokenizer.encode(text, add_special_tokens=False)
    assert "11" in tokenizer.convert_ids_to_tokens(expected)
    tok_lib.save_tokenizer(tokenizer, tmp_path / "model")
    (tmp_path / "model" / "config.json").write_text('{"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}')
    loaded = tok_lib.load_tokenizer(tmp_path / "model")
    assert loaded.encode(text, add_special_tokens=False) == expected
