"""Evaluation and the study: the metric registry, the metrics, the reference classifier,
intervals over seeds and the claims' verdicts.
"""
