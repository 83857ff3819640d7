"""examples/finetune.py and examples/generate.py end to end, on tiny settings (a few steps each).

The subprocesses import the same pesc_kernels package as this test session (PYTHONPATH points at
it), so the suite also exercises the CPU-only build when `make test-cpu-only` runs it.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pesc_kernels
from pesc_demo.data import TASKS, heldout_split, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = ROOT / "examples" / "finetune.py"
GENERATE = ROOT / "examples" / "generate.py"
HELDOUT_PER_TASK = 2
# The command-line tests run on the CPU even where a GPU is visible (generation on the CPU must then
# reproduce their evaluation bit for bit); test_tiny_finetune_on_each_device covers the GPU path.
TINY_SETTINGS = ["--dense-steps", "4", "--steps", "4", "--batch-size", "4", "--train-per-task", "8",
                 "--heldout-per-task", str(HELDOUT_PER_TASK), "--max-new-tokens", "4", "--no-progress",
                 "--num-experts", "4", "--top-k", "2", "--adapter-dim", "4"]
TINY_RUN = TINY_SETTINGS + ["--device", "cpu"]


def _env(threads: int = 2) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(pesc_kernels.__file__).resolve().parents[1])
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def _run(args, threads: int = 2, timeout: int = 600) -> str:
    result = subprocess.run(args, capture_output=True, text=True, env=_env(threads), cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    return result.stdout


def _load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One tiny PESC fine-tune with the LoRA baseline, through the real command line."""
    out = tmp_path_factory.mktemp("demo")
    stdout = _run([sys.executable, str(FINETUNE), "--method", "pesc", "--baseline", "lora", "--out", str(out),
                   *TINY_RUN])
    return out, stdout


def test_finetune_writes_metrics_plots_checkpoints_and_table(demo_run):
    out, stdout = demo_run
    for path in ["dense/config.json", "dense/model.safetensors", "dense/tokenizer_config.json",
                 "dense/pretrain_metrics.json", "results.md", "summary.json", "loss_curves.png",
                 "pesc/metrics.json", "pesc/loss.png", "pesc/checkpoint/pesc_config.json",
                 "pesc/checkpoint/pesc_adapters.safetensors", "pesc/checkpoint/finetune_info.json",
                 "lora/metrics.json", "lora/loss.png", "lora/checkpoint/adapter_config.json",
                 "lora/checkpoint/finetune_info.json"]:
        assert (out / path).is_file(), path
    for png in ["loss_curves.png", "pesc/loss.png", "lora/loss.png"]:
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert not (out / "pesc/checkpoint/model.safetensors").exists()  # adapter-only

    pesc, lora = (json.loads((out / m / "metrics.json").read_text()) for m in ("pesc", "lora"))
    for metrics in (pesc, lora):
        assert [h["step"] for h in metrics["history"]] == [1, 2, 3, 4]
        assert all(h["loss"] > 0 and h["tokens_per_s"] > 0 for h in metrics["history"])
        assert metrics["heldout"]["n"] == HELDOUT_PER_TASK * len(TASKS)
        assert set(metrics["heldout"]["per_task"]) == set(TASKS)
        assert 0 <= metrics["heldout"]["exact_match"] <= 1
        assert metrics["world_size"] == 1 and metrics["dtype"] == "float32"
    assert pesc["pesc"]["num_experts"] == 4 and pesc["pesc"]["adapter_dim"] == 4
    # routed layers add their balancing loss: coefficient 0.01 x one ~1.0 term per layer
    assert all(h["router_loss"] > 0 for h in pesc["history"])
    assert all(abs(h["router_loss"]) < 1e-4 for h in lora["history"])
    # PESC routes each token through k of E adapters; the LoRA rank was matched to PESC's count
    assert pesc["trainable_per_token"] < pesc["trainable"]
    assert lora["trainable_per_token"] == lora["trainable"]
    per_rank = lora["trainable"] / lora["lora"]["rank"]
    assert abs(lora["trainable"] - pesc["trainable"]) <= per_rank / 2

    summary = json.loads((out / "summary.json").read_text())
    assert [row["name"].split()[0] for row in summary["rows"]] == ["dense", "pesc", "lora"]
    table = (out / "results.md").read_text()
    assert "| trainable params |" in table and "held-out exact match" in table
    assert table.splitlines()[0] in stdout and "outputs:" in stdout


def test_generate_loads_the_pesc_checkpoint(demo_run, tmp_path):
    out, _ = demo_run
    prompts = tmp_path / "heldout.jsonl"
    write_jsonl(prompts, (ex.to_record() for ex in heldout_split(1, seed=0)))
    stdout = _run([sys.executable, str(GENERATE), "--checkpoint", str(out / "pesc/checkpoint"),
                   "--prompts-file", str(prompts), "--prompt", "Add the numbers.\\n1 + 2", "--max-new-tokens", "4",
                   "--device", "cpu"])
    assert stdout.startswith(f"model: pesc: {out / 'pesc/checkpoint'} on {(out / 'dense').resolve()}")
    assert "> Add the numbers.\n1 + 2\n" in stdout
    assert "exact match: " in stdout and f"/{len(TASKS)} = " in stdout


def _assert_generate_reproduces_evaluation(out, method, capsys):
    """generate.py, loading the saved checkpoint, reproduces the generations finetune.py evaluated."""
    generate = _load_example("generate")
    samples = json.loads((out / method / "metrics.json").read_text())["heldout"]["samples"]
    argv = ["--checkpoint", str(out / method / "checkpoint"), "--max-new-tokens", "4", "--json", "--device", "cpu"]
    for task in samples.values():
        for sample in task:
            argv += ["--prompt", sample["prompt"].replace("\n", "\\n")]
    capsys.readouterr()
    assert generate.main(argv) == 0
    generated = [json.loads(line)["generated"] for line in capsys.readouterr().out.splitlines()]
    assert generated == [sample["generated"] for task in samples.values() for sample in task]


def test_generate_matches_the_evaluation_of_finetune(demo_run, capsys):
    out, _ = demo_run
    for method in ("pesc", "lora"):
        _assert_generate_reproduces_evaluation(out, method, capsys)


def test_generate_with_the_base_alone(demo_run, capsys):
    out, _ = demo_run
    generate = _load_example("generate")
    assert generate.main(["--base", str(out / "dense"), "--prompt", "Copy the text.\\nab", "--max-new-tokens", "3",
                          "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(f"model: base: {out / 'dense'}")
    with pytest.raises(SystemExit, match="give at least one --prompt"):
        generate.main(["--base", str(out / "dense")])


def test_full_finetune_on_user_jsonl_reusing_the_dense_model(demo_run, tmp_path, capsys):
    out, _ = demo_run
    records = [{"instruction": "Say the word.", "input": w, "output": w} for w in ["ab", "cd", "ef", "gh", "ij"]]
    records.append({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    write_jsonl(tmp_path / "train.jsonl", records)
    finetune = _load_example("finetune")
    assert finetune.main(["--method", "full", "--dense", str(out / "dense"), "--data", str(tmp_path / "train.jsonl"),
                          "--eval-fraction", "0.34", "--steps", "2", "--batch-size", "2", "--no-progress",
                          "--max-new-tokens", "3", "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run/full/metrics.json").read_text())
    assert metrics["heldout"]["n"] == 2 and "held out" in metrics["data"]
    assert metrics["trainable"] == metrics["total"]
    assert (tmp_path / "run/full/checkpoint/model.safetensors").is_file()
    assert not (tmp_path / "run/dense").exists()  # --dense: no pre-training
    capsys.readouterr()
    generate = _load_example("generate")
    assert generate.main(["--checkpoint", str(tmp_path / "run/full/checkpoint"), "--prompt", "hi",
                          "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("model: full: ")


def test_tiny_finetune_on_each_device(device, tmp_path):
    """The default device choice runs everywhere: fp32 on the CPU, bf16 on a GPU (ops on its kernels)."""
    out = tmp_path / device.type
    _run([sys.executable, str(FINETUNE), "--method", "pesc", "--out", str(out), *TINY_SETTINGS,
          "--device", str(device)])
    metrics = json.loads((out / "pesc/metrics.json").read_text())
    assert metrics["device"].startswith(device.type)
    assert metrics["dtype"] == ("bfloat16" if device.type == "cuda" else "float32")
    assert all(h["loss"] > 0 and h["router_loss"] > 0 for h in metrics["history"])
    assert metrics["heldout"]["n"] == HELDOUT_PER_TASK * len(TASKS)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_end_with_identical_adapters(tmp_path, capsys, mode):
    """torchrun, 2 CPU processes (gloo), DDP or FSDP2: every rank's trained weights are bitwise
    identical, and the checkpoint written from them reproduces the run's evaluation."""
    out = tmp_path / mode
    extra = ["--fsdp", "--baseline", "lora"] if mode == "fsdp" else []
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(FINETUNE),
          "--method", "pesc", "--out", str(out), *TINY_RUN, *extra], threads=1)
    for method in ["pesc"] + (["lora"] if mode == "fsdp" else []):
        metrics = json.loads((out / method / "metrics.json").read_text())
        assert metrics["world_size"] == 2 and metrics["fsdp"] == (mode == "fsdp")
        digests = metrics["trainable_sha256_per_rank"]
        assert len(digests) == 2 and digests[0] == digests[1]
        assert metrics["heldout"]["n"] == HELDOUT_PER_TASK * len(TASKS)  # both ranks' shares gathered
        _assert_generate_reproduces_evaluation(out, method, capsys)
    adapters = load_file(out / "pesc/checkpoint/pesc_adapters.safetensors")
    up = [t for name, t in adapters.items() if name.endswith("w_up")]
    assert up and any(t.abs().sum() > 0 for t in up)  # zero-initialised, so non-zero means trained
    assert json.loads((out / "dense/pretrain_metrics.json").read_text())["world_size"] == 2


def _hf_checkpoint(directory, chat_template=True):
    """A tiny Llama with a Hugging Face byte-level BPE tokenizer (ChatML template), saved locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(bytes_to_unicode().values())}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        chat_template=template if chat_template else None)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2,
                                 eos_token_id=tokenizer.eos_token_id)).save_pretrained(directory)
    return tokenizer


def test_finetune_accepts_a_local_hf_checkpoint(tmp_path, capsys):
    """--model: the checkpoint's own tokenizer and chat template (ChatML) drive masking and generation."""
    from pesc_demo.train.encoding import IGNORE_INDEX, encode_conversation
    from pesc_demo.train.tokenizer import load_tokenizer

    tokenizer = _hf_checkpoint(tmp_path / "hf")
    loaded = load_tokenizer(tmp_path / "hf")
    assert loaded.pad_token_id == tokenizer.eos_token_id  # no pad token: eos pads
    encoded = encode_conversation(loaded, heldout_split(1)[0].to_conversation())
    trained = loaded.decode([i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])
    assert trained == heldout_split(1)[0].output + "<|im_end|>\n"

    finetune = _load_example("finetune")
    argv = ["--model", str(tmp_path / "hf"), "--method", "pesc", "--baseline", "lora", "--out", str(tmp_path / "run"),
            *TINY_RUN]
    assert finetune.main(argv) == 0
    assert not (tmp_path / "run/dense").exists()  # --model: no pre-training
    for method in ("pesc", "lora"):
        metrics = json.loads((tmp_path / "run" / method / "metrics.json").read_text())
        assert metrics["heldout"]["n"] == HELDOUT_PER_TASK * len(TASKS)
        _assert_generate_reproduces_evaluation(tmp_path / "run", method, capsys)

    _hf_checkpoint(tmp_path / "no-template", chat_template=False)
    with pytest.raises(ValueError, match="has no chat template"):
        load_tokenizer(tmp_path / "no-template")
