"""Evaluation of exported Hugging Face checkpoints across context lengths.

The recall suite runs in lm-eval (RULER tasks plus our own offline tasks in
``lm_eval_tasks/``); ``native.py`` runs the same task data with plain ``transformers``
generation for hosts without lm-eval. Results, tables and plots do not depend on which
backend produced them.
"""
