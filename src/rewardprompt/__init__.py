"""rewardprompt: align language models by putting the reward in the prompt."""
__version__ = "0.1.0"
