"""pesc_demo.train building blocks: tokenizer, prompt masking, batching, loss, reports, method helpers."""
import json

import pytest
import torch

from pesc_demo.data import Conversation, Example
from pesc_demo.train import methods, report
from pesc_demo.train.batching import batch_stream, index_stream
from pesc_demo.train.encoding import (
    IGNORE_INDEX,
    collate,
    encode_all,
    encode_conversation,
    left_padded_prompts,
    prompt_ids,
)
from pesc_demo.train.loop import answer_loss, final_loss, warmup_cosine
from pesc_demo.train.models import four_bit_unavailable_reason
from pesc_demo.train.tiny_llama import build_tiny_llama
from pesc_demo.train.tokenizer import ByteTokenizer, is_byte_tokenizer_dir, load_tokenizer

TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2)


@pytest.fixture
def tok():
    return ByteTokenizer()


def _chat(*turns):
    roles = ["user", "assistant"] * len(turns)
    return Conversation(tuple({"role": r, "content": c} for r, c in zip(roles, turns)))


# --- tokenizer --------------------------------------------------------------------------------------
def test_byte_tokenizer_round_trip(tok):
    text = "Grüße, 世界! 12 + 30"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and max(ids) < 256
    assert tok.decode(ids) == text
    assert tok.encode(text, add_special_tokens=True)[0] == tok.bos_token_id
    assert len(tok) == tok.vocab_size == 262
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3


def test_byte_tokenizer_special_tokens(tok):
    ids = tok.encode("a<|eos|>b<|user|>")
    assert ids == [ord("a"), tok.eos_token_id, ord("b"), tok.encode("<|user|>")[0]]
    assert tok.decode(ids) == "a<|eos|>b<|user|>"
    assert tok.decode(ids, skip_special_tokens=True) == "ab"
    with pytest.raises(ValueError, match="outside the byte tokenizer's vocabulary"):
        tok.decode([999])


def test_byte_tokenizer_chat_template(tok):
    messages = [{"role": "user", "content": "Add.\n1 + 2"}, {"role": "assistant", "content": "3"}]
    assert tok.apply_chat_template(messages) == "<|bos|><|user|>\nAdd.\n1 + 2<|eos|><|assistant|>\n3<|eos|>"
    assert tok.apply_chat_template(messages[:1], add_generation_prompt=True).endswith("<|eos|><|assistant|>\n")
    assert tok.apply_chat_template(messages, tokenize=True) == tok.encode(tok.apply_chat_template(messages))


def test_byte_tokenizer_save_and_load(tmp_path, tok):
    tok.save_pretrained(tmp_path)
    assert is_byte_tokenizer_dir(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, ByteTokenizer) and loaded.encode("x<|eos|>") == tok.encode("x<|eos|>")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PescByteTokenizer",
                                                                 "special_tokens": ["<x>"]}))
    with pytest.raises(ValueError, match="special tokens"):
        ByteTokenizer.from_pretrained(tmp_path)


# --- prompt masking ---------------------------------------------------------------------------------
def test_only_answer_tokens_are_trained(tok):
    conversation = Example("add", "Add the two numbers.", "1 + 2", "3").to_conversation()
    encoded = encode_conversation(tok, conversation)
    assert encoded.input_ids == tok.encode(tok.apply_chat_template(list(conversation.messages)))
    trained = [i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert trained == tok.encode("3") + [tok.eos_token_id]  # the answer and its end-of-turn token
    assert encoded.input_ids[:len(prompt_ids(tok, conversation))] == prompt_ids(tok, conversation)
    n_prompt = len(prompt_ids(tok, conversation))
    assert all(label == IGNORE_INDEX for label in encoded.labels[:n_prompt])


def test_multi_turn_masking_trains_every_assistant_turn(tok):
    conversation = Conversation(({"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
                                 {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                                 {"role": "assistant", "content": "a2"}))
    encoded = encode_conversation(tok, conversation)
    trained = tok.decode([i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])
    assert trained == "a1<|eos|>a2<|eos|>"


class _ReorderingTemplate(ByteTokenizer):
    """A template whose rendering of more turns does not extend the rendering of fewer."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False, **_):
        return f"[{len(messages)}]" + super().apply_chat_template(messages, tokenize, add_generation_prompt)


class _NoAnswerTemplate(ByteTokenizer):
    """A template that renders nothing for assistant turns."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False, **_):
        return super().apply_chat_template([m for m in messages if m["role"] != "assistant"], tokenize, False)


def test_prefix_inconsistent_template_is_refused():
    with pytest.raises(ValueError, match="prefix-consistently"):
        encode_conversation(_ReorderingTemplate(), _chat("q", "a"))


def test_too_long_and_empty_answers_raise(tok):
    with pytest.raises(ValueError, match="conversation 1: a conversation encodes to .* max_length=20"):
        encode_all(tok, [_chat("q", "a"), _chat("q" * 30, "a")], max_length=20)
    with pytest.raises(ValueError, match="no answer tokens"):
        encode_conversation(_NoAnswerTemplate(), _chat("q", ""))


def test_collate_and_left_padding(tok):
    items = encode_all(tok, [_chat("q", "a"), _chat("a longer question", "bb")])
    batch = collate(items, tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    short = len(items[0].input_ids)
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (batch["input_ids"].shape[1] - short)
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][0, short:] == tok.pad_token_id).all()
    left = left_padded_prompts([[5, 6], [7, 8, 9]], tok.pad_token_id)
    assert left["input_ids"].tolist() == [[tok.pad_token_id, 5, 6], [7, 8, 9]]
    assert left["attention_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]


# --- batching ---------------------------------------------------------------------------------------
def test_index_stream_covers_every_item_each_epoch():
    stream = index_stream(7, seed=1)
    epochs = [[next(stream) for _ in range(7)] for _ in range(3)]
    assert all(sorted(e) == list(range(7)) for e in epochs)
    assert epochs[0] != epochs[1]
    with pytest.raises(ValueError, match="empty data set"):
        next(index_stream(0, seed=0))


def test_batch_stream_shards_ranks_disjointly(tok):
    items = encode_all(tok, [_chat(f"q{i}", f"a{i}") for i in range(12)])
    first = [next(batch_stream(items, 3, tok.pad_token_id, seed=5, rank=r, world_size=2))["input_ids"]
             for r in range(2)]
    decoded = [{tok.decode(row, skip_special_tokens=True) for row in ids.tolist()} for ids in first]
    assert not decoded[0] & decoded[1] and all(len(d) == 3 for d in decoded)
    again = next(batch_stream(items, 3, tok.pad_token_id, seed=5, rank=0, world_size=2))["input_ids"]
    assert torch.equal(again, first[0])  # deterministic


# --- loss and schedule --------------------------------------------------------------------------------
def test_answer_loss_matches_the_model_loss(tok):
    model = build_tiny_llama(tok, seed=0, **TINY)
    batch = collate(encode_all(tok, [_chat("q", "ab"), _chat("longer q", "c")]), tok.pad_token_id)
    outputs = model(**batch)
    torch.testing.assert_close(answer_loss(outputs.logits, batch["labels"]), outputs.loss, rtol=1e-5, atol=1e-6)
    assert build_tiny_llama(tok, seed=0, **TINY).state_dict()["lm_head.weight"].equal(
        model.state_dict()["lm_head.weight"])  # seeded construction


def test_warmup_cosine_and_final_loss():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = warmup_cosine(optimizer, steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.2) and max(lrs) == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3) and lrs[50] > lrs[90]
    history = [{"loss": float(i)} for i in range(20)]
    assert final_loss(history) == pytest.approx(18.5)  # mean of the last 10%
    assert final_loss(history[:3]) == 2.0


# --- reports ----------------------------------------------------------------------------------------
def test_tables_and_plot(tmp_path):
    heldout = {"exact_match": 0.5, "n": 4, "per_task": {"add": 1.0, "sort": 0.0}}
    rows = [{"name": "dense", "heldout": heldout},
            {"name": "lora", "trainable": 12_345, "trainable_per_token": 12_345, "final_loss": 0.25,
             "tokens_per_s": 1000.4, "heldout": heldout}]
    table = report.comparison_table(rows)
    assert "| lora | 12.3k | 12.3k | 0.250 | 50.0% (4) | 1000 |" in table
    assert "| dense | - | - | - | 50.0% (4) | - |" in table
    assert "| lora | 100% | 0% |" in report.per_task_table(rows)
    history = [{"step": i + 1, "loss": 2.0 / (i + 1)} for i in range(30)]
    path = report.plot_losses({"a": history, "b": history[:10]}, tmp_path / "sub" / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- method helpers ----------------------------------------------------------------------------------
def test_lora_rank_matching(tok):
    model = build_tiny_llama(tok, seed=0, **TINY)
    per_rank = methods.lora_params_per_rank(model)
    assert per_rank == 2 * 3 * (32 + 48)  # 2 layers x (gate, up, down), each in + out features
    assert methods.matching_lora_rank(model, 10 * per_rank + 3) == 10
    assert methods.matching_lora_rank(model, 1) == 1
    with pytest.raises(ValueError, match="no nn.Linear module matches"):
        methods.lora_params_per_rank(model, ("nothing",))


def test_lora_parameter_count_is_what_the_rank_predicts(tok):
    model = build_tiny_llama(tok, seed=0, **TINY)
    per_rank = methods.lora_params_per_rank(model)
    tuned = methods.apply_method(model, "lora", lora_rank=3)
    counts = methods.parameter_summary(tuned, "lora")
    assert counts["trainable"] == counts["trainable_per_token"] == 3 * per_rank
    assert counts["activated_per_token"] == counts["total"]


def test_full_method_and_unknown_method(tok):
    model = build_tiny_llama(tok, seed=0, **TINY)
    model.requires_grad_(False)
    counts = methods.parameter_summary(methods.apply_method(model, "full"), "full")
    assert counts["trainable"] == counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["trainable_per_token"] == counts["activated_per_token"] == counts["total"]
    with pytest.raises(ValueError, match="unknown method 'qlora'"):
        methods.apply_method(model, "qlora")


def test_checkpoint_info_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint written by finetune.py"):
        methods.checkpoint_info(tmp_path)


def test_four_bit_refusals_are_clear(capsys, monkeypatch):
    """4-bit runs on the CPU and GPUs (tests/test_qlora.py runs it); it is refused clearly elsewhere,
    without bitsandbytes, and for full fine-tuning of the frozen NF4 base."""
    assert four_bit_unavailable_reason(torch.device("cpu")) is None
    assert "runs on a CUDA GPU or the CPU" in four_bit_unavailable_reason(torch.device("meta"))
    finetune = _load_example("finetune")
    assert finetune.main(["--load-in-4bit", "--device", "cpu", "--method", "full"]) == 2
    assert "full fine-tuning cannot train it" in capsys.readouterr().err
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    assert finetune.main(["--load-in-4bit", "--device", "cpu"]) == 2
    assert "pip install pesc_kernels[qlora]" in capsys.readouterr().err


def _load_example(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pesc_method_counts_and_meta_device_estimate(tok):
    import pesc_kernels

    config = pesc_kernels.PESCConfig(num_experts=4, top_k=2, adapter_dim=3)
    model = build_tiny_llama(tok, seed=0, **TINY)
    estimate = methods.pesc_trainable_count(model.config, config)
    crafted = methods.apply_method(model, "pesc", pesc=config)
    counts = methods.parameter_summary(crafted, "pesc")
    per_layer = 4 * 32 + 4 * (32 * 3 + 3 * 32)  # router [E, d] + E adapters (d*r + r*d)
    assert counts["trainable"] == estimate == 2 * per_layer
    assert counts["trainable_per_token"] == 2 * (4 * 32 + 2 * (32 * 3 + 3 * 32))  # k of E adapters per token
    assert all(p.requires_grad == ("mlp." in n and "_proj" not in n) for n, p in crafted.named_parameters())
    with pytest.raises(ValueError, match="needs a PESCConfig"):
        methods.apply_method(build_tiny_llama(tok, seed=0, **TINY), "pesc")


# --- review fixes: continuation tokenization, devices, vocabulary padding, argument checks ---------------
def _sentencepiece_style_tokenizer():
    """A tokenizer that, like Llama-2/Mistral's, puts a word-start marker at the start of every encode."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["▁"] + [chr(c) for c in range(33, 127)]
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    template = ("{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                "{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}")
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", chat_template=template)


def test_answers_are_tokenized_as_continuations_of_the_prompt():
    tok = _sentencepiece_style_tokenizer()
    conversation = _chat("1+2", "3")
    encoded = encode_conversation(tok, conversation)
    full = tok.encode(tok.apply_chat_template(list(conversation.messages), tokenize=False), add_special_tokens=False)
    assert encoded.input_ids == full  # no extra word-start marker before the answer
    trained = [tok.convert_ids_to_tokens(i) for i, label in zip(encoded.input_ids, encoded.labels)
               if label != IGNORE_INDEX]
    assert trained == ["3", "</s>"]  # encoded on its own, "3</s>" would start with a word-start marker
    assert encoded.input_ids[:len(prompt_ids(tok, conversation))] == prompt_ids(tok, conversation)


def test_resolve_device_under_torchrun(monkeypatch):
    from pesc_demo.train.models import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1) == resolve_device("auto")
    with pytest.raises(ValueError, match="not a fixed index"):
        resolve_device("cuda:0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:3") == torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")


def test_generation_never_emits_ids_the_tokenizer_cannot_decode(tok):
    from pesc_demo.train.evaluate import generate, unused_vocab_ids

    model = build_tiny_llama(tok, seed=0, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2)
    unused = unused_vocab_ids(model, tok)
    assert unused == list(range(len(tok), model.config.vocab_size)) and unused  # the embedding is padded
    with torch.no_grad():  # make the padding ids the most likely next tokens
        model.lm_head.weight[unused] = 0
        model.lm_head.weight[unused, 0] = 1e3
        model.model.norm.weight.fill_(1.0)
    prompt = prompt_ids(tok, _chat("q", "a"))
    texts = generate(model, tok, [prompt], max_new_tokens=5, device=torch.device("cpu"))
    assert len(texts) == 1  # decoding did not raise on a padding id


@pytest.mark.parametrize("argv, message", [
    (["--fsdp"], "--fsdp needs several processes"),
    (["--data", "train.jsonl"], "give --model"),
    (["--eval-data", "held.jsonl"], "--eval-data holds out part of your --data"),
    (["--model", "m", "--dense", "d"], "not both"),
])
def test_finetune_refuses_flag_combinations_before_any_work(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    finetune = _load_example("finetune")
    assert finetune.main(argv + ["--device", "cpu"]) == 2
    assert message in capsys.readouterr().err


def test_finetune_rejects_non_positive_steps(capsys):
    finetune = _load_example("finetune")
    with pytest.raises(SystemExit):
        finetune.parse_args(["--steps", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_lora_only_run_matches_the_scripts_pesc_config():
    finetune = _load_example("finetune")
    args = finetune.parse_args(["--method", "lora", "--adapter-dim", "8"])
    config = finetune.pesc_config_from_args(args)
    assert config.adapter_dim == 8 and config.num_experts == 8 and config.top_k == 2
    assert finetune.pesc_config_from_args(finetune.parse_args([])).adapter_dim == 16
