"""Evaluation: VLMEvalKit-format benchmark files, images or video (read and checked, predictions fingerprinted and
resumable, answers extracted by VLMEvalKit's rules, scored per kind, an optional judge) and the
synthetic task's held-out questions."""

from ovis.eval.synth import SynthReport, evaluate_synth

__all__ = ["SynthReport", "evaluate_synth"]
