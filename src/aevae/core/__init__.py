"""The model core in plain PyTorch: architectures, losses, training, inference, saved models.

Imports nothing from evaluation, report or ops (tests/test_layout.py checks it).
"""
