"""Evaluation: scoring models on held-out questions."""

from ovis.eval.synth import SynthReport, evaluate_synth

__all__ = ["SynthReport", "evaluate_synth"]
