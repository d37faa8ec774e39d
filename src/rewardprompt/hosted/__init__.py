"""Hosted fine-tuning: the SFT stage run by a provider's fine-tuning API instead of this machine.

``sft --backend openai|together`` writes the labelled dialogues in the provider's chat format
(``chatfile``), checks them, uploads them once, starts one job and follows it to the end
(``train``), each provider through its official client behind one small interface (``base``).
Nothing here imports a provider's client until a hosted stage runs.
"""
