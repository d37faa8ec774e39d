"""Evaluation: does the reward the model actually earns track the reward it was asked for?"""
