"""The README's examples run as written (each python block after a "run by tests/test_readme.py" marker).

The blocks run in order in one namespace, in a temporary directory (they write small files).
"""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- README example: run by tests/test_readme.py -->"


def readme_examples() -> list[str]:
    text = README.read_text()
    return re.findall(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, flags=re.S)


def test_readme_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("peft", reason="peft is not installed")  # in CI it is (requirements-dev.txt)
    examples = readme_examples()
    assert len(examples) == 3, "expected the crafting/training/checkpoint, the peft and the Hugging Face MoE examples"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for code in examples:
        exec(compile(code, str(README), "exec"), namespace)
    assert (tmp_path / "pesc-adapters" / "pesc_adapters.safetensors").is_file()
    assert namespace["out"].loss.grad_fn is not None
    assert namespace["moe"].config._experts_implementation == "pesc"
