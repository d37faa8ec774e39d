"""The policy: loading, supervised fine-tuning with the one tokenise-and-mask function, sampling."""
