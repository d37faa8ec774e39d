"""The policies that PyPI packages ship: their names, install hints and chat templates."""
from __future__ import annotations

import pytest


def test_gemma_chat_template_renders_every_position_as_a_prefix(tiny_policy):
    """The base Gemma GGUF has no chat template; the one given to it renders the prompt as a
    prefix of prompt + reply (what tokenise_example checks) at every block position, with a
    system turn folded into the first user turn as Gemma 3 does."""
    from rewardprompt.models import GEMMA_CHAT_TEMPLATE, load_tokenizer
    from rewardprompt.policy.tokenise import fit_prompt, render_prompt, tokenise_example
    from rewardprompt.template import RewardTemplate, Target

    tok = load_tokenizer(str(tiny_policy))
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    dialogue = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "How do I bake bread?"},
                {"role": "assistant", "content": "Mix flour and water."},
                {"role": "user", "content": "And then?"}]
    targets = {"helpful": Target(0.4), "harmless": Target(0.9, ">=")}
    for position in ("top", "bottom", "reply"):
        tmpl = RewardTemplate(dimensions=("helpful", "harmless"), position=position)
        text = render_prompt(tok, fit_prompt(tok, dialogue, tmpl, targets, 400))
        assert text.count("<start_of_turn>user\n") == 2 and "<start_of_turn>system" not in text
        assert "<start_of_turn>user\nBe brief.\n\n" in text.replace(tmpl.render(targets) + "\n", "")
        assert (text.endswith("<start_of_turn>model\n") if position != "reply"
                else text.endswith("<start_of_turn>model\n" + tmpl.render(targets)))
        ex = tokenise_example(tok, dialogue, " Bake it.", template=tmpl, targets=targets,
                              max_prompt_tokens=400, max_completion_tokens=8)
        assert any(label != -100 for label in ex["labels"])
    with pytest.raises(Exception, match="alternate"):
        tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                                tokenize=False)


def test_a_missing_shipped_package_names_its_install(monkeypatch, tmp_path):
    from rewardprompt import models

    monkeypatch.setenv("REWARDPROMPT_CACHE", str(tmp_path))
    monkeypatch.setitem(models._GGUF, "some-policy",
                        ("no_such_package_rp", "pip install no-such-package==1", None, None))
    with pytest.raises(FileNotFoundError, match=r"'some-policy' needs the PyPI package "
                                                r"'no-such-package-rp' \(pip install no-such-package==1"):
        models.resolve_policy("some-policy")
